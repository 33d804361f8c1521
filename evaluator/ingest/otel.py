"""OTLP/JSON span export (OpenTelemetry GenAI semantic conventions) -> Trace.

Understands both the current conventions (``gen_ai.input.messages`` / ``gen_ai.output.messages``,
``gen_ai.provider.name``, ``gen_ai.usage.input_tokens``, retrieval spans with
``gen_ai.retrieval.documents``) and the older ones still emitted by many instrumentations
(``gen_ai.prompt.N.content`` / ``gen_ai.completion.N.content``, ``gen_ai.content.prompt`` /
``gen_ai.content.completion`` events, ``gen_ai.usage.prompt_tokens``, OpenInference
``retrieval.documents.N.document.content``).

Message content may also come as log-based events (``gen_ai.user.message``, ``gen_ai.choice``,
``gen_ai.client.inference.operation.details``) received on ``/v1/logs`` and attached to the span
they were emitted in.

Tool spans (``gen_ai.operation.name = execute_tool``) are listed in ``metadata.tool_calls`` with
their errors; any span in error sets the Trace's ``error``.

The finish reason is ``gen_ai.response.finish_reasons``, else the ``finish_reason`` in
``gen_ai.output.messages``; the answer's ``gen_ai.response.id`` is kept as
``metadata.response_id`` (evaluation events name the evaluated completion by it).

The answer of a trace is its last-ending generation span (a span with ``gen_ai.request.model``,
``gen_ai.response.model`` or an inference ``gen_ai.operation.name``), unless a generation span
carries ``evalfleet.answer = true``.

Spans themselves are ``evaluator.ingest.spans.Span``; ``evaluator.ingest.exporter`` has the
OpenTelemetry SDK exporter for apps without a Collector.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from evaluator.ingest.spans import Span
from evaluator.models import TokenUsage, Trace

_ERROR_STATUS = {2, "STATUS_CODE_ERROR"}


def json_any_value(value: dict[str, Any]) -> Any:
    """Decode an OTLP/JSON AnyValue."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])  # int64 is a JSON string in OTLP/JSON
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [json_any_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return json_attributes(value["kvlistValue"].get("values", []))
    return None


def json_attributes(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: json_any_value(item.get("value", {})) for item in items}


def parse_otlp_spans(document: dict[str, Any]) -> list[Span]:
    """Flatten an OTLP/JSON ``{"resourceSpans": [...]}`` export into spans."""
    spans: list[Span] = []
    for resource_spans in document.get("resourceSpans", []):
        resource = json_attributes(resource_spans.get("resource", {}).get("attributes", []))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for raw in scope_spans.get("spans", []):
                status = raw.get("status", {})
                error = None
                if status.get("code") in _ERROR_STATUS:
                    error = status.get("message") or "span status ERROR"
                # Hex ids are case-insensitive in OTLP/JSON: lowercase, as the protobuf path has
                # them, so a trace sent partly in each encoding is one trace.
                parent = (raw.get("parentSpanId") or "").lower()
                spans.append(
                    Span(
                        trace_id=raw["traceId"].lower(),
                        span_id=raw["spanId"].lower(),
                        parent_id=parent if parent.strip("0") else None,
                        name=raw.get("name", ""),
                        start_ns=int(raw.get("startTimeUnixNano", 0)),
                        end_ns=int(raw.get("endTimeUnixNano", 0)),
                        attributes=json_attributes(raw.get("attributes", [])),
                        resource=resource,
                        events=[
                            (e.get("name", ""), json_attributes(e.get("attributes", [])))
                            for e in raw.get("events", [])
                        ],
                        error=error,
                    )
                )
    return spans


def message_text(message: Any) -> str:
    """Text of a chat message in either the ``parts`` form (current) or ``content`` form (old)."""
    if isinstance(message, str):
        return message
    if not isinstance(message, dict):
        return ""
    if "parts" in message:
        return "".join(
            str(p.get("content", "")) for p in message["parts"] if p.get("type", "text") == "text"
        )
    content = message.get("content", "")
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def json_messages(value: Any) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return [value]
    return value if isinstance(value, list) else [value]


def _indexed(attributes: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Collect ``prefix.N.key`` attributes into a list of dicts ordered by N."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.(.+)$")
    rows: dict[int, dict[str, Any]] = {}
    for key, value in attributes.items():
        match = pattern.match(key)
        if match:
            rows.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return [rows[i] for i in sorted(rows)]


def last_user_text(messages: list[Any]) -> str:
    users = [m for m in messages if not isinstance(m, dict) or m.get("role", "user") == "user"]
    return message_text(users[-1]) if users else ""


def _prompt(span: Span) -> str:
    a = span.attributes
    if "gen_ai.input.messages" in a:
        return last_user_text(json_messages(a["gen_ai.input.messages"]))
    if legacy := _indexed(a, "gen_ai.prompt"):
        return last_user_text(legacy)
    user_messages = []
    for name, attrs in span.events:
        if "gen_ai.input.messages" in attrs:  # gen_ai.client.inference.operation.details
            return last_user_text(json_messages(attrs["gen_ai.input.messages"]))
        if name == "gen_ai.content.prompt" and "gen_ai.prompt" in attrs:
            return last_user_text(json_messages(attrs["gen_ai.prompt"]))
        if name == "gen_ai.user.message":  # one event per message: the last one asks
            user_messages.append(message_text(attrs))
    if user_messages:
        return user_messages[-1]
    return str(a.get("gen_ai.prompt", ""))


def _completion(span: Span) -> str:
    a = span.attributes
    if "gen_ai.output.messages" in a:
        return "".join(message_text(m) for m in json_messages(a["gen_ai.output.messages"]))
    if legacy := _indexed(a, "gen_ai.completion"):
        return message_text(legacy[0])
    for name, attrs in span.events:
        if "gen_ai.output.messages" in attrs:
            return "".join(message_text(m) for m in json_messages(attrs["gen_ai.output.messages"]))
        if name == "gen_ai.content.completion" and "gen_ai.completion" in attrs:
            return "".join(message_text(m) for m in json_messages(attrs["gen_ai.completion"]))
        if name == "gen_ai.choice":
            message = attrs.get("message", attrs)
            return message_text(json.loads(message) if isinstance(message, str) else message)
    return str(a.get("gen_ai.completion", ""))


def _finish_reason(span: Span) -> str | None:
    """``gen_ai.response.finish_reasons`` (its first), else the ``finish_reason`` of the first
    output message that has one (``gen_ai.output.messages`` on the span or in a details event:
    apps that fill only the messages), else a ``gen_ai.choice`` event's."""
    reasons = span.attributes.get("gen_ai.response.finish_reasons")
    if isinstance(reasons, list):
        reasons = reasons[0] if reasons else None
    if reasons:
        return str(reasons)
    for attributes in [span.attributes, *(attrs for _, attrs in span.events)]:
        for message in json_messages(attributes.get("gen_ai.output.messages", [])):
            if isinstance(message, dict) and message.get("finish_reason"):
                return str(message["finish_reason"])
    for name, attributes in span.events:
        if name == "gen_ai.choice" and attributes.get("finish_reason"):
            return str(attributes["finish_reason"])
    return None


def _documents(span: Span) -> list[str]:
    a = span.attributes
    docs: list[str] = []
    if "gen_ai.retrieval.documents" in a:
        for doc in json_messages(a["gen_ai.retrieval.documents"]):
            text = doc.get("content") or doc.get("text") if isinstance(doc, dict) else doc
            if text:
                docs.append(str(text))
    docs += [
        str(d["document.content"])
        for d in _indexed(a, "retrieval.documents")
        if d.get("document.content")
    ]
    return docs


def _first(span: Span, *keys: str) -> Any:
    for key in keys:
        for source in (span.attributes, span.resource):
            if key in source:
                return source[key]
    return None


def _iso(ns: int) -> datetime | None:
    return datetime.fromtimestamp(ns / 1e9, UTC) if ns else None


def spans_to_trace(spans: list[Span]) -> Trace | None:
    """One Trace from the spans of one trace id, or None when it holds no generation span."""
    generations = [s for s in spans if s.is_generation]
    if not generations:
        return None
    # The app may mark its answer span; otherwise the generation that ended last.
    marked = [s for s in generations if s.attributes.get("evalfleet.answer") is True]
    answer = max(marked or generations, key=lambda s: s.end_ns)
    root = next((s for s in spans if s.parent_id is None), min(spans, key=lambda s: s.start_ns))
    retrievals = [s for s in spans if s.is_retrieval]
    finish = _finish_reason(answer)
    input_tokens = _first(answer, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    output_tokens = _first(answer, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    errors = [s.error for s in spans if s.error]
    metadata = {
        key: value
        for key, value in {
            "provider": _first(answer, "gen_ai.provider.name", "gen_ai.system"),
            # For gen_ai.evaluation.result events: the completion evaluated, when known.
            "response_id": answer.attributes.get("gen_ai.response.id"),
            "session_id": _first(root, "session.id", "gen_ai.conversation.id"),
            "user_id": _first(root, "user.id", "enduser.id"),
            "service": root.resource.get("service.name"),
        }.items()
        if value is not None
    }
    tools = [
        {"name": str(s.attributes.get("gen_ai.tool.name") or s.name), "error": s.error}
        for s in sorted(spans, key=lambda s: s.start_ns)
        if s.operation == "execute_tool"
    ]
    if tools:
        metadata["tool_calls"] = tools
    return Trace(
        trace_id=answer.trace_id,
        input=_prompt(answer),
        output=_completion(answer),
        contexts=[d for r in retrievals for d in _documents(r)],
        retrieval=bool(retrievals),
        model=_first(answer, "gen_ai.response.model", "gen_ai.request.model"),
        prompt_version=_first(root, "evalfleet.prompt_version", "prompt.version"),
        app_version=_first(root, "evalfleet.app_version", "service.version"),
        tenant=_first(root, "evalfleet.tenant", "tenant.id"),
        feature=_first(root, "evalfleet.feature"),
        latency_ms=(root.end_ns - root.start_ns) / 1e6 if root.end_ns else None,
        finish_reason=finish,
        error=errors[0] if errors else None,
        tokens=TokenUsage(input=int(input_tokens or 0), output=int(output_tokens or 0))
        if input_tokens is not None or output_tokens is not None
        else None,
        span_id=answer.span_id,
        metadata=metadata,
        started_at=_iso(root.start_ns),
        ended_at=_iso(root.end_ns),
    )


def traces_from_otlp(document: dict[str, Any]) -> list[Trace]:
    """Every trace with a generation span in an OTLP/JSON export, in order of first appearance."""
    by_trace: dict[str, list[Span]] = {}
    for span in parse_otlp_spans(document):
        by_trace.setdefault(span.trace_id, []).append(span)
    traces = (spans_to_trace(spans) for spans in by_trace.values())
    return [t for t in traces if t is not None]
