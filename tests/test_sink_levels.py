"""Every sink knows the level (issue 15): turn, trajectory and session scores written with their
outbox rows, delivered by the relay to the real peers (the Langfuse test server, which refuses
what the real one refuses, and a real OTLP/HTTP receiver), stored in SQL with their level, and
counted in the session metrics."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from helpers import wait_for
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from langfuse_server import FakeLangfuse
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otlp_receiver import OTLPReceiver, attributes
from prometheus_client import REGISTRY
from sqlmodel import col, select

from evaluator.console.stats import fleet_stats
from evaluator.evaluation.scoring import ScoringContext, score_batch
from evaluator.evaluators import heuristic_evaluators
from evaluator.models import (
    Level,
    ReviewLabel,
    SampleDecision,
    Score,
    ScoreStatus,
    Step,
    Trace,
    Verdict,
)
from evaluator.review import ReviewRouter
from evaluator.sessions.evaluate import evaluate_sessions
from evaluator.sessions.heuristics import session_evaluators
from evaluator.sessions.tracker import CompletedSession, session_digest
from evaluator.settings import Settings
from evaluator.sinks.base import Sink
from evaluator.sinks.langfuse import LangfuseSettings, LangfuseSink
from evaluator.sinks.otel import OTelSink
from evaluator.sinks.outbox import SinkRelay, label_outbox_rows
from evaluator.sinks.sql import SQLStore, payload_row
from evaluator.store.tables import ScoreRecord

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
NOW_MS = int((T0 + timedelta(hours=1)).timestamp() * 1000)
SESSION_ID = "chat-42"
# W3C trace ids, as an OTel-instrumented app publishes them.
TURN_IDS = ("4bf92f3577b34da6a3ce929d0e0e4701", "4bf92f3577b34da6a3ce929d0e0e4702")
AGENT_SPAN = "00f067aa0ba902b7"
DIGEST = session_digest("acme", SESSION_ID)
DONE = CompletedSession(DIGEST, "acme", SESSION_ID, TURN_IDS, NOW_MS - 900_000, NOW_MS - 600_000,
                        False, False, "0")  # fmt: skip


def agent_turn(n: int, asked: str) -> Trace:
    """A turn of the conversation; the second one is an agent run whose tool failed."""
    steps = None
    if n == 2:
        steps = [
            Step(id="s1", kind="tool", name="lookup_order", arguments={"order": "A-7"},
                 error="timeout"),
            Step(id="s2", kind="llm", name="gpt-4o-mini", result="Sorry, try later."),
        ]  # fmt: skip
    return Trace(
        trace_id=TURN_IDS[n - 1], span_id=AGENT_SPAN, input=asked, output="Sorry, try later.",
        session_id=SESSION_ID, tenant="acme", started_at=T0 + timedelta(minutes=n),
        ended_at=T0 + timedelta(minutes=n, seconds=2), steps=steps,
    )  # fmt: skip


TURNS = (agent_turn(1, "Where is my order A-7?"), agent_turn(2, "where is my order A-7"))


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OTLPReceiver]:
    server = OTLPReceiver()
    server.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", server.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    yield server
    server.stop()


@pytest.fixture
def sinks(
    langfuse: FakeLangfuse, receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[Sink]]:
    for key, value in langfuse.env().items():
        monkeypatch.setenv(key, value)
    made: list[Sink] = [LangfuseSink(LangfuseSettings()), OTelSink.otlp(["spans", "logs"])]
    yield made


def relay_all(store: SQLStore, sinks: list[Sink]) -> SinkRelay:
    relay = SinkRelay(store, sinks, backoff_base_s=0.01, backoff_max_s=0.05)
    wait_for(
        lambda: relay.drain_once() == 0 and not any(n for n, _ in relay.backlog().values()),
        20,
        "outbox drained",
    )
    return relay


def score_turns(store: SQLStore, client: redis.Redis, sinks: list[Sink]) -> None:
    decision = SampleDecision(judge=False, rate=0.1).model_dump()
    entries = [
        {"id": f"{1764579600000 + i}-0", "trace": t.model_dump_json(), "decision": decision}
        for i, t in enumerate(TURNS)
    ]
    ctx = ScoringContext(
        heuristic_evaluators(Settings()), store, ReviewRouter(), client, sinks=sinks
    )
    score_batch(entries, ctx)


def evaluate_the_session(store: SQLStore, sinks: list[Sink]) -> None:
    rows = [payload_row(t, t.model_dump_json(exclude_none=True), T0) for t in TURNS]
    store.write_batch([], [], [], payloads=rows)
    outcome = evaluate_sessions(
        [DONE], store, session_evaluators(), max_trace_bytes=256 * 1024, budget_s=5.0,
        patience_s=300, now_ms=NOW_MS, sinks=sinks,
    )  # fmt: skip
    assert outcome.evaluated == 1


def stored_levels(store: SQLStore) -> dict[str, set[str]]:
    with store.session() as session:
        rows = session.exec(select(ScoreRecord.evaluator, ScoreRecord.level)).all()
    levels: dict[str, set[str]] = {}
    for evaluator, level in rows:
        levels.setdefault(str(level), set()).add(evaluator)
    return levels


def levels_of(store: SQLStore, level: str) -> list[str]:
    with store.session() as session:
        return list(session.exec(select(ScoreRecord.id).where(ScoreRecord.level == level)))


def session_counter(evaluator: str, outcome: str) -> float:
    labels = {"evaluator": evaluator, "outcome": outcome}
    return REGISTRY.get_sample_value("evalfleet_session_scores_total", labels) or 0.0


def test_each_level_reaches_sql_langfuse_and_otel(
    store: SQLStore,
    redis_client: redis.Redis,
    sinks: list[Sink],
    langfuse: FakeLangfuse,
    receiver: OTLPReceiver,
) -> None:
    repeats_failed = session_counter("user_repeats", "failed")
    score_turns(store, redis_client, sinks)
    evaluate_the_session(store, sinks)
    relay = relay_all(store, sinks)
    try:
        # SQL: each score with its level.
        levels = stored_levels(store)
        assert {"refusal", "ai_self_reference"} <= levels["turn"]
        assert {"tool_errors", "ended_on_tool_call"} & levels["trajectory"]
        assert {"session_turns", "user_repeats"} <= levels["session"]
        assert not levels.keys() - {"turn", "trajectory", "session"}
        summary = {row["evaluator"]: row["level"] for row in store.score_summary(by_level=True)}
        assert summary["user_repeats"] == "session" and summary["tool_errors"] == "trajectory"
        totals = fleet_stats(redis_client, store).levels  # `evalfleet stats`
        assert list(totals) == ["turn", "trajectory", "session"]
        assert totals["session"]["count"] == len(levels_of(store, "session"))
        assert totals["session"]["failed"] >= 1  # user_repeats

        # Langfuse: turn and trajectory scores on their trace (and span), session scores on the
        # session, by the app's session id, with neither trace nor observation.
        stored = langfuse.scores
        with store.session() as session:
            records = {r.id: r for r in session.exec(select(ScoreRecord))}
        by_level: dict[str, list[dict[str, Any]]] = {}
        for score_id, body in stored.items():
            by_level.setdefault(str(records[score_id].level), []).append(body)
        for body in by_level["turn"] + by_level["trajectory"]:
            assert body["traceId"] in TURN_IDS and body["observationId"] == AGENT_SPAN
            assert "sessionId" not in body
        assert all("level" not in b["metadata"] for b in by_level["turn"])  # as before levels
        assert {b["metadata"]["level"] for b in by_level["trajectory"]} == {"trajectory"}
        on_session = langfuse.session_scores(SESSION_ID)
        assert {b["id"] for b in by_level["session"]} == set(on_session)
        assert {b["name"] for b in on_session.values()} >= {"user_repeats", "session_turns"}
        for body in on_session.values():
            assert "traceId" not in body and "observationId" not in body
            assert body["metadata"]["level"] == "session"
            assert body["metadata"]["session_version"] == DONE.version
            # The session's time: its last turn's end, the same on every re-send.
            assert body["timestamp"] == TURNS[1].ended_at.isoformat()  # type: ignore[union-attr]
        repeats = next(b for b in on_session.values() if b["name"] == "user_repeats")
        assert repeats["value"] == 0.0  # the user asked the same thing twice

        # OTel: every record says its level; the conversation id is on all of them; session
        # records sit in the last turn's trace, without a span id.
        logs = [attributes(r.attributes) | {"_trace": r.trace_id.hex(), "_span": r.span_id.hex()}
                for r in receiver.logs]  # fmt: skip
        assert {a["evalfleet.level"] for a in logs} == {"turn", "trajectory", "session"}
        assert {a["gen_ai.conversation.id"] for a in logs} == {SESSION_ID}
        session_logs = [a for a in logs if a["evalfleet.level"] == "session"]
        assert {a["_trace"] for a in session_logs} == {TURN_IDS[1]}
        assert {a["_span"] for a in session_logs} == {""}
        assert {a["evalfleet.session.version"] for a in session_logs} == {DONE.version}
        trace_logs = [a for a in logs if a["evalfleet.level"] != "session"]
        assert {a["_span"] for a in trace_logs} == {AGENT_SPAN}
        session_spans = [s for s in receiver.spans
                         if attributes(s.attributes)["evalfleet.level"] == "session"]  # fmt: skip
        assert session_spans and {s.trace_id.hex() for s in session_spans} == {TURN_IDS[1]}
        assert all(s.parent_span_id == b"" for s in session_spans)  # a root in that trace
        assert len(session_spans) == len(on_session)

        # Prometheus: session scores in the session series.
        assert session_counter("user_repeats", "failed") == repeats_failed + 1
    finally:
        relay.close()


def test_a_session_redelivered_sends_nothing_twice(
    store: SQLStore, sinks: list[Sink], langfuse: FakeLangfuse, receiver: OTLPReceiver
) -> None:
    evaluate_the_session(store, sinks)
    relay = relay_all(store, sinks)
    try:
        sent = len(langfuse.score_posts()), len(receiver.logs)
        evaluate_the_session(store, sinks)  # the session task redelivered: same rows, digests
        relay_all(store, sinks)
        assert (len(langfuse.score_posts()), len(receiver.logs)) == sent
        assert langfuse.duplicates() == {}
    finally:
        relay.close()


def session_score(**fields: Any) -> Score:
    base: dict[str, Any] = {
        "id": "sc-1", "trace_id": f"session:{DIGEST}", "evaluator": "session_goal_achieved",
        "evaluator_version": "1", "name": "achieved", "value": 1.0, "passed": True,
    }  # fmt: skip
    return Score(**{**base, **fields})


def session_as_trace(**fields: Any) -> Trace:
    base: dict[str, Any] = {
        "trace_id": f"session:{DIGEST}", "input": "Where is my order A-7?",
        "output": "Sorry, try later.", "session_id": SESSION_ID,
        "metadata": {"level": "session", "session_version": "0", "turn_ids": list(TURN_IDS)},
    }  # fmt: skip
    return Trace(**{**base, **fields})


def test_a_session_score_is_never_a_trace_score(
    langfuse: FakeLangfuse, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in langfuse.env().items():
        monkeypatch.setenv(key, value)
    sink = LangfuseSink(LangfuseSettings())
    try:
        by_level = sink.payload(session_score(level=Level.SESSION), session_as_trace())
        # A judge score on the session's Trace is a session score even if it kept the default
        # level: the session subject is no Langfuse trace.
        by_subject = sink.payload(session_score(), session_as_trace())
        for body in (by_level, by_subject):
            assert isinstance(body, dict)
            assert body["sessionId"] == SESSION_ID and "traceId" not in body
        no_id = sink.payload(session_score(level=Level.SESSION), session_as_trace(session_id=None))
        assert no_id == "no session id"
        assert isinstance(by_level, dict)
        rejected, retry = sink.deliver_each({"r1": {**by_level, "timestamp": T0.isoformat()}})
        assert (rejected, retry) == ({}, {})
        assert set(langfuse.session_scores(SESSION_ID)) == {"sc-1"}
    finally:
        sink.close()


def test_a_reviewers_label_of_a_session_is_a_session_score(
    store: SQLStore, langfuse: FakeLangfuse, sinks: list[Sink]
) -> None:
    label = ReviewLabel(
        id="lab-1", trace_id=f"session:{DIGEST}", evaluator="user_repeats",
        evaluator_version="1.0.0", reviewer="ana", verdict=Verdict.FAIL,
        labelled_at=T0 + timedelta(hours=2), source="review", trace=session_as_trace(),
    )  # fmt: skip
    rows = label_outbox_rows(sinks, [label], datetime.now(UTC))
    assert rows  # Langfuse takes labels; the OTel sink does not
    store.write_batch([], [], [], outbox=rows)
    relay = relay_all(store, sinks)
    try:
        [verdict] = langfuse.session_scores(SESSION_ID).values()
        assert verdict["name"] == "human.user_repeats.verdict" and verdict["value"] == 0.0
        assert "traceId" not in verdict
    finally:
        relay.close()


def test_session_scores_keep_out_of_the_trace_series() -> None:
    from evaluator.ops import metrics

    def evaluations(evaluator: str) -> float:
        labels = {"evaluator": evaluator, "status": "ok"}
        return REGISTRY.get_sample_value("evalfleet_evaluations_total", labels) or 0.0

    before = (
        evaluations("session_goal_achieved"),
        session_counter("session_goal_achieved", "passed"),
    )
    metrics.record_scores([session_score(level=Level.SESSION)], {})
    assert evaluations("session_goal_achieved") == before[0]  # JudgeErrorRateHigh unchanged
    assert session_counter("session_goal_achieved", "passed") == before[1] + 1
    outcomes = [
        metrics.session_outcome(session_score(level=Level.SESSION, **fields))
        for fields in ({"passed": False}, {"passed": None}, {"status": ScoreStatus.ERROR})
    ]
    assert outcomes == ["failed", "scored", "error"]
    # A judge score on the session's Trace that kept the default level is still a session score.
    metrics.record_scores([session_score()], {})
    assert evaluations("session_goal_achieved") == before[0]
    assert session_counter("session_goal_achieved", "passed") == before[1] + 2


def test_a_score_on_a_session_subject_is_stored_as_a_session_score(store: SQLStore) -> None:
    from evaluator.sinks.sql import score_row

    store.write_batch([], [score_row(session_score(), "acme", None, None)], [])
    assert levels_of(store, "session") == ["sc-1"]


def test_sql_rows_from_before_levels_read_by_their_subject(store: SQLStore) -> None:
    from evaluator.sinks.sql import score_row

    turn = Score.for_trace(TURN_IDS[0], "refusal", "1", "refusal", passed=True)
    session = session_score(level=Level.SESSION)
    rows = [score_row(s, "acme", None, None) for s in (turn, session)]
    for row in rows:
        row["level"] = None  # written by a version without the column
    store.write_batch([], rows, [])
    summary = {row["evaluator"]: row["level"] for row in store.score_summary(by_level=True)}
    assert summary == {"refusal": "turn", "session_goal_achieved": "session"}
    with store.session() as s:
        assert s.exec(select(ScoreRecord.level).where(col(ScoreRecord.id) == "sc-1")).one() is None


def test_the_sinks_own_check_agrees_with_the_server_on_every_subject() -> None:
    """What the sink refuses before sending (``_refusal``) is what the server would refuse:
    every combination of the four ids, absent, empty or given."""
    from langfuse_server import INGESTION_SOURCES, score_errors

    from evaluator.sinks.langfuse import _refusal

    keys = ("traceId", "sessionId", "datasetRunId", "observationId")
    for values in itertools.product((None, "", "x-1"), repeat=4):
        body: dict[str, Any] = {"id": "s-1", "name": "goal", "value": 1, "dataType": "BOOLEAN"}
        body |= {k: v for k, v in zip(keys, values, strict=True) if v is not None}
        server = score_errors(body, sources=INGESTION_SOURCES, endpoint="ingestion")
        assert (_refusal(body) is None) == (server == []), body


def test_a_session_score_the_otel_sink_cannot_place_is_skipped() -> None:
    sink = OTelSink(InMemorySpanExporter(), InMemoryLogRecordExporter())
    try:
        score = session_score(level=Level.SESSION)
        placed = sink.payload(score, session_as_trace())
        assert isinstance(placed, dict) and placed["trace_id"] == TURN_IDS[1]
        assert placed["span_id"] is None
        assert placed["attributes"]["evalfleet.level"] == "session"
        assert placed["attributes"]["gen_ai.conversation.id"] == SESSION_ID
        not_w3c = session_as_trace(metadata={"turn_ids": ["t-000001"]})
        assert sink.payload(score, not_w3c) == "not a W3C trace id"
        assert sink.payload(score, session_as_trace(metadata={})) == "not a W3C trace id"
    finally:
        sink.close()


@hypothesis_settings(max_examples=15, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.lists(st.text(min_size=1, max_size=256), min_size=1, max_size=12, unique=True))
def test_any_valid_session_id_becomes_a_session_score_the_server_takes(
    langfuse: FakeLangfuse, monkeypatch: pytest.MonkeyPatch, session_ids: list[str]
) -> None:
    """Whatever session id an app sends (any text a Trace accepts), its session's scores are
    taken by the server as session scores on exactly that id."""
    for key, value in langfuse.env().items():
        monkeypatch.setenv(key, value)
    traces = []
    for session_id in session_ids:
        try:
            traces.append(session_as_trace(session_id=session_id))
        except ValueError:
            continue  # not a valid Trace (a NUL, ...): refused at the door, never scored
    sink = LangfuseSink(LangfuseSettings())
    try:
        payloads: dict[str, dict[str, Any]] = {}
        for n, trace in enumerate(traces):
            body = sink.payload(session_score(id=f"h-{n}", level=Level.SESSION), trace)
            assert isinstance(body, dict) and body["sessionId"] == trace.session_id
            payloads[f"r{n}"] = {**body, "timestamp": T0.isoformat()}
        assert sink.deliver_each(payloads) == ({}, {})
        for n, trace in enumerate(traces):
            assert f"h-{n}" in langfuse.session_scores(str(trace.session_id))
    finally:
        sink.close()
