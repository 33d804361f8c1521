"""OpenTelemetry sink: gen_ai.evaluation.result events in the app's trace, checked with the
SDK's in-memory exporters and with a real OTLP/HTTP receiver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from helpers import make_trace, wait_for
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otlp_receiver import OTLPReceiver, attributes
from prometheus_client import REGISTRY

from evaluator.evaluation.scoring import ScoringContext, score_batch
from evaluator.evaluators import heuristic_evaluators
from evaluator.models import SampleDecision, Trace
from evaluator.review import ReviewRouter
from evaluator.settings import Settings
from evaluator.sinks.otel import EVENT_NAME, OTelSink
from evaluator.sinks.outbox import SinkRelay
from evaluator.sinks.sql import SQLStore

TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_A = "00f067aa0ba902b7"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"


def entries(traces: list[Trace]) -> list[dict[str, object]]:
    decision = SampleDecision(judge=False, rate=0.1).model_dump()
    return [
        {"id": f"{1763630000000 + i}-0", "trace": t.model_dump_json(), "decision": decision}
        for i, t in enumerate(traces)
    ]


def traces() -> list[Trace]:
    return [
        make_trace(1, trace_id=TRACE_A, span_id=SPAN_A, finish_reason="length"),
        # The evaluated span is unknown; the completion's response id is.
        make_trace(2, trace_id=TRACE_B, metadata={"response_id": "chatcmpl-2"}),
        make_trace(3),  # "t-000003" is no W3C trace id: cannot be placed, counted as skipped
    ]


def score_and_relay(sink: OTelSink, sqlite_url: str, client: redis.Redis) -> SinkRelay:
    store = SQLStore(sqlite_url)
    ctx = ScoringContext(
        heuristic_evaluators(Settings()), store, ReviewRouter(), client, sinks=[sink]
    )
    score_batch(entries(traces()), ctx)
    relay = SinkRelay(store, [sink], backoff_base_s=0.01, backoff_max_s=0.05)
    wait_for(lambda: relay.drain_once() == 0 and not relay.backlog()["otel"][0], 20, "drained")
    return relay


def test_events_in_the_apps_trace_in_memory(sqlite_url: str, redis_client: redis.Redis) -> None:
    skipped_before = (
        REGISTRY.get_sample_value(
            "evalfleet_sink_skipped_total", {"sink": "otel", "reason": "not a W3C trace id"}
        )
        or 0.0
    )
    spans, logs = InMemorySpanExporter(), InMemoryLogRecordExporter()
    relay = score_and_relay(OTelSink(spans, logs), sqlite_url, redis_client)
    finished = spans.get_finished_spans()
    assert len(finished) == 14  # 7 heuristics x 2 placeable traces
    assert (
        REGISTRY.get_sample_value(
            "evalfleet_sink_skipped_total", {"sink": "otel", "reason": "not a W3C trace id"}
        )
        == skipped_before + 7
    )
    by_trace = {f"{s.context.trace_id:032x}" for s in finished}
    assert by_trace == {TRACE_A, TRACE_B}
    truncated = next(
        s
        for s in finished
        if s.attributes["gen_ai.evaluation.name"] == "finish_reason"
        and f"{s.context.trace_id:032x}" == TRACE_A
    )
    assert truncated.name == "evaluate finish_reason"
    assert truncated.parent is not None and f"{truncated.parent.span_id:016x}" == SPAN_A
    assert truncated.attributes["gen_ai.evaluation.score.label"] == "length"  # the score's label
    passed = next(s for s in finished if s.attributes["gen_ai.evaluation.name"] == "refusal")
    assert passed.attributes["gen_ai.evaluation.score.label"] == "pass"  # else pass/fail
    assert (
        truncated.attributes["gen_ai.evaluation.explanation"]
        == "answer truncated at the token limit"
    )
    assert [e.name for e in truncated.events] == [EVENT_NAME]
    assert f"{truncated.context.span_id:016x}" == truncated.attributes["evalfleet.score.id"][:16]
    orphan = next(s for s in finished if f"{s.context.trace_id:032x}" == TRACE_B)
    assert orphan.parent is None  # a second root in the app's trace

    records = [r.log_record for r in logs.get_finished_logs()]
    assert len(records) == 14 and {r.event_name for r in records} == {EVENT_NAME}
    placed = [r for r in records if f"{r.trace_id:032x}" == TRACE_A]
    assert {f"{r.span_id:016x}" for r in placed} == {SPAN_A}
    assert all("gen_ai.evaluation.name" in r.attributes for r in records)
    unplaced = [r for r in records if f"{r.trace_id:032x}" == TRACE_B]
    assert {r.span_id for r in unplaced} == {0}  # no made-up span id
    assert {r.attributes["gen_ai.response.id"] for r in unplaced} == {"chatcmpl-2"}
    relay.close()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OTLPReceiver]:
    server = OTLPReceiver()
    server.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", server.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    yield server
    server.stop()


def test_events_over_otlp_http(
    sqlite_url: str, redis_client: redis.Redis, receiver: OTLPReceiver
) -> None:
    sink = OTelSink.otlp(["spans", "logs"])
    relay = score_and_relay(sink, sqlite_url, redis_client)
    assert len(receiver.spans) == 14 and len(receiver.logs) == 14
    assert {s.trace_id.hex() for s in receiver.spans} == {TRACE_A, TRACE_B}
    child = [s for s in receiver.spans if s.trace_id.hex() == TRACE_A]
    assert {s.parent_span_id.hex() for s in child} == {SPAN_A}
    attrs = attributes(child[0].attributes)
    assert {"gen_ai.evaluation.name", "gen_ai.evaluation.score.label"} <= set(attrs)
    assert child[0].events[0].name == EVENT_NAME
    log = next(r for r in receiver.logs if r.trace_id.hex() == TRACE_A)
    assert log.event_name == EVENT_NAME and log.span_id.hex() == SPAN_A
    unplaced = [r for r in receiver.logs if r.trace_id.hex() == TRACE_B]
    assert {r.span_id for r in unplaced} == {b""}  # no span id on the wire
    assert {attributes(r.attributes)["gen_ai.response.id"] for r in unplaced} == {"chatcmpl-2"}
    assert attributes(log.attributes)["gen_ai.evaluation.name"]
    relay.close()


def test_receiver_down_means_retry_not_loss(
    sqlite_url: str, redis_client: redis.Redis, receiver: OTLPReceiver
) -> None:
    receiver.stop()
    sink = OTelSink.otlp(["spans"])
    store = SQLStore(sqlite_url)
    ctx = ScoringContext(
        heuristic_evaluators(Settings()), store, ReviewRouter(), redis_client, sinks=[sink]
    )
    score_batch(entries(traces()), ctx)
    relay = SinkRelay(store, [sink], backoff_base_s=0.01, backoff_max_s=0.05)
    assert relay.drain_once() == 14
    assert relay.backlog()["otel"][0] == 14 and relay.counts["otel"].retried == 14
    receiver.start()
    wait_for(lambda: relay.drain_once() == 0 and not relay.backlog()["otel"][0], 20, "drained")
    assert len(receiver.spans) == 14
    relay.close()
