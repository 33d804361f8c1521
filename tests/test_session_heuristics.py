"""Session heuristics on whole conversations: what each one flags and what it lets pass."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from evaluator.models import Level, Trace
from evaluator.sessions.heuristics import (
    Session,
    SessionCost,
    SessionLength,
    SessionUnresolved,
    UserFrustration,
    UserRepeats,
    in_conversation_order,
    session_evaluators,
)

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def conversation(*turns: tuple[str, str], **last: object) -> Session:
    traces = [
        Trace(trace_id=f"t{n}", input=asked, output=answered, started_at=T0 + timedelta(minutes=n),
              cost_usd=0.002)
        for n, (asked, answered) in enumerate(turns)
    ]  # fmt: skip
    if last:
        traces[-1] = traces[-1].model_copy(update=last)
    # Given out of order: the session puts them back in conversation order.
    return Session("d" * 32, "acme", "s1", "v1", in_conversation_order(traces[::-1]))


def verdict(check: object, session: Session) -> bool | None:
    scores = check.evaluate(session)  # type: ignore[attr-defined]
    return None if not scores else scores[0].passed


HELPFUL = conversation(
    ("How do I rotate my API key?", "Settings > Security > API keys, then Rotate."),
    ("Does the old key keep working?", "Yes, for 24 hours."),
    ("Thanks!", "You're welcome."),
)


def test_a_helpful_conversation_passes_every_check() -> None:
    scores = [s for e in session_evaluators() for s in e.evaluate(HELPFUL)]
    assert {s.name: s.passed for s in scores} == {
        "session_turns": True,
        "session_cost": True,
        "user_repeats": True,
        "user_frustration": True,
        "session_unresolved": True,
    }
    assert [t.trace_id for t in HELPFUL.turns] == ["t0", "t1", "t2"]
    assert all(s.trace_id == "session:" + "d" * 32 for s in scores)
    assert scores[0].level is Level.SESSION


def test_a_re_asked_question_is_a_repeat_and_a_follow_up_is_not() -> None:
    repeated = conversation(
        ("How do I rotate my API key?", "Contact support."),
        ("how can I rotate my API key", "Contact support."),
    )
    assert verdict(UserRepeats(), repeated) is False
    assert "turn 2 repeats turn 1" in UserRepeats().evaluate(repeated)[0].reason
    assert verdict(UserRepeats(), HELPFUL) is True
    assert verdict(UserRepeats(), conversation(("hi", "hello"))) is None  # one turn


def test_frustration_and_asking_for_a_person_are_flagged_without_quoting_the_user() -> None:
    angry = conversation(
        ("Reset my password for jane@fjordlab.dk", "Here is a guide."),
        ("That's not what I asked. Let me talk to a human", "Sure."),
    )
    [score] = UserFrustration().evaluate(angry)
    assert score.passed is False and "turn 2" in score.reason
    assert "jane" not in score.reason and "human" not in score.reason
    assert (
        verdict(UserFrustration(), conversation(("Is this a real personal loan?", "Yes."))) is True
    )


def test_a_conversation_that_ends_on_a_failure_is_unresolved() -> None:
    assert verdict(SessionUnresolved(), HELPFUL) is True
    errored = conversation(("a", "b"), ("c", ""), error="upstream timeout")
    assert verdict(SessionUnresolved(), errored) is False
    cut = conversation(("a", "b"), ("c", "d"), finish_reason="length")
    assert "cut off" in SessionUnresolved().evaluate(cut)[0].reason
    disliked = conversation(("a", "b"), ("c", "d"), user_feedback="negative")
    assert verdict(SessionUnresolved(), disliked) is False


def test_length_and_cost_bounds() -> None:
    long_one = conversation(*[(f"question {n}", "answer") for n in range(31)])
    assert verdict(SessionLength(), long_one) is False
    assert SessionLength().evaluate(long_one)[0].value == 31
    assert verdict(SessionCost(max_usd=0.005), HELPFUL) is False  # 3 x $0.002
    free = conversation(("a", "b"), cost_usd=None)
    assert verdict(SessionCost(), Session("d" * 32, None, "s", "v", free.turns[:0])) is None


def test_a_new_version_of_a_session_gets_new_score_ids() -> None:
    again = Session(HELPFUL.digest, "acme", "s1", "v2", HELPFUL.turns)
    first = {s.id for e in session_evaluators() for s in e.evaluate(HELPFUL)}
    same = {s.id for e in session_evaluators() for s in e.evaluate(HELPFUL)}
    later = {s.id for e in session_evaluators() for s in e.evaluate(again)}
    assert first == same and not first & later
