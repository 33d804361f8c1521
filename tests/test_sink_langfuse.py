"""Langfuse sink: what it sends through the outbox and the relay, against a real HTTP server that
enforces the real server's rules (tests/langfuse_server.py)."""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from helpers import fleet_env, make_trace, wait_for
from langfuse_server import PUBLIC_KEY, SECRET_KEY, FakeLangfuse
from prometheus_client import REGISTRY
from sqlmodel import Session, select
from test_review_queue import review_item, seed

from evaluator.evaluation.scoring import ScoringContext, score_batch
from evaluator.evaluators import heuristic_evaluators
from evaluator.ingest import publish_many
from evaluator.models import SampleDecision, Score, ScoreStatus, ScoreType, Severity, Trace, Verdict
from evaluator.review import ReviewRouter
from evaluator.review.queue import ReviewQueue
from evaluator.settings import Settings
from evaluator.sinks.base import SinkUnavailable
from evaluator.sinks.langfuse import LangfuseSettings, LangfuseSink
from evaluator.sinks.outbox import SinkRelay, outbox_rows
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import OutboxRecord, ScoreRecord


@pytest.fixture
def env(langfuse: FakeLangfuse, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in langfuse.env().items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def sink(env: None) -> Iterator[LangfuseSink]:
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


def context(store: SQLStore, redis_client: redis.Redis, sink: LangfuseSink) -> ScoringContext:
    return ScoringContext(
        heuristic_evaluators(Settings()), store, ReviewRouter(), redis_client, sinks=[sink]
    )


def outbox_statuses(store: SQLStore) -> dict[str, int]:
    with Session(store.engine) as session:
        rows = session.exec(select(OutboxRecord.status)).all()
    return {status: rows.count(status) for status in set(rows)}


def deliveries(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "evalfleet_sink_deliveries_total", {"sink": "langfuse", "outcome": outcome}
    )
    return value or 0.0


def config_error() -> float | None:
    return REGISTRY.get_sample_value("evalfleet_sink_config_error", {"sink": "langfuse"})


def drain_until_idle(relay: SinkRelay, timeout: float = 10.0) -> None:
    wait_for(
        lambda: relay.drain_once() == 0 and not relay.backlog()["langfuse"][0],
        timeout,
        "outbox drained",
    )


def sent_ids(langfuse: FakeLangfuse) -> Counter[str]:
    return Counter(s["id"] for post in langfuse.score_posts() for s in post.body)


def test_payload_maps_types_comment_metadata_and_environment(sink: LangfuseSink) -> None:
    ended = datetime(2026, 11, 20, 10, 0, 2, tzinfo=UTC)
    trace = make_trace(1, span_id="obs-42", ended_at=ended, metadata={"environment": "Production"})
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
    assert body["environment"] == "production"  # as Langfuse files the app's own traces
    assert body["_timestamp"] == ended.isoformat()  # the trace's time: the same on every re-run
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
    nan = numeric.model_copy(update={"value": math.nan})
    assert sink.payload(nan, trace) == "non-finite value"  # would make the whole request fail


@pytest.mark.parametrize(
    ("metadata", "setting", "expected"),
    [
        ({"environment": "production"}, None, "production"),
        ({"environment": "langfuse-prod"}, None, "prod"),  # the reserved prefix goes
        ({"environment": "eu west"}, None, "default"),  # not a Langfuse environment name
        ({"langfuse_environment": "staging"}, None, "staging"),  # read by the backfill
        ({}, "canary", "canary"),
        ({}, None, "default"),
    ],
)
def test_environment_from_the_trace_or_the_setting(
    env: None,
    monkeypatch: pytest.MonkeyPatch,
    metadata: dict[str, str],
    setting: str | None,
    expected: str,
) -> None:
    if setting:
        monkeypatch.setenv("LANGFUSE_TRACING_ENVIRONMENT", setting)
    sink = LangfuseSink(LangfuseSettings())
    trace = make_trace(1, metadata=metadata)
    body = sink.payload(Score.for_trace(trace.trace_id, "x", "1", "x", passed=True), trace)
    assert isinstance(body, dict) and body["environment"] == expected


def test_scores_reach_langfuse_once_with_stable_ids(
    sqlite_url: str, redis_client: redis.Redis, langfuse: FakeLangfuse, sink: LangfuseSink
) -> None:
    store = SQLStore(sqlite_url)
    ctx = context(store, redis_client, sink)
    batch = entries([make_trace(1, span_id="obs-1"), make_trace(2)])
    score_batch(batch, ctx)
    relay = relay_for(store, sink)
    drain_until_idle(relay)
    with Session(store.engine) as session:
        ids = set(session.exec(select(ScoreRecord.id)).all())
    assert set(langfuse.scores) == ids and len(ids) == 14
    [post] = langfuse.score_posts()
    assert post.path == "/api/public/ingestion"
    token = base64.b64encode(f"{PUBLIC_KEY}:{SECRET_KEY}".encode()).decode()
    assert post.headers["authorization"] == f"Basic {token}"
    assert post.headers["x-langfuse-public-key"] == PUBLIC_KEY
    assert post.headers["x-langfuse-sdk-name"] == "python"
    events = langfuse.requests[0].body["batch"]
    event = next(e for e in events if e["body"]["traceId"] == "t-000001")
    assert event["type"] == "score-create" and event["id"] == event["body"]["id"]
    assert "_timestamp" not in event["body"] and "timestamp" not in event["body"]
    sent = next(s for s in langfuse.scores.values() if s["traceId"] == "t-000001")
    assert sent["observationId"] == "obs-1" and sent["dataType"] == "BOOLEAN"
    assert sent["metadata"]["source"] == "evalfleet" and sent["environment"] == "default"
    assert langfuse.dropped == [] and langfuse.duplicates() == {}
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
    assert len(langfuse.scores) == 14 and langfuse.duplicates() == {}
    assert langfuse.scores[changed.id]["value"] == 0.0
    store.close()


def test_a_changed_score_keeps_its_timestamp_and_its_row(
    sqlite_url: str, langfuse: FakeLangfuse, sink: LangfuseSink
) -> None:
    """Re-sent days later, a changed score still lands in its first row: its timestamp is the
    trace's, not the time it was (re)computed (the real table is keyed by the timestamp's day)."""
    store = SQLStore(sqlite_url)
    relay = relay_for(store, sink)
    ended = datetime.now(UTC) - timedelta(days=3)
    trace = make_trace(1, ended_at=ended)
    first = Score.for_trace(trace.trace_id, "judge", "1", "judge", passed=True)
    first.created_at = ended + timedelta(seconds=5)
    store.write_batch([], [], [], [], outbox_rows([sink], [first], {trace.trace_id: trace}, ended))
    drain_until_idle(relay)
    again = first.model_copy(update={"passed": False, "created_at": datetime.now(UTC)})
    store.write_batch([], [], [], [], outbox_rows([sink], [again], {trace.trace_id: trace}, ended))
    drain_until_idle(relay)
    assert langfuse.duplicates() == {} and len(langfuse.scores) == 1
    row = langfuse.scores[first.id]
    assert (row["value"], row["timestamp"]) == (0.0, ended.isoformat())
    store.close()


def test_retry_after_5xx_and_nothing_lost_while_down(
    database_url: str, redis_client: redis.Redis, langfuse: FakeLangfuse, sink: LangfuseSink
) -> None:
    store = SQLStore(Settings(database_url=database_url).sqlalchemy_url)
    ctx = context(store, redis_client, sink)
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
    assert config_error() == 0  # an outage is not a configuration error
    langfuse.start()
    drain_until_idle(relay)
    assert outbox_statuses(store) == {"delivered": 42}
    assert len(langfuse.scores) == 42
    store.close()


def test_rejected_scores_are_kept_with_the_reason_and_the_rest_sent_once(
    sqlite_url: str, redis_client: redis.Redis, langfuse: FakeLangfuse, sink: LangfuseSink
) -> None:
    langfuse.reject_names = {"pii_leak"}
    store = SQLStore(sqlite_url)
    score_batch(entries([make_trace(i) for i in range(4)]), context(store, redis_client, sink))
    relay = relay_for(store, sink)
    drain_until_idle(relay)
    assert outbox_statuses(store) == {"delivered": 24, "rejected": 4}
    with Session(store.engine) as session:
        rejected = session.exec(select(OutboxRecord).where(OutboxRecord.status == "rejected")).all()
    assert all("HTTP 400: Invalid request data" in (r.last_error or "") for r in rejected)
    assert all("refused" in (r.last_error or "") for r in rejected)
    assert {json.loads(r.payload)["name"] for r in rejected} == {"pii_leak"}
    # The 207 names each event: one request, no score sent twice to find the refused ones.
    assert len(langfuse.score_posts()) == 1
    assert set(sent_ids(langfuse).values()) == {1}
    store.close()


def test_batches_are_capped_by_bytes_and_sent_as_utf8(
    sqlite_url: str, langfuse: FakeLangfuse, env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVALFLEET_LANGFUSE_MAX_REQUEST_BYTES", "60000")
    sink = LangfuseSink(LangfuseSettings())
    store = SQLStore(sqlite_url)
    traces = {f"t-{i}": make_trace(i, trace_id=f"t-{i}") for i in range(40)}
    reason = "La réponse cite « l'étape 2 », absente du contexte. " * 60  # ~3,300 chars
    scores = [
        Score.for_trace(f"t-{i}", "groundedness", "3", "groundedness", value=0.3, reason=reason)
        for i in range(40)
    ]
    store.write_batch([], [], [], [], outbox_rows([sink], scores, traces, datetime.now(UTC)))
    drain_until_idle(SinkRelay(store, [sink], batch_size=40))
    assert len(langfuse.scores) == 40
    posts = [r for r in langfuse.requests if r.path == "/api/public/ingestion"]
    assert len(posts) > 1 and all(len(r.raw) <= 60_000 for r in posts)
    assert "réponse".encode() in posts[0].raw and b"\\u00e9" not in posts[0].raw
    assert posts[0].headers["content-type"] == "application/json; charset=utf-8"
    assert langfuse.scores[scores[0].id]["comment"] == reason[:4000]
    sink.close()
    store.close()


def test_a_failed_request_does_not_resend_the_accepted_part_of_the_batch(
    sqlite_url: str, langfuse: FakeLangfuse, env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVALFLEET_LANGFUSE_MAX_REQUEST_BYTES", "20000")
    sink = LangfuseSink(LangfuseSettings())
    store = SQLStore(sqlite_url)
    traces = {f"t-{i}": make_trace(i, trace_id=f"t-{i}") for i in range(20)}
    scores = [
        Score.for_trace(f"t-{i}", "judge", "1", "judge", value=0.5, reason="x" * 4000)
        for i in range(20)
    ]
    store.write_batch([], [], [], [], outbox_rows([sink], scores, traces, datetime.now(UTC)))
    langfuse.fail_after, langfuse.fail_next = 1, 1  # the batch's second request fails
    relay = SinkRelay(store, [sink], batch_size=20, backoff_base_s=0.01, backoff_max_s=0.05)
    assert relay.drain_once() == 20
    first = {s["id"] for s in langfuse.score_posts()[0].body}
    # What the server answered is settled at once; the rest of the batch waits for its retry.
    assert outbox_statuses(store) == {"delivered": len(first), "pending": 20 - len(first)}
    drain_until_idle(relay)
    assert len(langfuse.scores) == 20 and outbox_statuses(store) == {"delivered": 20}
    counts = sent_ids(langfuse)
    assert first and all(counts[score_id] == 1 for score_id in first)  # accepted: not re-sent
    sink.close()
    store.close()


@pytest.mark.parametrize("fault", ["404 path", "405", "400 shape", "401 keys", "403"])
def test_configuration_errors_stop_delivery_keep_rows_and_alert(
    sqlite_url: str,
    redis_client: redis.Redis,
    langfuse: FakeLangfuse,
    env: None,
    fault: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = LangfuseSink(LangfuseSettings(), probe_s=0.5)
    store = SQLStore(sqlite_url)
    score_batch(entries([make_trace(1)]), context(store, redis_client, sink))
    if fault == "404 path":
        langfuse.missing_paths = {"/api/public/ingestion"}
    elif fault == "401 keys":
        langfuse.secret_key = "sk-lf-rotated"
    else:
        langfuse.force_status = int(fault.split()[0])
    relay = relay_for(store, sink)
    retried = deliveries("retried")
    with caplog.at_level(logging.ERROR, logger="evaluator.sinks.langfuse"):
        assert relay.drain_once() == 7
        requests = len(langfuse.requests)
        for _ in range(3):  # rows are due again at once; the sink waits for its next check
            time.sleep(0.06)
            relay.drain_once()
        assert len(langfuse.requests) == requests
    assert outbox_statuses(store) == {"pending": 7}  # nothing rejected
    assert config_error() == 1
    assert deliveries("retried") - retried >= 7  # what alert SinkNotDelivering watches
    [line] = [r for r in caplog.records if "langfuse sink stopped" in r.getMessage()]
    assert str(int(fault[:3])) in line.getMessage()
    langfuse.missing_paths, langfuse.secret_key, langfuse.force_status = set(), SECRET_KEY, None
    time.sleep(0.5)
    drain_until_idle(relay)
    assert outbox_statuses(store) == {"delivered": 7} and len(langfuse.scores) == 7
    assert config_error() == 0
    sink.close()
    store.close()


def test_an_older_v3_server_takes_the_scores(
    sqlite_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeLangfuse(version="v3")
    fake.start()
    try:
        for key, value in fake.env().items():
            monkeypatch.setenv(key, value)
        sink = LangfuseSink(LangfuseSettings())
        store = SQLStore(sqlite_url)
        score_batch(entries([make_trace(1), make_trace(2)]), context(store, redis_client, sink))
        drain_until_idle(relay_for(store, sink))
        assert len(fake.scores) == 14 and outbox_statuses(store) == {"delivered": 14}
        sink.close()
        store.close()
    finally:
        fake.stop()


def test_human_labels_reach_langfuse_as_annotation_scores(
    store: SQLStore,
    redis_client: redis.Redis,
    langfuse: FakeLangfuse,
    env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    langfuse.configs = {
        "cfg-verdict": {"name": "groundedness.verdict", "dataType": "BOOLEAN"},
        "cfg-ground": {"name": "groundedness", "dataType": "NUMERIC", "minValue": 0, "maxValue": 1},
    }
    monkeypatch.setenv(
        "EVALFLEET_LANGFUSE_SCORE_CONFIGS",
        json.dumps({"groundedness.verdict": "cfg-verdict", "groundedness": "cfg-ground"}),
    )
    sink = LangfuseSink(LangfuseSettings())
    queue = ReviewQueue(redis_client, store, sinks=[sink])
    item = review_item(1)
    seed(store, redis_client, [item])
    [claimed] = queue.claim("ana")
    label = queue.label(
        claimed.item.id, "ana", Verdict.FAIL, {"groundedness": 0.2, "tone": "curt"}, "invented it"
    )
    relay = relay_for(store, sink)
    drain_until_idle(relay)
    by_name = {s["name"]: s for s in langfuse.scores.values()}
    assert set(by_name) == {"groundedness.verdict", "groundedness", "human.groundedness.tone"}
    verdict = by_name["groundedness.verdict"]
    assert (verdict["source"], verdict["configId"], verdict["value"]) == (
        "ANNOTATION",
        "cfg-verdict",
        0.0,
    )
    assert (by_name["groundedness"]["source"], by_name["groundedness"]["value"]) == (
        "ANNOTATION",
        0.2,
    )
    tone = by_name["human.groundedness.tone"]  # no config: an API score, not a dropped one
    assert (tone.get("source", "API"), tone["dataType"], tone["value"]) == (
        "API",
        "CATEGORICAL",
        "curt",
    )
    assert all(
        s["traceId"] == item.trace_id and s["comment"] == "invented it" for s in by_name.values()
    )
    assert verdict["metadata"]["reviewer"] == "ana" and verdict["metadata"]["verdict"] == "fail"
    assert verdict["timestamp"] == label.labelled_at.isoformat()
    assert langfuse.dropped == []
    # The reviewer's retried request stores nothing new and sends nothing again.
    queue.label(claimed.item.id, "ana", Verdict.FAIL)
    assert relay.drain_once() == 0
    sink.close()


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


def outbox_rows_by_status(store: SQLStore, status: str) -> list[OutboxRecord]:
    with Session(store.engine) as session:
        return list(session.exec(select(OutboxRecord).where(OutboxRecord.status == status)).all())


def write_scores(
    store: SQLStore, sink: LangfuseSink, n: int, refused_every: int = 0
) -> list[Score]:
    """``n`` scores on ``n`` traces; every ``refused_every``-th one is named "refused"."""
    traces = {f"t-{i}": make_trace(i, trace_id=f"t-{i}") for i in range(n)}
    scores = [
        Score.for_trace(
            f"t-{i}",
            "refused" if refused_every and i % refused_every == 0 else "judge",
            "1",
            "x",
            value=0.5,
        )
        for i in range(n)
    ]
    store.write_batch([], [], [], [], outbox_rows([sink], scores, traces, datetime.now(UTC)))
    return scores


def test_refused_scores_cost_no_extra_sends(
    database_url: str, langfuse: FakeLangfuse, sink: LangfuseSink
) -> None:
    """10 % of the scores refused by the server: each score is sent once, the refused ones are
    rejected with the server's message, and no request is spent finding them."""
    langfuse.reject_names = {"refused.x"}
    store = SQLStore(Settings(database_url=database_url).sqlalchemy_url)
    write_scores(store, sink, 200, refused_every=10)
    relay = SinkRelay(store, [sink], batch_size=200)
    drain_until_idle(relay)
    assert outbox_statuses(store) == {"delivered": 180, "rejected": 20}
    rejected = outbox_rows_by_status(store, "rejected")
    assert all((r.last_error or "").startswith("HTTP 400: Invalid request data") for r in rejected)
    assert all("score refused.x refused (injected)" in (r.last_error or "") for r in rejected)
    sends = sum(sent_ids(langfuse).values())
    assert sends / len(langfuse.scores) <= 1.2  # 200 sends for 180 scores
    assert set(sent_ids(langfuse).values()) == {1} and len(langfuse.score_posts()) == 1
    store.close()


def test_transient_item_errors_are_retried_and_never_rejected(
    database_url: str, langfuse: FakeLangfuse, sink: LangfuseSink
) -> None:
    """A 207 whose entries say 500 for some events (the server's storage blinked): those rows
    stay pending with the reason and are delivered on a later attempt; the accepted rest of the
    batch is delivered at once and not sent again; refused ones are rejected."""
    langfuse.reject_names = {"refused.x"}
    langfuse.fail_items = 5
    store = SQLStore(Settings(database_url=database_url).sqlalchemy_url)
    write_scores(store, sink, 50, refused_every=10)
    relay = SinkRelay(store, [sink], batch_size=50, backoff_base_s=0.5, backoff_max_s=1.0)
    transient_before = REGISTRY.get_sample_value(
        "evalfleet_sink_transient_items_total", {"sink": "langfuse"}
    )
    assert relay.drain_once() == 50
    assert outbox_statuses(store) == {"delivered": 40, "rejected": 5, "pending": 5}
    waiting = outbox_rows_by_status(store, "pending")
    assert all(r.attempts == 1 for r in waiting)
    assert all(r.last_error == "HTTP 500: Internal Server Error" for r in waiting)
    assert relay.drain_once() == 0  # they wait their backoff, not retried in a hot loop
    counts = relay.counts["langfuse"]
    assert (counts.delivered, counts.rejected, counts.transient) == (40, 5, 5)
    transient_now = REGISTRY.get_sample_value(
        "evalfleet_sink_transient_items_total", {"sink": "langfuse"}
    )
    assert (transient_now or 0) - (transient_before or 0) == 5
    drain_until_idle(relay)
    assert outbox_statuses(store) == {"delivered": 45, "rejected": 5}
    assert len(langfuse.scores) == 45
    waited = {json.loads(r.payload)["id"] for r in waiting}
    assert waited <= set(langfuse.scores)  # delivered, never rejected
    assert all("500" not in (r.last_error or "") for r in outbox_rows_by_status(store, "rejected"))
    counts_sent = sent_ids(langfuse)
    assert {counts_sent[i] for i in waited} == {2}  # once failed, once taken
    assert {n for i, n in counts_sent.items() if i not in waited} == {1}
    assert sum(counts_sent.values()) == 50 + 5  # only the transient ones went twice
    store.close()


def test_the_sink_protocol_form_retries_only_the_transient_rows(
    langfuse: FakeLangfuse, sink: LangfuseSink
) -> None:
    """``deliver`` (one outcome for the whole call) raises while a row waits; called again with
    the same rows it sends only that row."""
    trace = make_trace(1)
    scores = [Score.for_trace(trace.trace_id, f"e{i}", "1", "x", value=0.5) for i in range(4)]
    payloads: dict[str, dict[str, Any]] = {}
    for score in scores:
        body = sink.payload(score, trace)
        assert isinstance(body, dict)
        # As the relay hands them over: with the score's time.
        payloads[f"langfuse:{score.id}"] = {**body, "timestamp": score.created_at.isoformat()}
    langfuse.fail_items = 1
    with pytest.raises(SinkUnavailable, match="did not take 1 of 4: HTTP 500"):
        sink.deliver(payloads)
    assert sink.deliver(payloads) == {}
    assert sorted(sent_ids(langfuse).values()) == [1, 1, 1, 2]
    assert len(langfuse.scores) == 4


def test_a_207_that_names_no_refused_event_falls_back_to_halving(
    sqlite_url: str, langfuse: FakeLangfuse, sink: LangfuseSink
) -> None:
    """Another server's 207 whose errors carry no event id: the named successes are settled,
    only the unconfirmed rows are sent again (in halves) to find the refused ones."""
    langfuse.reject_names = {"refused.x"}
    langfuse.unnamed_errors = True
    store = SQLStore(sqlite_url)
    write_scores(store, sink, 40, refused_every=10)  # 4 refused
    drain_until_idle(SinkRelay(store, [sink], batch_size=40))
    assert outbox_statuses(store) == {"delivered": 36, "rejected": 4}
    rejected = outbox_rows_by_status(store, "rejected")
    assert all("refused (injected)" in (r.last_error or "") for r in rejected)
    counts = sent_ids(langfuse)
    assert {n for i, n in counts.items() if i in langfuse.scores} == {1}
    assert sum(counts.values()) <= 40 + 4 * 2  # the refused ones re-sent at most twice each
    store.close()
