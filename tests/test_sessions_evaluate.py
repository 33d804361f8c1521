"""Completed sessions evaluated from their stored turns, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import redis
from sqlmodel import col, select

from evaluator.constants import REVIEW_STREAM
from evaluator.ledger import rows_for_trace
from evaluator.models import Level, ReviewItem, Score, Severity, Trace
from evaluator.review import ReviewRouter
from evaluator.sessions.evaluate import evaluate_sessions
from evaluator.sessions.heuristics import Session, session_evaluators, session_score
from evaluator.sessions.tracker import CompletedSession, session_digest
from evaluator.sinks.sql import SQLStore, payload_row
from evaluator.store.tables import ScoreRecord

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
NOW_MS = int((T0 + timedelta(hours=1)).timestamp() * 1000)


def store_turns(store: SQLStore, *turns: Trace) -> None:
    rows = [payload_row(t, t.model_dump_json(exclude_none=True), T0) for t in turns]
    store.write_batch([], [], [], payloads=rows)


def turn(n: int, asked: str, answered: str = "Here you go.") -> Trace:
    return Trace(trace_id=f"chat-{n}", input=asked, output=answered, session_id="s1",
                 tenant="acme", started_at=T0 + timedelta(minutes=n))  # fmt: skip


def completed(*turn_ids: str, last_ms: int = NOW_MS - 600_000) -> CompletedSession:
    return CompletedSession(session_digest("acme", "s1"), "acme", "s1", tuple(sorted(turn_ids)),
                            NOW_MS - 900_000, last_ms, False, False, "0")  # fmt: skip


def run(store: SQLStore, *sessions: CompletedSession) -> object:
    return evaluate_sessions(
        sessions, store, session_evaluators(),
        max_trace_bytes=256 * 1024, budget_s=5.0, patience_s=300, now_ms=NOW_MS,
    )  # fmt: skip


def session_scores(store: SQLStore) -> list[ScoreRecord]:
    with store.session() as session:
        query = select(ScoreRecord).where(col(ScoreRecord.trace_id).startswith("session:"))
        return list(session.exec(query))


def test_a_session_is_scored_once_from_its_stored_turns(store: SQLStore) -> None:
    store_turns(store, turn(1, "How do I export my data?"), turn(2, "how can I export my data"))
    done = completed("chat-1", "chat-2")
    outcome = run(store, done)
    assert outcome.evaluated == 1 and not outcome.waiting  # type: ignore[attr-defined]
    scores = {s.name: s for s in session_scores(store)}
    assert scores["user_repeats"].passed is False
    assert scores["session_turns"].value == 2 and scores["session_turns"].tenant == "acme"
    ledger = rows_for_trace(store, f"session:{done.digest}")
    assert {r.evaluator: r.state for r in ledger} == {
        "session_turns": "done", "user_repeats": "done", "user_frustration": "done",
        "session_unresolved": "done", "session_cost": "done",
    }  # fmt: skip
    run(store, done)  # handed over again: the same rows, nothing added
    assert len(session_scores(store)) == len(scores)


def test_a_session_waits_for_turns_still_on_their_way_then_goes_without(store: SQLStore) -> None:
    store_turns(store, turn(1, "Where is my invoice?"))
    recent = completed("chat-1", "chat-2", last_ms=NOW_MS - 10_000)
    outcome = run(store, recent)
    assert outcome.waiting == [recent] and not session_scores(store)  # type: ignore[attr-defined]
    old = completed("chat-1", "chat-2", last_ms=NOW_MS - 400_000)
    assert run(store, old).evaluated == 1  # type: ignore[attr-defined]
    assert all(s.details["missing_turns"] == 1 for s in session_scores(store))


def test_a_late_turn_gives_new_scores_beside_the_old(store: SQLStore) -> None:
    store_turns(store, turn(1, "Cancel my plan"), turn(2, "Thanks"))
    run(store, completed("chat-1"))
    first = len(session_scores(store))
    run(store, completed("chat-1", "chat-2"))
    by_version: dict[str, int] = {}
    for score in session_scores(store):
        version = score.details["session_version"]
        by_version[version] = by_version.get(version, 0) + 1
    # The one-turn version's scores stay; the two-turn version adds its own (user_repeats too).
    assert sorted(by_version.values()) == [first, first + 1]


@dataclass
class GaveUp:
    """A high-severity session check, as a team might add one: the user gave up."""

    name: ClassVar[str] = "gave_up"
    version: ClassVar[str] = "1"

    def evaluate(self, session: Session) -> list[Score]:
        return [session_score(self, session, passed=False, severity=Severity.HIGH,
                              reason="the user left mid-conversation")]  # fmt: skip


def test_a_failing_high_severity_session_score_goes_to_review_as_a_session_item(
    store: SQLStore, redis_client: redis.Redis
) -> None:
    store_turns(store, turn(1, "Where is my order?"), turn(2, "Hello??"))
    routed: list[ReviewItem] = []
    router = ReviewRouter()

    def review(trace: Trace, scores: list[Score]) -> None:
        routed.extend(router.hand_off(redis_client, store, trace, scores))

    for _ in range(2):  # a repeated hand-off of the same session routes nothing twice
        evaluate_sessions(
            [completed("chat-1", "chat-2")], store, [GaveUp()], max_trace_bytes=256 * 1024,
            budget_s=5.0, patience_s=300, now_ms=NOW_MS, review=review,
        )  # fmt: skip
    [item] = routed
    assert item.level is Level.SESSION and item.session_id == "s1" and item.evaluator == "gave_up"
    assert item.trace.trace_id == f"session:{session_digest('acme', 's1')}"
    assert [m.text for m in item.trace.messages or []][:2] == ["Where is my order?", "Here you go."]
    assert redis_client.xlen(REVIEW_STREAM) == 1
