"""``evalfleet otlp-receiver``: an OTLP/HTTP endpoint (``POST /v1/traces``, and ``POST /v1/logs``
for log-based GenAI events carrying message content) that turns what any OpenTelemetry SDK or
Collector exports into Traces on ``evalfleet:traces``.

Protobuf and JSON encodings; ``Content-Encoding`` gzip, deflate (zlib-wrapped or raw) and zstd
(with the ``zstandard`` package); an optional bearer token; a body size limit that also bounds
decompression (a compressed body is never inflated past the limit + 1 byte). Answers follow the
OTLP/HTTP spec: 200 with an ``ExportTraceServiceResponse`` (``partial_success`` counts spans
refused for invalid ids or full traces). With a token set, every route needs it (401) except
the health probes /healthz and /readyz (Kubernetes probes carry none): /metrics too, which
Prometheus scrapes without a token on ``EVALFLEET_METRICS_PORT``, a port of its own. There is
no OpenAPI document or /docs (OTLP is specified elsewhere). Every 4xx/5xx of the export routes
carries a ``google.rpc.Status`` (code, message; a ``BadRequest`` detail on 400) in the
request's encoding, protobuf or JSON: 400 for a body that cannot be decoded, 401 bad token,
413 too large, 415 unknown content type or encoding — none of which senders retry — and 503
with ``Retry-After`` while the fleet is behind (too many unread stream entries or pending
traces) or Redis is down, which exporters retry. Hex ids in
OTLP/JSON are case-insensitive and kept lowercase, as the protobuf path gives them, so one trace
may arrive in both encodings. A Redis outage never stops the receiver: ``/readyz`` answers 503
(naming it) until Redis is back, one log line says it went and one that it returned
(evaluator.ops.health). Completion is decided by ``SpanAssembler`` (see
``evaluator.ingest.assembly``).
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
from google.protobuf import json_format
from google.protobuf.message import DecodeError

# googleapis-common-protos (a dependency of the OTLP exporter) ships stubs but no py.typed marker.
from google.rpc import code_pb2, error_details_pb2, status_pb2
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
from evaluator.ingest.assembly import Held, SpanAssembler
from evaluator.ingest.otel import json_any_value, json_attributes, parse_otlp_spans
from evaluator.ingest.otlp_proto import encode_event, pb_attributes, pb_value, resource_prefix
from evaluator.ingest.spans import Span
from evaluator.ops import metrics
from evaluator.ops.health import REDIS, Backoff, Prober, Readiness, outage_of, probing, serve
from evaluator.settings import Settings
from evaluator.streams import group_info

try:  # zstd is optional: Python 3.11 has no zstd in its standard library
    import zstandard
except ImportError:
    zstandard = None  # type: ignore[assignment]

PROTOBUF, JSON = "application/x-protobuf", "application/json"
# Decompressed output per step: no more than this is held beyond the body limit.
_CHUNK = 256 * 1024
# zstd encoders' default window (Go's klauspost/compress in the Collector, zstd -19): a body under
# the limit may still declare it, so a lower limit does not cap the window below this.
_ZSTD_WINDOW = 8 * 1024 * 1024
_HEX = frozenset("0123456789abcdef")
# The google.rpc.Code in each error's Status. OTLP clients act on the HTTP status alone (429, 502,
# 503, 504 retried; anything else not); the code is for their logs. 413 is what gRPC answers for
# an oversized message, 415 what it answers for an unsupported compression.
_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    413: code_pb2.RESOURCE_EXHAUSTED,
    415: code_pb2.UNIMPLEMENTED,
    503: code_pb2.UNAVAILABLE,
}


class BadRequest(ValueError):
    """A body that cannot be decoded; answered 400 with this message."""


class Unsupported(ValueError):
    """A content encoding the receiver cannot decode; answered 415 with this message."""


def protobuf_groups(body: bytes | bytearray) -> tuple[dict[str, Held], int]:
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
                if not _valid_pb_ids(raw.trace_id, raw.span_id, raw.parent_span_id):
                    refused += 1
                    continue
                trace_id = raw.trace_id.hex()
                has_root, entries = groups.get(trace_id, (False, []))
                entries.append(prefix + raw.SerializeToString())
                groups[trace_id] = (has_root or not any(raw.parent_span_id), entries)
    return groups, refused


def _valid_pb_ids(trace_id: bytes, span_id: bytes, parent_span_id: bytes = b"") -> bool:
    """16-byte trace id and 8-byte span id, neither all zeros (invalid in OTLP); the parent is
    empty or 8 bytes (all zeros: no parent, as the Collector reads it)."""
    ids_ok = len(trace_id) == 16 and len(span_id) == 8 and any(trace_id) and any(span_id)
    return ids_ok and len(parent_span_id) in (0, 8)


def _event_attributes(attributes: dict[str, Any], body: Any) -> dict[str, Any]:
    """A log record's attributes with its body merged in (the GenAI events carry the message
    in the body: ``{"content": ...}``, ``{"message": {...}, "finish_reason": ...}``)."""
    if isinstance(body, dict):
        return {**attributes, **body}
    if body not in (None, ""):
        return {**attributes, "content": body}
    return attributes


def protobuf_log_groups(body: bytes | bytearray) -> tuple[dict[str, Held], int]:
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
                traced = _valid_pb_ids(record.trace_id, record.span_id)
                if not name.startswith("gen_ai.") or not traced:
                    ignored += 1
                    continue
                merged = _event_attributes(attributes, pb_value(record.body))
                entry = encode_event(record.span_id.hex(), name, merged)
                groups.setdefault(record.trace_id.hex(), (False, []))[1].append(entry)
    return groups, ignored


def log_groups_from_json(body: bytes | bytearray) -> tuple[dict[str, Held], int]:
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
    """A hex id of ``length`` digits in either case, not all zeros (invalid in OTLP)."""
    return (
        isinstance(value, str)
        and len(value) == length
        and set(value.lower()) <= _HEX
        and value.strip("0") != ""
    )


def _valid_json_span(raw: Any) -> bool:
    # A parent that is absent, empty or all zeros means none (the Collector reads it so).
    parent = raw.get("parentSpanId")
    return (
        _valid_id(raw.get("traceId"), 32)
        and _valid_id(raw.get("spanId"), 16)
        and (parent in (None, "", "0" * 16) or _valid_id(parent, 16))
    )


def spans_from_json(body: bytes | bytearray) -> tuple[list[Span], int]:
    """Spans of an OTLP/JSON export (hex ids, lowercased by ``parse_otlp_spans``), and how many
    were refused for bad ids."""
    try:
        document = json.loads(body)
        refused = 0
        for resource_spans in document.get("resourceSpans", []):
            for scope_spans in resource_spans.get("scopeSpans", []):
                raw_spans = scope_spans.get("spans", [])
                kept = [raw for raw in raw_spans if _valid_json_span(raw)]
                refused += len(raw_spans) - len(kept)
                scope_spans["spans"] = kept
        return parse_otlp_spans(document), refused
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        raise BadRequest(f"not an OTLP/JSON trace export: {type(exc).__name__}: {exc}") from None


def _inflate(body: bytes | bytearray, limit: int, wbits: int, encoding: str) -> bytearray:
    """gzip/zlib/raw deflate (by ``wbits``), at most ``limit`` + 1 bytes of output, produced in
    chunks (one ``decompress`` call holds its output twice while it assembles it)."""
    decompressor = zlib.decompressobj(wbits)
    data = bytearray()
    pending = body
    try:
        while not decompressor.eof and len(data) <= limit:
            chunk = decompressor.decompress(pending, min(_CHUNK, limit + 1 - len(data)))
            pending = decompressor.unconsumed_tail
            if not chunk and not pending and not decompressor.eof:
                raise BadRequest(f"Content-Encoding {encoding}, but the body is truncated")
            data += chunk
    except zlib.error as exc:
        reason = f"Content-Encoding {encoding}, but the body is not {encoding}: {exc}"
        raise BadRequest(reason) from None
    if len(data) > limit:
        raise OverflowError
    return data


def _zlib_wrapped(body: bytes | bytearray) -> bool:
    # An RFC 1950 header: method 8 (deflate), a window of at most 32 KiB, and its check value.
    # Raw deflate does not start so: a stored block's unused header bits are zero.
    return (
        len(body) >= 2
        and body[0] & 0x0F == 8
        and body[0] >> 4 <= 7
        and ((body[0] << 8 | body[1]) % 31 == 0)
    )


def _unzstd(body: bytes | bytearray, limit: int) -> bytearray:
    """zstd frames, at most ``limit`` + 1 bytes of output; the decoder's window (its buffer) is
    capped too, at the limit or 8 MiB, whichever is larger."""
    if zstandard is None:
        raise Unsupported(
            "Content-Encoding zstd needs the zstandard package, which this receiver lacks; "
            "use gzip or deflate"
        )
    data, max_window = bytearray(), max(limit, _ZSTD_WINDOW)
    try:
        window = zstandard.get_frame_parameters(body).window_size
        if window > max_window:
            raise OverflowError(f"zstd window of {window} bytes, over the {max_window} allowed")
        decompressor = zstandard.ZstdDecompressor(max_window_size=max_window)
        reader = decompressor.stream_reader(body, read_across_frames=True)
        while len(data) <= limit and (chunk := reader.read(min(_CHUNK, limit + 1 - len(data)))):
            data += chunk
    except zstandard.ZstdError as exc:
        raise BadRequest(f"Content-Encoding zstd, but the body is not zstd: {exc}") from None
    if len(data) > limit:
        raise OverflowError
    if not _whole_zstd_frames(body):  # the reader stops silently inside a truncated frame
        raise BadRequest("Content-Encoding zstd, but the body is truncated")
    return data


def _whole_zstd_frames(body: bytes | bytearray) -> bool:
    """Whether ``body`` ends where its last zstd frame does (RFC 8878: frame header, blocks
    until the last one, optional checksum; skippable frames by their length)."""
    at = 0
    while at < len(body):
        if body[at] & 0xF0 == 0x50 and body[at + 1 : at + 4] == b"\x2a\x4d\x18":  # skippable
            at += 8 + int.from_bytes(body[at + 4 : at + 8], "little")
            continue
        if at + 5 > len(body):
            return False
        descriptor = body[at + 4]
        single_segment = descriptor >> 5 & 1
        content_size = (single_segment, 2, 4, 8)[descriptor >> 6]
        at += 5 + (1 - single_segment) + (0, 1, 2, 4)[descriptor & 3] + content_size
        last = 0
        while not last:
            if at + 3 > len(body):
                return False
            header = int.from_bytes(body[at : at + 3], "little")
            last, kind, size = header & 1, header >> 1 & 3, header >> 3
            at += 3 + (1 if kind == 1 else size)  # an RLE block holds its one byte
        at += 4 * (descriptor >> 2 & 1)  # the content checksum
    return at == len(body)


def decode_content(body: bytes | bytearray, encoding: str, limit: int) -> bytes | bytearray:
    """The body without its ``Content-Encoding``: gzip, deflate (zlib-wrapped as HTTP says, or
    raw as some clients send; ``zlib`` is the Collector's name for the former) or zstd.

    Raises ``Unsupported`` for any other encoding, ``BadRequest`` for a body that is not what its
    encoding says, ``OverflowError`` when the decompressed body would exceed ``limit``."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return _inflate(body, limit, 16 + zlib.MAX_WBITS, "gzip")
    if encoding in ("deflate", "zlib"):
        wbits = zlib.MAX_WBITS if _zlib_wrapped(body) else -zlib.MAX_WBITS
        return _inflate(body, limit, wbits, encoding)
    if encoding == "zstd":
        return _unzstd(body, limit)
    supported = "gzip, deflate, zstd" if zstandard is not None else "gzip, deflate"
    raise Unsupported(f"Content-Encoding {encoding!r} is not supported; use {supported} or none")


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

    def unavailable(self, exc: Exception, encoding: str) -> Response:
        """Redis is away: 503 with Retry-After (the exporter keeps the spans and retries)."""
        self.readiness.down(REDIS, exc)
        headers = {"Retry-After": "5"}
        return _error(503, "Redis unavailable; retry later", "unavailable", encoding, headers)

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
        # The scheme is case-insensitive (RFC 7235): "bearer x" and "BEARER x" count too.
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()
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


def error_status(status: int, reason: str) -> Any:
    """The ``google.rpc.Status`` answering an HTTP ``status``; on 400 with the ``BadRequest``
    detail the OTLP spec asks for."""
    answer = status_pb2.Status(code=_CODES[status], message=reason)
    if status == 400:
        violation = error_details_pb2.BadRequest.FieldViolation(description=reason)
        answer.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return answer


def _error(
    status: int,
    reason: str,
    outcome: str,
    encoding: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error answer: a Status in the request's encoding (protobuf unless it was JSON)."""
    metrics.OTLP_REQUESTS.labels(outcome).inc()
    answer = error_status(status, reason)
    if encoding == JSON:
        body = json_format.MessageToJson(answer, indent=None).encode()
        return Response(body, status_code=status, media_type=JSON, headers=headers)
    return Response(
        answer.SerializeToString(), status_code=status, media_type=PROTOBUF, headers=headers
    )


def _backpressure(encoding: str) -> Response:
    headers = {"Retry-After": "5"}
    return _error(503, "evalfleet is behind; retry later", "backpressure", encoding, headers)


def create_receiver_app(client: redis.Redis, settings: Settings, flush: bool = True) -> Starlette:
    receiver = Receiver(client, settings)
    limit = settings.otlp_max_body_bytes

    async def read(request: Request) -> tuple[str, bytes | bytearray] | Response:
        """The request's content type and (decompressed) body, or the error answer."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        # Errors answer in the request's encoding; protobuf (OTLP's default) when it is neither.
        encoding = JSON if content_type == JSON else PROTOBUF
        if not receiver.authorised(request):
            return _error(401, "a valid bearer token is required", "unauthorised", encoding)
        if content_type not in (PROTOBUF, JSON):
            reason = f"use {PROTOBUF} or {JSON}, not {content_type!r}"
            return _error(415, reason, "bad_type", encoding)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return _error(413, f"body over {limit} bytes", "too_large", encoding)
        received = bytearray()
        async for chunk in request.stream():
            received += chunk
            if len(received) > limit:
                return _error(413, f"body over {limit} bytes", "too_large", encoding)
        try:
            body = decode_content(received, request.headers.get("content-encoding", ""), limit)
        except OverflowError as exc:
            reason = str(exc) or f"decompressed body over {limit} bytes"
            return _error(413, reason, "too_large", encoding)
        except Unsupported as exc:
            return _error(415, str(exc), "bad_encoding", encoding)
        except BadRequest as exc:
            return _error(400, str(exc), "malformed", encoding)
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
            return _error(400, str(exc), "malformed", content_type)
        try:
            if await run_in_threadpool(receiver.behind):
                return _backpressure(content_type)
            if content_type == PROTOBUF:
                full = await run_in_threadpool(receiver.assembler.add_encoded, groups)
            else:
                full = await run_in_threadpool(receiver.assembler.add, spans)
        except redis.RedisError as exc:
            if outage_of(exc) is None:
                raise
            return receiver.unavailable(exc, content_type)
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
            return _error(400, str(exc), "malformed", content_type)
        try:
            if await run_in_threadpool(receiver.behind):
                return _backpressure(content_type)
            full = await run_in_threadpool(receiver.assembler.add_encoded, groups) if groups else 0
        except redis.RedisError as exc:
            if outage_of(exc) is None:
                raise
            return receiver.unavailable(exc, content_type)
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

    async def prometheus(request: Request) -> Response:
        """Behind the OTLP token when one is set; Prometheus scrapes the metrics port."""
        if not receiver.authorised(request):
            return Response(
                "a valid bearer token is required\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = threading.Thread(target=receiver.run_flusher, args=(stop,), daemon=True)
        if flush:
            thread.start()
        prober = Prober(receiver.readiness, {REDIS: client.ping}, settings.health_probe_interval_s)
        # /metrics without a token, for Prometheus, on a port of its own (evaluator.ops.health).
        metrics_server = None
        if settings.metrics_port is not None:
            metrics_server = serve(settings.metrics_port, receiver.readiness)
        try:
            with probing(prober):
                yield
        finally:
            stop.set()
            if flush:
                thread.join(10)
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()

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
    "decode_content",
    "error_status",
    "log_groups_from_json",
    "protobuf_groups",
    "protobuf_log_groups",
    "spans_from_json",
]
