"""Sessions through the real sampler and heuristics scoring: each turn recorded once, the
conversation evaluated once when it has gone quiet, and a Celery session task that does it."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from helpers import Fleet, fleet_env, wait_for
from sqlmodel import col, select

from evaluator.celery_app import create_app
from evaluator.evaluation.scoring import ScoringContext, score_batch
from evaluator.evaluators import heuristic_evaluators
from evaluator.ingest import publish_many
from evaluator.ledger import rows_for_trace
from evaluator.models import Trace
from evaluator.review import ReviewRouter
from evaluator.sampling.sampler import Sampler
from evaluator.sessions.evaluate import session_batch
from evaluator.sessions.tracker import CompletedSession, SessionTracker, session_digest
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import ScoreRecord

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def turns() -> list[Trace]:
    asked = ["How do I export my data?", "how can I export my data", "That's not what I asked"]
    chat = [
        Trace(trace_id=f"chat-{n}", input=q, output="See Settings.", session_id="s-1",
              tenant="acme:eu", started_at=T0 + timedelta(minutes=n))
        for n, q in enumerate(asked)
    ]  # fmt: skip
    return [*chat, Trace(trace_id="single", input="Hi", output="Hello!")]


def session_scores(store: SQLStore) -> list[ScoreRecord]:
    with store.session() as session:
        query = select(ScoreRecord).where(col(ScoreRecord.trace_id).startswith("session:"))
        return list(session.exec(query))


def test_a_conversation_through_the_sampler_is_evaluated_once(
    store: SQLStore, redis_client: redis.Redis, redis_url: str
) -> None:
    settings = Settings(redis_url=redis_url, session_quiet_s=60, session_patience_s=0)
    batches: list[list[dict[str, Any]]] = []
    tracker = SessionTracker.from_settings(redis_client, settings)
    sampler = Sampler(
        redis_client, settings, lambda _, entries, __: batches.append(entries), "c1",
        judges={}, sessions=tracker,
    )  # fmt: skip
    publish_many(redis_client, turns(), settings)
    while sampler.step(block_ms=1):
        pass
    assert tracker.open_count() == 1  # the single-turn trace opened no session
    ctx = ScoringContext(heuristic_evaluators(settings), store, ReviewRouter(), redis_client)
    for batch in batches:
        score_batch(batch, ctx)  # stores the turns' payloads
    handed: list[CompletedSession] = []
    later = int(time.time() * 1000) + 61_000
    assert tracker.complete_due(handed.extend, now_ms=later) == 1
    [done] = handed
    assert (done.tenant, done.session_id) == ("acme:eu", "s-1")
    assert done.turn_ids == ("chat-0", "chat-1", "chat-2")

    def no_requeue(entries: list[dict[str, Any]], delay_s: float) -> None:
        raise AssertionError(f"nothing should wait: {entries}")

    result = session_batch([done.wire()], store, settings, no_requeue)
    assert result == {"sessions": 1, "scores": 4, "waiting": 0}  # no cost given: 4 of 5 checks
    scores = {s.name: s for s in session_scores(store)}
    assert scores["user_repeats"].passed is False and scores["user_frustration"].passed is False
    assert scores["session_turns"].tenant == "acme:eu"
    subject = f"session:{session_digest('acme:eu', 's-1')}"
    assert {r.state for r in rows_for_trace(store, subject)} == {"done"}
    session_batch([done.wire()], store, settings, no_requeue)  # a redelivered task
    assert len(session_scores(store)) == 4


def test_a_session_whose_turns_are_not_stored_yet_comes_back_later(
    store: SQLStore, redis_url: str
) -> None:
    settings = Settings(redis_url=redis_url, session_patience_s=300)
    now_ms = int(time.time() * 1000)
    waiting = CompletedSession(session_digest(None, "s"), None, "s", ("not-stored",), now_ms,
                               now_ms, False, False, "0")  # fmt: skip
    requeued: list[tuple[list[dict[str, Any]], float]] = []
    result = session_batch([waiting.wire()], store, settings, lambda e, d: requeued.append((e, d)))
    assert result["waiting"] == 1 and requeued == [([waiting.wire()], 30.0)]
    assert CompletedSession.from_wire(requeued[0][0][0]) == waiting


def test_the_production_sampler_tracks_sessions_and_completes_them(
    redis_url: str, sqlite_url: str
) -> None:
    from evaluator.fleet import build_sampler

    settings = Settings(redis_url=redis_url, database_url=sqlite_url)
    sampler = build_sampler(settings, create_app(settings))
    assert sampler.sessions is not None
    assert "evalfleet:chore:sessions" in {getattr(c, "key", "") for c in sampler.chores}


def test_sampler_and_worker_processes_evaluate_a_quiet_session(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    fleet_factory: Callable[[dict[str, str]], Fleet],
) -> None:
    """The real processes: turns published, the sampler's chore finds the session quiet after a
    second, the Celery session task on the heuristics queue scores it, once."""
    env = fleet_env(redis_url, sqlite_url, session_quiet_s=1, session_check_interval_s=0.2,
                    claim_interval_s=0.2)  # fmt: skip
    fleet = fleet_factory(env)
    fleet.worker(concurrency=1, queues="heuristics")
    fleet.sampler()
    publish_many(redis_client, turns(), Settings())
    store = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)
    try:
        wait_for(
            lambda: len(session_scores(store)) == 4, 60, lambda: f"session scores\n{fleet.logs()}"
        )
        time.sleep(1.5)  # a further chore run and task would add nothing
        assert len(session_scores(store)) == 4
        assert redis_client.zcard("evalfleet:sessions:due") == 0
    finally:
        store.close()
