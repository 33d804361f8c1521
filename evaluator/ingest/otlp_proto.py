"""OTLP protobuf spans: decoding into ``Span`` and the compact form pending spans are held in.

The receiver keeps protobuf spans as protobuf (serialising a span is done in C) and decodes them
into Python objects once, when the trace is published; that halved the receiver's CPU per span.
A held entry is ``b"p"`` + 4-byte resource length + the Resource message + the Span message,
``b"j"`` + the JSON of a ``Span`` (OTLP/JSON input and the in-process exporter), or ``b"e"`` + the
JSON of a log-based GenAI event (``/v1/logs``) to attach to its span when the trace is published.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from evaluator.ingest.spans import Span

PROTOBUF_TAG, JSON_TAG, EVENT_TAG = b"p", b"j", b"e"


def pb_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [pb_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return pb_attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


def pb_attributes(items: Any) -> dict[str, Any]:
    return {kv.key: pb_value(kv.value) for kv in items}


def span_from_pb(raw: PbSpan, resource: dict[str, Any]) -> Span:
    error = None
    if raw.status.code == 2:  # STATUS_CODE_ERROR
        error = raw.status.message or "span status ERROR"
    return Span(
        trace_id=raw.trace_id.hex(),
        span_id=raw.span_id.hex(),
        parent_id=raw.parent_span_id.hex() if any(raw.parent_span_id) else None,
        name=raw.name,
        start_ns=raw.start_time_unix_nano,
        end_ns=raw.end_time_unix_nano,
        attributes=pb_attributes(raw.attributes),
        resource=resource,
        events=[(e.name, pb_attributes(e.attributes)) for e in raw.events],
        error=error,
    )


def resource_prefix(resource: Resource) -> bytes:
    encoded: bytes = resource.SerializeToString()
    return PROTOBUF_TAG + len(encoded).to_bytes(4, "big") + encoded


def encode_json(span: Span) -> bytes:
    body = {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_id": span.parent_id,
        "name": span.name,
        "start_ns": span.start_ns,
        "end_ns": span.end_ns,
        "attributes": span.attributes,
        "resource": span.resource,
        "events": span.events,
        "error": span.error,
    }
    return JSON_TAG + json.dumps(body, separators=(",", ":"), default=str).encode()


@functools.lru_cache(maxsize=1024)
def _resource(encoded: bytes) -> dict[str, Any]:
    # Every span of a service carries the same resource: decode it once. Callers only read it.
    return pb_attributes(Resource.FromString(encoded).attributes)


def decode(entry: bytes) -> Span:
    if entry[:1] == PROTOBUF_TAG:
        size = int.from_bytes(entry[1:5], "big")
        return span_from_pb(PbSpan.FromString(entry[5 + size :]), _resource(entry[5 : 5 + size]))
    data = json.loads(entry[1:])
    data["events"] = [tuple(event) for event in data.get("events", [])]
    return Span(**data)


def encode_event(span_id: str, name: str, attributes: dict[str, Any]) -> bytes:
    body = {"span_id": span_id, "name": name, "attributes": attributes}
    return EVENT_TAG + json.dumps(body, separators=(",", ":"), default=str).encode()


def decode_trace(entries: list[bytes]) -> list[Span]:
    """The spans of a held trace, with the log-based events attached to the spans they were
    emitted in (an event whose span never arrived has nothing to attach to and is left out)."""
    spans: list[Span] = []
    events: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for entry in entries:
        if entry[:1] == EVENT_TAG:
            event = json.loads(entry[1:])
            events.setdefault(event["span_id"], []).append((event["name"], event["attributes"]))
        else:
            spans.append(decode(entry))
    for span in spans:
        span.events = [*span.events, *events.get(span.span_id, [])]
    return spans
