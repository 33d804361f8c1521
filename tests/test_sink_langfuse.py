"""Langfuse sink: what the langfuse SDK's API client sends, through the outbox and the relay,
against a real HTTP server (tests/langfuse_server.py)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from helpers import fleet_env, make_trace, wait_for
from langfuse_server import PUBLIC_KEY, SECRET_KEY, FakeLangfuse
from prometheus_client import REGISTRY
from sqlmodel import Session, select

from evaluator.evaluators import heuristic_evaluators
from evaluator.ingest import publish_many
from evaluator.models import SampleDecision, Score, ScoreStatus, ScoreType, Severity, Trace
from evaluator.review import ReviewRouter
from evaluator.scoring import ScoringContext, score_batch
from evaluator.settings import Settings
from evaluator.sinks.langfuse import LangfuseSettings, LangfuseSink
from evaluator.sinks.outbox import SinkRelay, outbox_rows
from evaluator.sinks.sql import OutboxRecord, ScoreRecord, SQLStore


@pytest.fixture
def langfuse() -> Iterator[FakeLangfuse]:
    fake = FakeLangfuse()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def sink(langfuse: FakeLangfuse, monkeypatch: pytest.MonkeyPatch) -> Iterator[LangfuseSink]:
    for key, value in langfuse.env().items():
        monkeypatch.setenv(key, value)
    sink = LangfuseSink(LangfuseSettings())
    yield sink
    sink.close()


def entries(traces: list[Trace], first: int = 0) -> list[dict[str, object]]:
    decision = SampleDecision(judge=False, rate=0.1).model_dump()
    return [
        {"id": f"{1763630000000 + first + i}-0", "trace": t.model_dump_json(), "decision": decision}
        for i, t in enumerate(traces)
    ]


def relay_for(store: SQLStore, sink: LangfuseSink) -> SinkRelay:
    return SinkRelay(store, [sink], batch_size=50, backoff_base_s=0.01, backoff_max_s=0.05)


def outbox_statuses(store: SQLStore) -> dict[str, int]:
    with Session(store.engine) as session:
        rows = session.exec(select(OutboxRecord.status)).all()
    return {status: rows.count(status) for status in set(rows)}


def deliveries(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "evalfleet_sink_deliveries_total", {"sink": "langfuse", "outcome": outcome}
    )
    return value or 0.0


def drain_until_idle(relay: SinkRelay, timeout: float = 10.0) -> None:
    wait_for(
        lambda: relay.drain_once() == 0 and not relay.backlog()["langfuse"][0],
        timeout,
        "outbox drained",
    )


def test_payload_maps_types_comment_and_metadata(sink: LangfuseSink) -> None:
    trace = make_trace(1, span_id="obs-42")
    judge_meta = {"model": "gpt-4o-mini", "call_cost_usd": 0.00012, "call_input_tokens": 700}
    numeric = Score.for_trace(
        trace.trace_id,
        "groundedness",
        "3",
        "groundedness",
        data_type=ScoreType.NUMERIC,
        value=0.4,
        passed=False,
        severity=Severity.HIGH,
        reason="Claim 2 is unsupported.",
        metadata=judge_meta,
    )
    categorical = Score.for_trace(
        trace.trace_id, "safety", "2", "category", data_type=ScoreType.CATEGORICAL, label="none"
    )
    boolean = Score.for_trace(trace.trace_id, "not_empty", "1", "not_empty", passed=True)
    errored = Score.for_trace(
        trace.trace_id, "safety", "2", "safety", status=ScoreStatus.ERROR, reason="timeout"
    )
    body = sink.payload(numeric, trace)
    assert isinstance(body, dict)
    assert body["id"] == numeric.id and body["traceId"] == "t-000001"
    assert body["observationId"] == "obs-42"
    assert (body["name"], body["dataType"], body["value"]) == ("groundedness", "NUMERIC", 0.4)
    assert body["comment"] == "Claim 2 is unsupported."
    assert body["metadata"] == {
        "evaluator": "groundedness",
        "evaluator_version": "3",
        "severity": "high",
        "source": "evalfleet",
        "passed": False,
        "model": "gpt-4o-mini",
        "call_cost_usd": 0.00012,
        "call_input_tokens": 700,
    }
    cat = sink.payload(categorical, trace)
    assert isinstance(cat, dict)
    assert (cat["name"], cat["dataType"], cat["value"]) == (
        "safety.category",
        "CATEGORICAL",
        "none",
    )
    flag = sink.payload(boolean, trace)
    assert isinstance(flag, dict) and (flag["dataType"], flag["value"]) == ("BOOLEAN", 1.0)
    assert sink.payload(errored, trace) == "error score"


def test_scores_reach_langfuse_once_with_stable_ids(
    sqlite_url: str, redis_client: redis.Redis, langfuse: FakeLangfuse, sink: LangfuseSink
) -> None:
    store = SQLStore(sqlite_url)
    ctx = ScoringContext(
        heuristic_evaluators(Settings()), store, ReviewRouter(), redis_client, sinks=[sink]
    )
    batch = entries([make_trace(1, span_id="obs-1"), make_trace(2)])
    score_batch(batch, ctx)
    relay = relay_for(store, sink)
    drain_until_idle(relay)
    with Session(store.engine) as session:
        ids = set(session.exec(select(ScoreRecord.id)).all())
    assert set(langfuse.scores) == ids and len(ids) == 14
    post = langfuse.score_posts()[0]
    assert post.path == "/api/public/scores"
    token = base64.b64encode(f"{PUBLIC_KEY}:{SECRET_KEY}".encode()).decode()
    assert post.headers["authorization"] == f"Basic {token}"
    assert post.headers["x-langfuse-public-key"] == PUBLIC_KEY
    assert post.headers["x-langfuse-sdk-name"] == "python"
    sent = next(s for s in langfuse.scores.values() if s["traceId"] == "t-000001")
    assert sent["observationId"] == "obs-1" and sent["dataType"] == "BOOLEAN"
    assert sent["metadata"]["source"] == "evalfleet"
    posts = len(langfuse.score_posts())

    # A redelivered Celery batch: same content, nothing is sent again.
    score_batch(batch, ctx)
    assert relay.drain_once() == 0
    assert len(langfuse.score_posts()) == posts

    # A score whose content changed is sent again under the same id: updated, not duplicated.
    trace = make_trace(1, span_id="obs-1")
    with Session(store.engine) as session:
        stored = session.exec(select(ScoreRecord).where(ScoreRecord.trace_id == "t-000001")).first()
    assert stored is not None and stored.passed is True
    changed = Score.for_trace(
        trace.trace_id, stored.evaluator, stored.evaluator_version, stored.name, passed=False
    )
    rows = outbox_rows([sink], [changed], {trace.trace_id: trace}, datetime.now(UTC))
    store.write_batch([], [], [], [], rows)
    drain_until_idle(relay)
    assert len(langfuse.scores) == 14
    assert langfuse.scores[changed.id]["value"] == 0.0
    store.close()


def test_retry_after_5xx_and_nothing_lost_while_down(
    database_url: str, redis_client: redis.Redis, langfuse: FakeLangfuse, sink: LangfuseSink
) -> None:
    store = SQLStore(Settings(database_url=database_url).sqlalchemy_url)
    ctx = ScoringContext(
        heuristic_evaluators(Settings()), store, ReviewRouter(), redis_client, sinks=[sink]
    )
    relay = relay_for(store, sink)
    retried_before = deliveries("retried")

    langfuse.fail_next = 1
    score_batch(entries([make_trace(1)]), ctx)
    assert relay.drain_once() == 7
    assert outbox_statuses(store) == {"pending": 7}
    with Session(store.engine) as session:
        row = session.exec(select(OutboxRecord)).first()
        assert row is not None and row.attempts == 1 and "HTTP 500" in (row.last_error or "")
    drain_until_idle(relay)
    assert outbox_statuses(store) == {"delivered": 7}

    # Down for a while: scoring goes on, the relay keeps backing off, nothing is dropped.
    langfuse.stop()
    for round_ in range(5):
        score_batch(entries([make_trace(10 + round_)], first=10 + round_), ctx)
        relay.drain_once()
        time.sleep(0.06)
    assert relay.backlog()["langfuse"][0] == 35
    assert deliveries("retried") - retried_before >= 8
    langfuse.start()
    drain_until_idle(relay)
    assert outbox_statuses(store) == {"delivered": 42}
    assert len(langfuse.scores) == 42
    store.close()


def test_rejected_scores_are_kept_with_the_reason(
    sqlite_url: str, redis_client: redis.Redis, langfuse: FakeLangfuse, sink: LangfuseSink
) -> None:
    langfuse.reject_names = {"pii_leak"}
    store = SQLStore(sqlite_url)
    ctx = ScoringContext(
        heuristic_evaluators(Settings()), store, ReviewRouter(), redis_client, sinks=[sink]
    )
    score_batch(entries([make_trace(i) for i in range(4)]), ctx)
    relay = relay_for(store, sink)
    drain_until_idle(relay)
    assert outbox_statuses(store) == {"delivered": 24, "rejected": 4}
    with Session(store.engine) as session:
        rejected = session.exec(select(OutboxRecord).where(OutboxRecord.status == "rejected")).all()
    assert all("does not match its config" in (r.last_error or "") for r in rejected)
    assert {json.loads(r.payload)["name"] for r in rejected} == {"pii_leak"}
    store.close()


def test_fleet_with_relay_delivers_every_score(
    redis_url: str,
    redis_client: redis.Redis,
    sqlite_url: str,
    langfuse: FakeLangfuse,
    fleet_factory,  # type: ignore[no-untyped-def]
) -> None:
    env = {**fleet_env(redis_url, sqlite_url), **langfuse.env()}
    fleet = fleet_factory(env)
    fleet.worker(concurrency=2)
    fleet.sampler()
    fleet._start("relay", ["relay", "--loglevel", "INFO"], env)
    traces = [make_trace(i, span_id=f"obs-{i}") for i in range(40)]
    publish_many(redis_client, [t.model_dump_json() for t in traces], Settings())
    store = SQLStore(sqlite_url)
    wait_for(lambda: store.count(ScoreRecord) == 280, 60, fleet.logs)
    wait_for(lambda: len(langfuse.scores) == 280, 30, fleet.logs)
    assert {s["traceId"] for s in langfuse.scores.values()} == {t.trace_id for t in traces}
    assert all(
        s["observationId"] == f"obs-{int(s['traceId'][2:])}" for s in langfuse.scores.values()
    )
    store.close()
