"""``evalfleet otlp-receiver``: an OTLP/HTTP endpoint (``POST /v1/traces``, and ``POST /v1/logs``
for log-based GenAI events carrying message content) that turns what any OpenTelemetry SDK or
Collector exports into Traces on ``evalfleet:traces``.

Protobuf and JSON encodings, gzip, an optional bearer token, a body size limit. Answers follow
the OTLP/HTTP spec: 200 with an ``ExportTraceServiceResponse`` (``partial_success`` counts spans
refused for missing ids or full traces), 400 for a body that cannot be decoded (with the reason),
413 too large, 415 unknown content type, 401 bad token, and 503 with ``Retry-After`` while the
fleet is behind (too many unread stream entries or pending traces) or Redis is down —
exporters retry those. A Redis outage never stops the receiver: ``/readyz`` answers 503 (naming
it) until Redis is back, one log line says it went and one that it returned (evaluator.health).
Completion is decided by ``SpanAssembler`` (see ``evaluator.ingest.assembly``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import threading
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import redis
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from evaluator.constants import SAMPLER_GROUP, TRACES_STREAM
from evaluator.health import REDIS, Backoff, Prober, Readiness, outage_of, probing
from evaluator.ingest.assembly import Held, SpanAssembler
from evaluator.ingest.otel import Span, json_any_value, json_attributes, parse_otlp_spans
from evaluator.ingest.otlp_proto import encode_event, pb_attributes, pb_value, resource_prefix
from evaluator.settings import Settings
from evaluator.sinks import metrics
from evaluator.streams import group_info

PROTOBUF, JSON = "application/x-protobuf", "application/json"
_HEX = frozenset("0123456789abcdef")


class BadRequest(ValueError):
    """A body that cannot be decoded; answered 400 with this message."""


def protobuf_groups(body: bytes) -> tuple[dict[str, Held], int]:
    """The spans of an ExportTraceServiceRequest grouped by trace, still as protobuf; and how
    many were refused for bad ids."""
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        raise BadRequest(f"not an OTLP ExportTraceServiceRequest (protobuf): {exc}") from None
    groups: dict[str, Held] = {}
    refused = 0
    for resource_spans in request.resource_spans:
        prefix = resource_prefix(resource_spans.resource)
        for scope_spans in resource_spans.scope_spans:
            for raw in scope_spans.spans:
                if len(raw.trace_id) != 16 or len(raw.span_id) != 8 or not any(raw.trace_id):
                    refused += 1
                    continue
                trace_id = raw.trace_id.hex()
                has_root, entries = groups.get(trace_id, (False, []))
                entries.append(prefix + raw.SerializeToString())
                groups[trace_id] = (has_root or not raw.parent_span_id, entries)
    return groups, refused


def _event_attributes(attributes: dict[str, Any], body: Any) -> dict[str, Any]:
    """A log record's attributes with its body merged in (the GenAI events carry the message
    in the body: ``{"content": ...}``, ``{"message": {...}, "finish_reason": ...}``)."""
    if isinstance(body, dict):
        return {**attributes, **body}
    if body not in (None, ""):
        return {**attributes, "content": body}
    return attributes


def protobuf_log_groups(body: bytes) -> tuple[dict[str, Held], int]:
    """GenAI events of an ExportLogsServiceRequest grouped by trace (to be attached to their
    spans), and how many records were ignored: no trace context, or not a ``gen_ai.`` event."""
    try:
        request = ExportLogsServiceRequest.FromString(body)
    except DecodeError as exc:
        raise BadRequest(f"not an OTLP ExportLogsServiceRequest (protobuf): {exc}") from None
    groups: dict[str, Held] = {}
    ignored = 0
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attributes = pb_attributes(record.attributes)
                name = record.event_name or str(attributes.get("event.name", ""))
                traced = len(record.trace_id) == 16 and len(record.span_id) == 8
                if not name.startswith("gen_ai.") or not traced or not any(record.trace_id):
                    ignored += 1
                    continue
                merged = _event_attributes(attributes, pb_value(record.body))
                entry = encode_event(record.span_id.hex(), name, merged)
                groups.setdefault(record.trace_id.hex(), (False, []))[1].append(entry)
    return groups, ignored


def log_groups_from_json(body: bytes) -> tuple[dict[str, Held], int]:
    """The same for an OTLP/JSON logs export (hex ids)."""
    try:
        document = json.loads(body)
        groups: dict[str, Held] = {}
        ignored = 0
        for resource_logs in document.get("resourceLogs", []):
            for scope_logs in resource_logs.get("scopeLogs", []):
                for record in scope_logs.get("logRecords", []):
                    attributes = json_attributes(record.get("attributes", []))
                    name = record.get("eventName") or str(attributes.get("event.name", ""))
                    trace_id, span_id = record.get("traceId"), record.get("spanId")
                    traced = _valid_id(trace_id, 32) and _valid_id(span_id, 16)
                    if not name.startswith("gen_ai.") or not traced:
                        ignored += 1
                        continue
                    body_value = json_any_value(record.get("body", {}))
                    merged = _event_attributes(attributes, body_value)
                    entry = encode_event(span_id.lower(), name, merged)
                    groups.setdefault(trace_id.lower(), (False, []))[1].append(entry)
        return groups, ignored
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        raise BadRequest(f"not an OTLP/JSON logs export: {type(exc).__name__}: {exc}") from None


def _valid_id(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value.lower()) <= _HEX


def spans_from_json(body: bytes) -> tuple[list[Span], int]:
    """Spans of an OTLP/JSON export (hex ids), and how many were refused for bad ids."""
    try:
        document = json.loads(body)
        refused = 0
        for resource_spans in document.get("resourceSpans", []):
            for scope_spans in resource_spans.get("scopeSpans", []):
                raw_spans = scope_spans.get("spans", [])
                kept = [
                    raw
                    for raw in raw_spans
                    if _valid_id(raw.get("traceId"), 32) and _valid_id(raw.get("spanId"), 16)
                ]
                refused += len(raw_spans) - len(kept)
                scope_spans["spans"] = kept
        return parse_otlp_spans(document), refused
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        raise BadRequest(f"not an OTLP/JSON trace export: {type(exc).__name__}: {exc}") from None


def _gunzip(body: bytes, limit: int) -> bytes:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"Content-Encoding gzip, but the body is not gzip: {exc}") from None
    if len(data) > limit:
        raise OverflowError
    return data


class Receiver:
    """The receiver's state: settings, Redis, the assembler, and a cached back-pressure check."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.assembler = SpanAssembler(client, settings)
        self._busy_until = 0.0
        self._checked_at = 0.0
        self.readiness = Readiness("otlp-receiver")
        self.readiness.expect(REDIS)  # unready until the first check (at start-up)

    def unavailable(self, exc: Exception) -> Response:
        """Redis is away: 503 with Retry-After (the exporter keeps the spans and retries)."""
        self.readiness.down(REDIS, exc)
        return _error(503, "Redis unavailable; retry later", "unavailable", {"Retry-After": "5"})

    def run_flusher(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """The in-process flusher (``flush=True``): publish due traces until ``stop``, waiting
        Redis outages out with backoff."""
        backoff = Backoff(max_s=self.settings.outage_backoff_max_s)
        while not stop.is_set():
            try:
                counts = self.assembler.flush()
            except redis.RedisError as exc:
                self.readiness.down(REDIS, exc)
                stop.wait(backoff.next())
                continue
            backoff.reset()
            self.readiness.up(REDIS)
            if not counts.published and not counts.dropped:
                stop.wait(interval_s)

    def behind(self) -> bool:
        """True while the fleet cannot keep up; checked at most every 0.5 s."""
        now = time.monotonic()
        if now - self._checked_at > 0.5:
            self._checked_at = now
            lag = group_info(self.client, TRACES_STREAM, SAMPLER_GROUP)["lag"]
            over = lag > self.settings.stream_maxlen // 2
            over |= self.assembler.pending() >= self.settings.otlp_max_pending_traces
            self._busy_until = now + 0.5 if over else 0.0
        return now < self._busy_until

    def authorised(self, request: Request) -> bool:
        token = self.settings.otlp_token
        if token is None:
            return True
        header = request.headers.get("authorization", "")
        given = header.removeprefix("Bearer ").strip()
        return header.startswith("Bearer ") and hmac.compare_digest(
            given.encode(), token.get_secret_value().encode()
        )


def _response(content_type: str, refused: int, reason: str, logs: bool = False) -> Response:
    answer: ExportTraceServiceResponse | ExportLogsServiceResponse
    if logs:
        answer = ExportLogsServiceResponse()
        if refused:
            answer.partial_success.rejected_log_records = refused
            answer.partial_success.error_message = reason
    else:
        answer = ExportTraceServiceResponse()
        if refused:
            answer.partial_success.rejected_spans = refused
            answer.partial_success.error_message = reason
    if content_type == JSON:
        body: dict[str, Any] = {}
        if refused:
            rejected = "rejectedLogRecords" if logs else "rejectedSpans"
            body["partialSuccess"] = {rejected: str(refused), "errorMessage": reason}
        return Response(json.dumps(body), media_type=JSON)
    return Response(answer.SerializeToString(), media_type=PROTOBUF)


def _error(
    status: int, reason: str, outcome: str, headers: dict[str, str] | None = None
) -> Response:
    metrics.OTLP_REQUESTS.labels(outcome).inc()
    return Response(reason + "\n", status_code=status, media_type="text/plain", headers=headers)


def _backpressure() -> Response:
    return _error(503, "evalfleet is behind; retry later", "backpressure", {"Retry-After": "5"})


def create_receiver_app(client: redis.Redis, settings: Settings, flush: bool = True) -> Starlette:
    receiver = Receiver(client, settings)
    limit = settings.otlp_max_body_bytes

    async def read(request: Request) -> tuple[str, bytes] | Response:
        """The request's content type and (decompressed) body, or the error answer."""
        if not receiver.authorised(request):
            return _error(401, "a valid bearer token is required", "unauthorised")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in (PROTOBUF, JSON):
            return _error(415, f"use {PROTOBUF} or {JSON}, not {content_type!r}", "bad_type")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return _error(413, f"body over {limit} bytes", "too_large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _error(413, f"body over {limit} bytes", "too_large")
        try:
            if request.headers.get("content-encoding", "").lower() == "gzip":
                body = _gunzip(body, limit)
        except OverflowError:
            return _error(413, f"decompressed body over {limit} bytes", "too_large")
        except BadRequest as exc:
            return _error(400, str(exc), "malformed")
        return content_type, body

    async def export(request: Request) -> Response:
        got = await read(request)
        if isinstance(got, Response):
            return got
        content_type, body = got
        try:
            if content_type == PROTOBUF:
                groups, refused = protobuf_groups(body)
            else:
                spans, refused = spans_from_json(body)
        except BadRequest as exc:
            return _error(400, str(exc), "malformed")
        try:
            if await run_in_threadpool(receiver.behind):
                return _backpressure()
            if content_type == PROTOBUF:
                full = await run_in_threadpool(receiver.assembler.add_encoded, groups)
            else:
                full = await run_in_threadpool(receiver.assembler.add, spans)
        except redis.RedisError as exc:
            if outage_of(exc) is None:
                raise
            return receiver.unavailable(exc)
        receiver.readiness.up(REDIS)
        metrics.OTLP_SPANS.labels("refused_bad_id").inc(refused)
        metrics.OTLP_REQUESTS.labels("accepted").inc()
        reasons = []
        if refused:
            reasons.append(f"{refused} spans without a valid trace or span id")
        if full:
            reasons.append(f"{full} spans over the per-trace limit")
        return _response(content_type, refused + full, "; ".join(reasons))

    async def export_logs(request: Request) -> Response:
        """Log-based GenAI events (message content): held with their trace's spans. Other
        log records are accepted and not kept (a Collector may send every log here)."""
        got = await read(request)
        if isinstance(got, Response):
            return got
        content_type, body = got
        try:
            decode = protobuf_log_groups if content_type == PROTOBUF else log_groups_from_json
            groups, ignored = decode(body)
        except BadRequest as exc:
            return _error(400, str(exc), "malformed")
        try:
            if await run_in_threadpool(receiver.behind):
                return _backpressure()
            full = await run_in_threadpool(receiver.assembler.add_encoded, groups) if groups else 0
        except redis.RedisError as exc:
            if outage_of(exc) is None:
                raise
            return receiver.unavailable(exc)
        receiver.readiness.up(REDIS)
        kept = sum(len(entries) for _, entries in groups.values()) - full
        metrics.OTLP_LOG_RECORDS.labels("genai_event").inc(kept)
        metrics.OTLP_LOG_RECORDS.labels("ignored").inc(ignored)
        metrics.OTLP_LOG_RECORDS.labels("refused_trace_full").inc(full)
        metrics.OTLP_REQUESTS.labels("accepted").inc()
        reason = f"{full} events over the per-trace limit" if full else ""
        return _response(content_type, full, reason, logs=True)

    async def healthz(_: Request) -> Response:
        """Liveness: the receiver runs (it waits Redis outages out; see /readyz)."""
        return Response("ok\n", media_type="text/plain")

    async def readyz(_: Request) -> Response:
        """200 while Redis answers, else 503 saying since when and why (JSON)."""
        status, body = receiver.readiness.response()
        return Response(body, status_code=status, media_type="application/json")

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = threading.Thread(target=receiver.run_flusher, args=(stop,), daemon=True)
        if flush:
            thread.start()
        prober = Prober(receiver.readiness, {REDIS: client.ping}, settings.health_probe_interval_s)
        with probing(prober):
            yield
        stop.set()
        if flush:
            thread.join(10)

    app = Starlette(
        routes=[
            Route("/v1/traces", export, methods=["POST"]),
            Route("/v1/logs", export_logs, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", prometheus),
        ],
        lifespan=lifespan,
    )
    app.state.receiver = receiver
    return app


__all__ = [
    "create_receiver_app",
    "log_groups_from_json",
    "protobuf_groups",
    "protobuf_log_groups",
    "spans_from_json",
]
