"""A session as one Trace: each message said once, answers appended, steps kept unique."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from evaluator.models import Trace
from evaluator.sessions.conversation import conversation, session_trace
from evaluator.sessions.heuristics import Session


def _turn(n: int, **fields: Any) -> Trace:
    return Trace.model_validate({"trace_id": f"turn-{n}", "output": f"answer {n}", **fields})


def _session(*turns: Trace) -> Session:
    return Session(digest="d1", tenant="acme", session_id="s1", version="v1", turns=turns)


def test_history_resent_each_turn_is_said_once() -> None:
    system = {"role": "system", "content": "be brief"}
    first = _turn(1, messages=[system, {"role": "user", "content": "q1"}])
    second = _turn(
        2,
        messages=[
            system,
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "answer 1"},
            {"role": "user", "content": "q2"},
        ],
    )
    said = [(m.role, m.text) for m in conversation((first, second))]
    assert said == [
        ("system", "be brief"),
        ("user", "q1"),
        ("assistant", "answer 1"),
        ("user", "q2"),
        ("assistant", "answer 2"),
    ]


def test_turns_without_messages_become_question_and_answer() -> None:
    trace = session_trace(_session(_turn(1, input="hi"), _turn(2, input="and then?")))
    assert trace.trace_id == "session:d1" and trace.session_id == "s1"
    assert [(m.role, m.text) for m in trace.messages or []] == [
        ("user", "hi"),
        ("assistant", "answer 1"),
        ("user", "and then?"),
        ("assistant", "answer 2"),
    ]
    assert trace.input == "hi" and trace.output == "answer 2"
    assert trace.metadata["turn_ids"] == ["turn-1", "turn-2"]
    # The app's Langfuse environment travels with the session (its scores belong there).
    staged = _turn(3, input="x", metadata={"environment": "staging"})
    assert (
        session_trace(_session(_turn(1, input="hi"), staged)).metadata["environment"] == "staging"
    )


def test_steps_of_every_turn_stay_unique_and_keep_their_parents() -> None:
    steps = [
        {"id": "a", "kind": "agent", "name": "agent"},
        {"id": "b", "kind": "tool", "name": "search", "parent_id": "a", "error": "timeout"},
    ]
    trace = session_trace(_session(_turn(1, steps=steps), _turn(2, steps=steps)))
    assert [(s.id, s.parent_id) for s in trace.steps or []] == [
        ("t1:a", None),
        ("t1:b", "t1:a"),
        ("t2:a", None),
        ("t2:b", "t2:a"),
    ]


def test_negative_feedback_in_any_turn_marks_the_session() -> None:
    trace = session_trace(
        _session(_turn(1, user_feedback="negative", tokens={"input": 3, "output": 4}), _turn(2))
    )
    assert trace.user_feedback == "negative"
    assert trace.tokens is not None and trace.tokens.total == 7


_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=8)
_message = st.builds(dict, role=st.sampled_from(["user", "assistant", "system"]), content=_text)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_message, max_size=6), min_size=1, max_size=6))
def test_any_sequence_of_turns_is_a_valid_session_trace(
    histories: list[list[dict[str, str]]],
) -> None:
    turns = tuple(
        _turn(n, messages=messages or None, input="q" if not messages else "")
        for n, messages in enumerate(histories)
    )
    trace = session_trace(_session(*turns))
    Trace.model_validate_json(trace.model_dump_json())  # round-trips as a valid trace
    assert trace.messages and trace.messages[-1].role == "assistant"
