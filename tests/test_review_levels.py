"""Review by level: session and trajectory items routed, shown (conversation, trajectory tree,
the failing step highlighted) through the API's JSON, filtered by level, and labelled into a
golden example that calibration reads."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from openai_server import OpenAIServer
from review_fixtures import (
    FAILED_TURN,
    HOSTILE_RESULT,
    TURNS,
    route_session,
    session_scores,
    support_session,
    trajectory_item,
)
from rich.console import Console
from test_review_queue import review_item, seed

from evaluator.evaluators.trajectory import (
    EndedOnToolCall,
    IgnoredToolError,
    StepRetries,
    ToolErrors,
    ToolLoop,
)
from evaluator.judging.files import default_judges_dir, load_judge
from evaluator.models import Level, Message, ReviewItem, Score, Severity, Step, Trace, stable_id
from evaluator.review import ReviewRouter
from evaluator.review.api import ItemView, create_app
from evaluator.review.queue import QueueFilter, ReviewQueue
from evaluator.review.routing import republish_unrouted
from evaluator.review.terminal import MAX_MESSAGES, render_item
from evaluator.review.view import (
    COLLAPSE_OVER,
    KEEP_HEAD,
    KEEP_TAIL,
    MessageView,
    layout,
    message_blocks,
    step_tree,
    unfolded,
)
from evaluator.sessions.conversation import session_trace
from evaluator.settings import ReviewerAccess, Settings
from evaluator.sinks.sql import SQLStore
from evaluator.trust.calibrate import calibrate
from evaluator.trust.golden import export, few_shot_examples, read_golden

OPS = {"Authorization": "Bearer tok-ops"}
ANA = {"Authorization": "Bearer tok-ana"}
TOKENS = {
    "tok-ops": ReviewerAccess(reviewer="ops", tenants=["*"]),
    "tok-ana": ReviewerAccess(reviewer="ana", tenants=["acme"]),
}


@pytest.fixture
def levels(
    store: SQLStore, redis_client: redis.Redis
) -> Iterator[tuple[TestClient, dict[Level, ReviewItem]]]:
    """A turn, a trajectory and a session item, on SQLite and PostgreSQL."""
    turn = review_item(1)
    seed(store, redis_client, [turn])
    session, _ = route_session(store, redis_client)
    items = {
        Level.TURN: turn,
        Level.TRAJECTORY: trajectory_item(store, redis_client),
        Level.SESSION: session,
    }
    queue = ReviewQueue(redis_client, store, lease_s=60, sinks=[])
    with TestClient(create_app(queue, Settings(reviewer_tokens=TOKENS))) as client:
        yield client, items


def test_a_session_item_knows_its_level_session_and_focus(
    sqlite_url: str, redis_client: redis.Redis
) -> None:
    store = SQLStore(sqlite_url)
    item, trace = route_session(store, redis_client)
    assert item.level is Level.SESSION and item.session_id == "chat-42"
    assert item.trace == trace and item.trace_id == "session:d-review"
    assert item.focus.turn_ids == [f"turn-{FAILED_TURN}"]
    assert item.focus.step_ids == [f"t{FAILED_TURN}:call_{FAILED_TURN}"]
    assert item.priority == 10 and item.reasons[0].startswith("session_goal_achieved: ")
    # Handed off again (a redelivered session task): nothing new is published or stored.
    again = support_session()
    assert (
        ReviewRouter().hand_off(redis_client, store, session_trace(again), session_scores(again))
        == []
    )
    record = store.review_item(item.id)
    assert record is not None and record.level == "session" and record.session_id == "chat-42"
    # A session re-opened by a late turn is a new evaluation: a review item of its own.
    reopened = support_session(version="v2", turns=TURNS + 1)
    item_v2, _ = route_session(store, redis_client, reopened)
    assert item_v2.id != item.id and item_v2.level is Level.SESSION
    # Turn items keep the id they always had.
    turn = review_item(5)
    assert turn.level is Level.TURN and turn.session_id is None
    assert turn.id == stable_id(turn.trace_id, "groundedness", "3", "review")
    store.close()


def test_an_item_stored_but_not_published_keeps_its_level_when_republished(
    sqlite_url: str, redis_client: redis.Redis
) -> None:
    from datetime import UTC, datetime, timedelta

    store = SQLStore(sqlite_url)
    item, _ = route_session(store, redis_client)
    redis_client.flushdb()  # as if the worker died between its commit and its XADD
    later = datetime.now(UTC) + timedelta(seconds=600)
    assert republish_unrouted(redis_client, ReviewRouter(), store, now=later) == 1
    queue = ReviewQueue(redis_client, store, sinks=[])
    [claimed] = queue.claim("ops", 5, QueueFilter(level=Level.SESSION))
    # SQLite hands the time back without its zone; everything else comes back as it was.
    assert claimed.item.model_dump(exclude={"created_at"}) == item.model_dump(
        exclude={"created_at"}
    )
    store.close()


def test_the_json_of_a_session_item_is_the_whole_conversation_with_the_failing_turn(
    levels: tuple[TestClient, dict[Level, ReviewItem]],
) -> None:
    client, items = levels
    answer = client.get(f"/api/items/{items[Level.SESSION].id}", headers=OPS)
    assert answer.status_code == 200
    view = answer.json()
    ItemView.model_validate(view)  # the documented shape
    messages = view["item"]["trace"]["messages"]
    assert len(messages) == TURNS * 4  # question, tool call, tool result, answer per turn
    assert [m["index"] for m in view["conversation"]] == list(range(len(messages)))
    assert [m["role"] for m in messages[:4]] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "lookup_order"
    assert messages[2]["tool_call_id"] == "call_1"
    assert [m["turn"] for m in view["conversation"]] == [
        t for t in range(1, TURNS + 1) for _ in "four"
    ]
    highlighted = [m["index"] for m in view["conversation"] if m["highlighted"]]
    assert highlighted == [8, 9, 10, 11]  # the third turn, whole
    assert messages[10]["content"] == HOSTILE_RESULT  # data, untouched
    assert view["highlighted_turns"] == [FAILED_TURN]
    # Long: the middle is collapsed, the ends and the failing turn are not.
    collapsed = {m["index"] for m in view["conversation"] if m["collapsed"]}
    assert len(messages) > COLLAPSE_OVER and collapsed
    assert collapsed.isdisjoint(range(KEEP_HEAD)) and collapsed.isdisjoint(highlighted)
    assert collapsed.isdisjoint(range(len(messages) - KEEP_TAIL, len(messages)))
    flagged = [s for s in view["trajectory"] if s["highlighted"]]
    assert [(s["id"], s["depth"], s["turn"]) for s in flagged] == [("t3:call_3", 1, 3)]
    assert [s["id"] for s in view["trajectory"] if s["on_path"]] == ["t3:run"]
    assert view["unmatched_steps"] == []


def test_the_json_of_a_trajectory_item_highlights_the_failed_step(
    levels: tuple[TestClient, dict[Level, ReviewItem]],
) -> None:
    client, items = levels
    view = client.get(f"/api/items/{items[Level.TRAJECTORY].id}", headers=OPS).json()
    ItemView.model_validate(view)
    assert view["item"]["level"] == "trajectory" and view["item"]["focus"]["step_ids"] == ["call_1"]
    steps = view["item"]["trace"]["steps"]
    tree = [(steps[s["index"]]["id"], s["depth"], s["highlighted"]) for s in view["trajectory"]]
    assert tree == [
        ("run", 0, False),
        ("plan", 1, False),
        ("call_1", 1, True),
        ("answer", 1, False),
    ]
    failed = steps[view["trajectory"][2]["index"]]
    assert failed["error"] and failed["arguments"] == {"order": "A-1"} and failed["attempt"] == 1
    assert failed["latency_ms"] == 1200.0
    assert view["scores"][0]["name"] == "tool_errors" and view["scores"][0]["passed"] is False
    assert view["conversation"] == []  # an agent run without messages


def test_items_are_listed_counted_and_claimed_by_level(
    levels: tuple[TestClient, dict[Level, ReviewItem]],
) -> None:
    client, items = levels
    for level, item in items.items():
        listed = client.get("/api/items", params={"level": level.value}, headers=OPS).json()
        assert [(i["id"], i["level"]) for i in listed] == [(item.id, level.value)]
    everything = client.get("/api/items", headers=OPS).json()
    assert {i["id"] for i in everything} == {i.id for i in items.values()}
    assert "trace" not in everything[0]
    assert client.get("/api/items", params={"level": "thread"}, headers=OPS).status_code == 422
    counts = client.get("/api/queues", params={"level": "trajectory"}, headers=OPS).json()
    assert counts == [
        {"evaluator": "tool_errors", "tenant": "acme", "level": "trajectory", "status": "pending",
         "count": 1}
    ]  # fmt: skip
    assert {c["level"] for c in client.get("/api/queues", headers=ANA).json()} == {
        "turn", "trajectory", "session"
    }  # fmt: skip
    claimed = client.post("/api/claim", json={"n": 10, "level": "session"}, headers=ANA).json()
    assert [c["id"] for c in claimed] == [items[Level.SESSION].id]
    claimed = client.post("/api/claim", json={"n": 10, "level": "turn"}, headers=ANA).json()
    assert [c["id"] for c in claimed] == [items[Level.TURN].id]
    pending = client.get("/api/items", params={"status": "pending"}, headers=ANA).json()
    assert [i["id"] for i in pending] == [items[Level.TRAJECTORY].id]
    assert client.get("/api/items", params={"level": "session"}, headers={
        "Authorization": "Bearer nope"}).status_code == 401  # fmt: skip


def test_a_label_on_a_session_item_becomes_a_golden_example_calibration_reads(
    levels: tuple[TestClient, dict[Level, ReviewItem]],
    store: SQLStore,
    tmp_path: Path,
    server: OpenAIServer,
    redis_url: str,
) -> None:
    client, items = levels
    session_item = items[Level.SESSION]
    client.post("/api/claim", json={"n": 1, "level": "session"}, headers=OPS)
    body = {"verdict": "fail", "note": "the agent hid the failed lookup"}
    answer = client.post(f"/api/items/{session_item.id}/label", json=body, headers=OPS)
    assert answer.status_code == 200
    labels = store.labels("session_goal_achieved")
    assert [label.trace for label in labels] == [session_item.trace]
    path = tmp_path / "session_goal_achieved.jsonl"
    assert export(labels, path) == (1, 1)
    [example] = read_golden("session_goal_achieved", tmp_path)
    assert example.trace == session_item.trace and example.is_session
    assert example.judge_version == "1" and example.verdict.value == "fail"
    assert [s.id for s in example.trace.steps or []][:2] == ["t1:run", "t1:plan"]
    [shot] = few_shot_examples("session_goal_achieved", 1, "another-trace", tmp_path)
    assert shot.startswith("Conversation:") and "tool: " in shot and "messages left out" in shot
    assert "Human verdict: fail (the agent hid the failed lookup)" in shot
    # Calibration runs a judge on the example's session trace and compares with the label.
    settings = Settings(
        redis_url=redis_url,
        judge_base_url=server.base_url,
        judge_api_key="sk-test",  # type: ignore[arg-type]
    )
    judge = load_judge(default_judges_dir() / "session_goal_achieved.yaml")
    assert judge.level is Level.SESSION
    report = calibrate(judge, [example], settings)
    assert report.errors == 0 and report.agreement.n == 1
    # The judge saw the conversation: a later turn's question and the failed tool's result.
    prompt = str(server.fake.requests[-1].body["messages"])
    assert "question 5" in prompt and "lookup_order" in prompt


def test_the_terminal_shows_the_conversation_capped_and_the_failing_step(
    sqlite_url: str, redis_client: redis.Redis
) -> None:
    store = SQLStore(sqlite_url)
    item, _ = route_session(store, redis_client)
    console = Console(record=True, width=120, color_system=None)
    records = store.scores_by_id(item.score_ids)
    console.print(render_item(item, [r.model_dump() for r in records]))
    screen = console.export_text()
    assert (
        "session_goal_achieved v1 · session · priority 10 · tenant acme · session chat-42" in screen
    )
    assert "About turn 3 (marked ▶)" in screen
    assert "Conversation (24 messages)" in screen and "messages not shown" in screen
    shown = screen.count("user (turn")
    assert 1 < shown < TURNS and screen.count("▶ user (turn 3)") == 1
    assert "Where is my order A-1?" in screen and "Where is my order A-6?" in screen
    assert "calls lookup_order [call_3]" in screen
    assert screen.count(HOSTILE_RESULT) == 2  # the tool message and the step's result, as text
    assert "▶ tool (turn 3) · result of call_3" in screen
    flagged = [line for line in screen.splitlines() if "▶ tool · " in line]
    assert len(flagged) == 1 and "t3:call_3" in flagged[0] and "1200 ms" in flagged[0]
    assert "  ▶ tool" in flagged[0]  # indented under its agent step
    assert "error: upstream timeout" in screen
    assert MAX_MESSAGES < 24
    store.close()


# -- the trajectory tree -------------------------------------------------------------------------


def test_siblings_interleaved_with_another_branch_are_listed_under_their_parent() -> None:
    steps = [
        Step(id="a", kind="agent"),
        Step(id="b", kind="tool", parent_id="a"),
        Step(id="c", kind="agent"),
        Step(id="d", kind="tool", parent_id="a"),
        Step(id="e", kind="tool", parent_id="c"),
    ]
    assert [(steps[i].id, depth) for i, depth in step_tree(steps)] == [
        ("a", 0), ("b", 1), ("d", 1), ("c", 0), ("e", 1)
    ]  # fmt: skip


def test_a_deep_chain_is_walked_without_recursion() -> None:
    steps = [Step(id="s0", kind="agent")] + [
        Step(id=f"s{i}", kind="chain", parent_id=f"s{i - 1}") for i in range(1, 1000)
    ]
    tree = step_tree(steps)
    assert [depth for _, depth in tree] == list(range(1000))


@st.composite
def trajectories(draw: st.DrawFn) -> list[Step]:
    size = draw(st.integers(0, 40))
    steps: list[Step] = []
    for index in range(size):
        parent = draw(st.one_of(st.none(), st.integers(0, index - 1))) if index else None
        steps.append(
            Step(id=f"s{index}", kind="tool", parent_id=None if parent is None else f"s{parent}")
        )
    return steps


@given(trajectories())
@settings(max_examples=200, deadline=None)
def test_the_tree_lists_every_step_once_each_after_its_parent_one_deeper(steps: list[Step]) -> None:
    tree = step_tree(steps)
    assert sorted(index for index, _ in tree) == list(range(len(steps)))
    position = {steps[index].id: (n, depth) for n, (index, depth) in enumerate(tree)}
    for step in steps:
        n, depth = position[step.id]
        if step.parent_id is None:
            assert depth == 0
        else:
            parent_n, parent_depth = position[step.parent_id]
            assert parent_n < n and depth == parent_depth + 1


# -- what the trajectory heuristics name --------------------------------------------------------


def _run(output: str, *steps: dict[str, object]) -> Trace:
    return Trace.model_validate({"trace_id": "run-x", "output": output, "steps": list(steps)})


def test_failing_trajectory_heuristics_name_the_steps_they_are_about() -> None:
    agent = {"id": "a", "kind": "agent"}
    failed = {"id": "f", "kind": "tool", "name": "pay", "parent_id": "a", "error": "402"}
    loop = [{"id": f"l{i}", "kind": "tool", "name": "search", "arguments": {"q": "x"}}
            for i in range(3)]  # fmt: skip
    retried = {"id": "r4", "kind": "llm", "attempt": 4}
    cases = [
        (ToolErrors(), _run("Paid.", agent, failed), ["f"]),
        (ToolLoop(), _run("Found it.", *loop), ["l0", "l1", "l2"]),
        (StepRetries(), _run("Done.", agent, retried), ["r4"]),
        (IgnoredToolError(), _run("Paid, thanks!", agent, failed), ["f"]),
        (EndedOnToolCall(), _run("", agent, failed), ["f"]),
    ]
    for check, trace, named in cases:
        [score] = check.evaluate(trace)
        assert score.failed and score.metadata["step_ids"] == named, check.name
        assert ReviewItem.for_scores(trace, [score], 10).focus.step_ids == named
        assert ReviewItem.for_scores(trace, [score], 10).level is Level.TRAJECTORY
    [passing] = ToolErrors().evaluate(_run("Paid.", agent, {**failed, "error": None}))
    assert passing.passed and "step_ids" not in passing.metadata


def test_a_step_cut_from_the_trace_is_reported_not_highlighted() -> None:
    trace = _run("Paid.", {"id": "a", "kind": "agent"})
    score = Score.for_trace("run-x", "agent_tool_use", "1", "agent_tool_use", passed=False,
                            severity=Severity.HIGH, level=Level.TRAJECTORY,
                            metadata={"step_ids": ["gone", "a", 7, "x" * 300]})  # fmt: skip
    item = ReviewItem.for_scores(trace, [score], 10)
    assert item.focus.step_ids == ["gone", "a"]  # strings of at most 256 characters only
    shown = layout(item)
    assert shown.unmatched_steps == ["gone"] and [s.highlighted for s in shown.trajectory] == [True]


def test_messages_of_a_session_whose_turns_cannot_be_told_apart_carry_no_turn() -> None:
    session = support_session()
    trace = session_trace(session)
    # One more user message than turns (an app that sent two at once): no guessing.
    extra = Message(role="user", content="also, hello?")
    odd = trace.model_copy(update={"messages": [*(trace.messages or []), extra]})
    item = ReviewItem.for_scores(odd, session_scores(session), 10)
    shown = layout(item)
    assert {m.turn for m in shown.conversation} == {None}
    # The failing step's call and result are still found by their tool call id.
    assert [m.index for m in shown.conversation if m.highlighted] == [9, 10]
    assert shown.highlighted_turns == [FAILED_TURN]


@given(st.integers(0, 60), st.sets(st.integers(0, 59), max_size=5))
@settings(max_examples=100, deadline=None)
def test_a_long_conversation_folds_its_middle_but_never_what_is_highlighted(
    count: int, highlighted: set[int]
) -> None:
    marked = {i for i in highlighted if i < count}
    shown = unfolded(count, marked)
    assert marked <= shown
    if count <= COLLAPSE_OVER:
        assert shown == set(range(count))
    else:
        assert set(range(KEEP_HEAD)) | set(range(count - KEEP_TAIL, count)) <= shown
        assert len(shown) <= KEEP_HEAD + KEEP_TAIL + 3 * len(marked)
    blocks = message_blocks(
        [
            MessageView(index=i, turn=None, highlighted=i in marked, collapsed=i not in shown)
            for i in range(count)
        ]
    )
    assert [m.index for _, run in blocks for m in run] == list(range(count))
    assert all(a[0] != b[0] for a, b in itertools.pairwise(blocks))  # runs alternate


def test_an_older_database_gets_the_new_columns_and_its_items_read_as_turns(
    sqlite_url: str, redis_client: redis.Redis
) -> None:
    store = SQLStore(sqlite_url)
    seed(store, redis_client, [review_item(1)])
    with store.engine.begin() as connection:  # as a version before levels created it
        for column in ("level", "session_id", "focus"):
            connection.exec_driver_sql(f'ALTER TABLE review_items DROP COLUMN "{column}"')
    store.close()
    store = SQLStore(sqlite_url)  # its schema upgrade adds them back, empty
    queue = ReviewQueue(redis_client, store, sinks=[])
    [summary] = queue.listing(QueueFilter(level=Level.TURN))
    assert summary.level is Level.TURN and queue.listing(QueueFilter(level=Level.SESSION)) == []
    assert queue.counts(QueueFilter()) == [("groundedness", "acme", Level.TURN, "pending", 1)]
    record = store.review_item(summary.id)
    assert record is not None and record.level is None and record.focus is None
    item = ReviewItem.model_validate(record.model_dump())
    assert item.level is Level.TURN and item.focus.step_ids == []
    store.close()
