"""OpenTelemetry sink: each evaluation as a ``gen_ai.evaluation.result`` event in the app's trace.

Follows the GenAI semantic conventions (development status): the event carries
``gen_ai.evaluation.name``, ``gen_ai.evaluation.score.value``, ``gen_ai.evaluation.score.label``,
``gen_ai.evaluation.explanation``, ``gen_ai.response.id`` when the trace names the completion
(``metadata.response_id``, which the OTLP receiver fills) and ``error.type`` when the evaluation
failed, and is parented to the span that was evaluated (the trace's ``span_id``); when that span
is unknown the log record carries the app's trace id and no span id, and the response id is how
the event names what it evaluated. Two signals, both exported over OTLP:

- ``logs``: the event as the conventions define it (a log record with ``event_name``), with the
  app's trace and span ids as its context, for Loki/Elastic/Azure-style backends;
- ``spans``: a short ``evaluate <evaluator>`` span, child of the evaluated span, carrying the same
  attributes and the event as a span event, so Jaeger and Tempo show the score beside the app's
  spans. Its span id is derived from the score id (a re-sent score is the same span).

Every record says its level (``evalfleet.level``: turn, trajectory, session) and, when the trace
belongs to a conversation, the app's session id as ``gen_ai.conversation.id`` (the GenAI
registry's attribute for a conversation, session or thread; OpenInference's ``session.id``). A
session score has no trace of its own: it is placed in the trace of the session's last turn
(``metadata.turn_ids`` of the session's Trace, sessions/conversation.py), as a root span and a
log record without a span id, with ``evalfleet.session.version`` saying which turns it judged;
querying ``gen_ai.conversation.id`` finds it beside the turns' scores.

Only traces whose id is a W3C trace id (32 hex digits, what OTel-instrumented apps publish) can
be placed; others are counted as skipped. The exporters read the standard
``OTEL_EXPORTER_OTLP_*`` variables; the relay sends synchronously and counts a batch as delivered
only when the exporter reports success.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

from evaluator.models import Level, Score, ScoreStatus, Trace, display_name
from evaluator.sinks.base import SinkUnavailable

EVENT_NAME = "gen_ai.evaluation.result"
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
_MAX_EXPLANATION_CHARS = 2000


class _ChosenIds(IdGenerator):
    """Hands out the ids the sink picks for the next span (random when none is set)."""

    def __init__(self) -> None:
        self.span_id: int | None = None
        self.trace_id: int | None = None
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        return self.span_id or self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        return self.trace_id or self._random.generate_trace_id()


def _nanos(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1e9)


def _label(score: Score) -> str | None:
    if score.label is not None:
        return score.label
    if score.status is ScoreStatus.ERROR:
        return "error"
    if score.passed is not None:
        return "pass" if score.passed else "fail"
    return None


def _placement(score: Score, trace: Trace) -> tuple[str, str] | str:
    """(W3C trace id, evaluated span id or "") the record goes in, or why it cannot be placed."""
    if score.level is Level.SESSION:
        turns = trace.metadata.get("turn_ids")
        last = turns[-1] if isinstance(turns, list) and turns else None
        if not isinstance(last, str) or not _TRACE_ID.match(last.lower()):
            return "not a W3C trace id"
        return last.lower(), ""
    trace_id = trace.trace_id.lower()
    if not _TRACE_ID.match(trace_id):
        return "not a W3C trace id"
    return trace_id, (trace.span_id or "").lower()


class OTelSink:
    name = "otel"

    def __init__(
        self,
        span_exporter: SpanExporter | None,
        log_exporter: LogRecordExporter | None,
        service_name: str = "evalfleet",
    ) -> None:
        if span_exporter is None and log_exporter is None:
            raise ValueError("the OpenTelemetry sink needs at least one of spans and logs")
        self.span_exporter = span_exporter
        self.log_exporter = log_exporter
        resource = Resource.create({"service.name": service_name})
        # Records are built by the SDK into memory, then exported in one synchronous call whose
        # result decides delivered vs. retry (a BatchProcessor would drop them silently).
        self._ids = _ChosenIds()
        self._spans = InMemorySpanExporter()
        self._tracer_provider = TracerProvider(resource=resource, id_generator=self._ids)
        self._tracer_provider.add_span_processor(SimpleSpanProcessor(self._spans))
        self._tracer = self._tracer_provider.get_tracer("evalfleet")
        self._logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
        self._logger_provider = LoggerProvider(resource=resource)
        self._logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self._logs))
        self._logger = self._logger_provider.get_logger("evalfleet")

    @classmethod
    def otlp(cls, signals: list[str], service_name: str = "evalfleet") -> OTelSink:
        """Exporters over OTLP/HTTP, configured by the standard OTEL_EXPORTER_OTLP_* variables."""
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        unknown = set(signals) - {"spans", "logs"}
        if unknown:
            raise ValueError(f"unknown OpenTelemetry signals {sorted(unknown)}; use spans, logs")
        return cls(
            OTLPSpanExporter() if "spans" in signals else None,
            OTLPLogExporter() if "logs" in signals else None,
            service_name,
        )

    def payload(self, score: Score, trace: Trace) -> dict[str, Any] | str:
        placed = _placement(score, trace)
        if isinstance(placed, str):
            return placed
        trace_id, span_id = placed
        session = score.level is Level.SESSION
        attributes: dict[str, Any] = {
            "gen_ai.evaluation.name": display_name(score.evaluator, score.name)
        }
        if score.value is not None:
            attributes["gen_ai.evaluation.score.value"] = score.value
        if (label := _label(score)) is not None:
            attributes["gen_ai.evaluation.score.label"] = label
        if score.reason:
            attributes["gen_ai.evaluation.explanation"] = score.reason[:_MAX_EXPLANATION_CHARS]
        if score.status is ScoreStatus.ERROR:
            attributes["error.type"] = "evaluation_error"
        response_id = trace.metadata.get("response_id")
        if isinstance(response_id, str) and response_id:
            attributes["gen_ai.response.id"] = response_id
        if trace.session_id:
            attributes["gen_ai.conversation.id"] = trace.session_id
        attributes["evalfleet.evaluator"] = score.evaluator
        attributes["evalfleet.evaluator.version"] = score.evaluator_version
        attributes["evalfleet.score.id"] = score.id
        attributes["evalfleet.level"] = Level.SESSION.value if session else score.level.value
        version = score.metadata.get("session_version") if session else None
        if isinstance(version, str):
            attributes["evalfleet.session.version"] = version
        return {
            "trace_id": trace_id,
            "span_id": span_id if _SPAN_ID.match(span_id) else None,
            "evaluator": score.evaluator,
            "attributes": attributes,
        }

    def _emit(self, payload: dict[str, Any]) -> None:
        trace_id = int(payload["trace_id"], 16)
        evaluated = int(payload["span_id"], 16) if payload["span_id"] else None
        attributes = payload["attributes"]
        at = _nanos(payload["timestamp"])
        own_span_id = int(attributes["evalfleet.score.id"][:16], 16) or 1
        if self.span_exporter is not None:
            if evaluated is not None:
                parent = trace_api.NonRecordingSpan(
                    trace_api.SpanContext(
                        trace_id, evaluated, is_remote=True, trace_flags=trace_api.TraceFlags(1)
                    )
                )
                context = trace_api.set_span_in_context(parent, Context())
            else:  # the evaluated span is unknown: a second root in the app's trace
                context = Context()
                self._ids.trace_id = trace_id
            self._ids.span_id = own_span_id
            try:
                span = self._tracer.start_span(
                    f"evaluate {payload['evaluator']}",
                    context=context,
                    attributes=attributes,
                    start_time=at,
                )
            finally:
                self._ids.span_id = self._ids.trace_id = None
            span.add_event(EVENT_NAME, attributes=attributes, timestamp=at)
            span.end(end_time=at)
        if self.log_exporter is not None:
            # Unknown evaluated span: no span id (never our own, which is no GenAI operation);
            # gen_ai.response.id, when known, names the completion instead.
            subject = trace_api.NonRecordingSpan(
                trace_api.SpanContext(
                    trace_id,
                    evaluated or trace_api.INVALID_SPAN_ID,
                    is_remote=True,
                    trace_flags=trace_api.TraceFlags(1),
                )
            )
            self._logger.emit(
                LogRecord(
                    timestamp=at,
                    context=trace_api.set_span_in_context(subject, Context()),
                    severity_number=SeverityNumber.INFO,
                    event_name=EVENT_NAME,
                    attributes=attributes,
                )
            )

    def deliver(self, payloads: dict[str, dict[str, Any]]) -> dict[str, str]:
        self._spans.clear()
        self._logs.clear()
        for payload in payloads.values():
            self._emit(payload)
        if self.span_exporter is not None:
            spans = self._spans.get_finished_spans()
            if self.span_exporter.export(spans) is not SpanExportResult.SUCCESS:
                raise SinkUnavailable(f"OTLP span export failed ({len(spans)} spans)")
        if self.log_exporter is not None:
            # Span and log exports are each idempotent in effect for the relay: a failed log
            # export retries the batch, re-sending spans with the same ids.
            records = self._logs.get_finished_logs()
            if self.log_exporter.export(records) is not LogRecordExportResult.SUCCESS:
                raise SinkUnavailable(f"OTLP log export failed ({len(records)} records)")
        return {}

    def close(self) -> None:
        for exporter in (self.span_exporter, self.log_exporter):
            if exporter is not None:
                exporter.shutdown()
        self._tracer_provider.shutdown()
        self._logger_provider.shutdown()
