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

An agentic trace — one with a tool span, an agent or workflow span (``invoke_agent``,
``create_agent``, ``invoke_workflow``; OpenInference ``AGENT``) or more than one generation —
also gets ``steps``: every GenAI span (generations, tools, retrievals, embeddings, agents;
OpenInference ``openinference.span.kind``) as a step, a parent before its children and siblings
in start order, each linked to its nearest ancestor that is a step. A tool step has
``gen_ai.tool.name`` (or ``tool.name``), ``gen_ai.tool.call.arguments`` / ``.result`` (or
``input.value`` / ``output.value``), ``gen_ai.tool.call.id``; a failed step the span's status
message (or ``error.type``). A step repeating a failed sibling (same parent, kind, name and call
id or arguments) is its retry: attempt 2, 3, ... (``evalfleet.attempt`` on the span overrides).
``session_id`` is ``session.id`` or ``gen_ai.conversation.id``; ``messages`` are the answer
span's ``gen_ai.system_instructions``, ``gen_ai.input.messages`` and ``gen_ai.output.messages``
in OpenAI chat format.

The finish reason is ``gen_ai.response.finish_reasons``, else the ``finish_reason`` in
``gen_ai.output.messages``; the answer's ``gen_ai.response.id`` is kept as
``metadata.response_id`` (evaluation events name the evaluated completion by it).

The answer of a trace is its last-ending generation span (a span with ``gen_ai.request.model``,
``gen_ai.response.model``, an inference ``gen_ai.operation.name`` or OpenInference span kind
``LLM``, whose ``llm.input_messages`` / ``llm.output_messages``, ``llm.model_name`` and
``llm.token_count.*`` are read), unless a generation span carries ``evalfleet.answer = true``.

Spans themselves are ``evaluator.ingest.spans.Span``; ``evaluator.ingest.exporter`` has the
OpenTelemetry SDK exporter for apps without a Collector.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from evaluator.ingest.spans import Span
from evaluator.models import (
    MAX_MESSAGES,
    MAX_STEP_ERROR_CHARS,
    MAX_STEPS,
    Message,
    Step,
    TokenUsage,
    Trace,
    describe_validation_error,
)

log = logging.getLogger(__name__)

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
        parts = message["parts"] if isinstance(message["parts"], list) else []
        return "".join(
            str(p.get("content", ""))
            for p in parts
            if isinstance(p, dict) and p.get("type", "text") == "text"
        )
    content = message.get("content", "")
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def json_messages(value: Any) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
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
    if openinference := _openinference_messages(a, "llm.input_messages"):
        return last_user_text(openinference)
    return str(a.get("gen_ai.prompt", "")) or _openinference_text(a, "input")


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
    if openinference := _openinference_messages(a, "llm.output_messages"):
        return "".join(message_text(m) for m in openinference)
    return str(a.get("gen_ai.completion", "")) or _openinference_text(a, "output")


def _openinference_messages(attributes: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """OpenInference ``llm.input_messages.N.message.role`` / ``.content`` as messages."""
    return [
        {"role": row.get("message.role", "user"), "content": row.get("message.content", "")}
        for row in _indexed(attributes, prefix)
    ]


def _openinference_text(attributes: dict[str, Any], name: str) -> str:
    """OpenInference ``input.value`` / ``output.value`` when it is text (not a request's JSON)."""
    if attributes.get(f"{name}.mime_type", "text/plain") == "application/json":
        return ""
    return str(attributes.get(f"{name}.value", ""))


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


def _clean(value: Any, cap: int) -> str:
    """Span text made storable: NUL replaced (no store keeps it), cut to the field's cap."""
    return str(value).replace("\x00", "\ufffd")[:cap]


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def _json_value(value: Any) -> Any:
    """An attribute that the conventions say is structured but may come as JSON text."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value, parse_constant=_refuse_constant)  # no NaN/Infinity
        except (ValueError, RecursionError):
            return value
    return value


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _span_tokens(span: Span) -> TokenUsage | None:
    a = span.attributes
    found = [
        next((v for k in keys if (v := _int(a.get(k))) is not None), None)
        for keys in (
            ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"),
            (
                "gen_ai.usage.output_tokens",
                "gen_ai.usage.completion_tokens",
                "llm.token_count.completion",
            ),
        )
    ]
    if found == [None, None]:
        return None
    return TokenUsage(input=found[0] or 0, output=found[1] or 0)


def _output_tool_calls(span: Span) -> list[dict[str, Any]]:
    """The tool calls a generation asked for (``tool_call`` parts of its output messages)."""
    calls = []
    for message in json_messages(span.attributes.get("gen_ai.output.messages", [])):
        for part in message.get("parts", []) if isinstance(message, dict) else []:
            if isinstance(part, dict) and part.get("type") == "tool_call":
                calls.append({"name": part.get("name"), "arguments": part.get("arguments")})
    return calls


def _step_fields(span: Span, kind: str) -> dict[str, Any]:
    """What a span says about itself as a step (ids, order and attempt are the caller's)."""
    a = span.attributes
    name: Any = None
    arguments: Any = None
    result: Any = None
    model = None
    if kind == "tool":
        name = a.get("gen_ai.tool.name") or a.get("tool.name")
        arguments = a.get("gen_ai.tool.call.arguments", a.get("input.value"))
        result = a.get("gen_ai.tool.call.result", a.get("output.value"))
    elif kind == "llm":
        model = _first(span, "gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
        name = model
        result = _completion(span) or _output_tool_calls(span) or a.get("output.value")
    elif kind == "agent":
        name = a.get("gen_ai.agent.name") or a.get("gen_ai.workflow.name")
        arguments, result = a.get("input.value"), a.get("output.value")
    elif kind == "retrieval":
        name = a.get("gen_ai.data_source.id")
        arguments = a.get("gen_ai.retrieval.query.text", a.get("input.value"))
        result = _documents(span) or a.get("output.value")
    else:
        arguments, result = a.get("input.value"), a.get("output.value")
    error = span.error or a.get("error.type")
    call_id = a.get("gen_ai.tool.call.id") or a.get("tool_call.id")
    fields: dict[str, Any] = {
        "kind": kind,
        "name": _clean(name or span.name, 256),
        "tool_call_id": _clean(call_id, 256) if call_id else None,
        "model": _clean(model, 256) if model else None,
        "arguments": _json_value(arguments),
        "result": _json_value(result) if result not in ("", []) else None,
        "error": _clean(error, MAX_STEP_ERROR_CHARS) if error else None,
        "tokens": _span_tokens(span),
        "started_at": _iso(span.start_ns),
        "ended_at": _iso(span.end_ns) if span.end_ns >= span.start_ns else None,
        "latency_ms": (span.end_ns - span.start_ns) / 1e6 if span.end_ns >= span.start_ns else None,
    }
    attempt = _int(a.get("evalfleet.attempt"))
    if attempt:
        fields["attempt"] = min(attempt, 1000)
    return fields


def _step(fields: dict[str, Any]) -> Step:
    """A Step, whatever the span held: values the wire rules refuse (a NUL in a decoded JSON
    string, nesting too deep) are kept as text instead."""
    try:
        return Step(**fields)
    except ValidationError:
        for name in ("arguments", "result"):
            value = fields[name]
            if value is not None and not isinstance(value, str):
                value = json.dumps(value, default=str)
            fields[name] = _clean(value, 10**7) if value is not None else None
        return Step(**fields)


def _retry_key(step: Step) -> tuple[Any, ...]:
    same_call = step.tool_call_id or json.dumps(step.arguments, sort_keys=True, default=str)
    return step.parent_id, step.kind, step.name, same_call


def _steps(spans: list[Span]) -> tuple[list[Step], int] | None:
    """The trajectory of an agentic trace and how many steps were left out over the cap, or None
    for a trace that is no agent's (one generation, perhaps with retrievals: its Trace is the
    same as before steps existed)."""
    by_id: dict[str, Span] = {}
    kinds: dict[str, str] = {}
    for span in spans:  # a span sent twice (an exporter's retry) is one step
        if span.span_id not in by_id:
            by_id[span.span_id] = span
            if kind := span.step_kind:
                kinds[span.span_id] = kind
    generations = sum(kind == "llm" for kind in kinds.values())
    if generations < 2 and not any(kind in ("tool", "agent") for kind in kinds.values()):
        return None

    memo: dict[str, str | None] = {}

    def step_at_or_above(start: str | None) -> str | None:
        """The nearest step at or above span ``start``; spans that are no step are walked once
        (memoised), so a deep chain of them stays linear."""
        path: dict[str, None] = {}  # ordered and quick to look up
        current, found = start, None
        while current is not None and current in by_id:
            if current in kinds or current in memo:
                found = current if current in kinds else memo[current]
                break
            if current in path:  # a cycle of spans that are no steps
                break
            path[current] = None
            current = by_id[current].parent_id
        memo.update(dict.fromkeys(path, found))
        return found

    parents = {span_id: step_at_or_above(by_id[span_id].parent_id) for span_id in kinds}
    children: dict[str | None, list[Span]] = {}
    for span_id, parent in parents.items():
        children.setdefault(parent, []).append(by_id[span_id])
    for siblings in children.values():
        siblings.sort(key=lambda s: (s.start_ns, s.end_ns, s.span_id))
    # Depth first, so a parent comes before its children (clocks of different services may
    # disagree by more than a child's start); spans in a parent cycle are never reached.
    ordered: list[Span] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        span = stack.pop()
        ordered.append(span)
        stack.extend(reversed(children.get(span.span_id, [])))
    omitted = max(0, len(ordered) - MAX_STEPS)
    steps: list[Step] = []
    last: dict[tuple[Any, ...], Step] = {}
    for span in ordered[:MAX_STEPS]:  # preorder: a kept step's parent is kept
        fields = _step_fields(span, kinds[span.span_id])
        step = _step({**fields, "id": span.span_id, "parent_id": parents[span.span_id]})
        key = _retry_key(step)
        previous = last.get(key)
        if "attempt" not in fields and previous is not None and previous.error is not None:
            step.attempt = min(previous.attempt + 1, 1000)
        last[key] = step
        steps.append(step)
    return steps, omitted


_OPENAI_MESSAGE_KEYS = ("role", "content", "name", "refusal", "tool_calls", "tool_call_id")


def _text(value: Any) -> str:
    return _clean(value, 1_000_000)


def _openai_message(role: str, message: dict[str, Any]) -> list[dict[str, Any]]:
    """One GenAI-conventions message (``parts``) as OpenAI chat messages: a tool message per
    ``tool_call_response`` part. A message already in OpenAI form keeps the fields the Trace
    has (an SDK's dump adds others) and its text parts."""
    if "parts" not in message:
        out = {k: message[k] for k in _OPENAI_MESSAGE_KEYS if message.get(k) is not None}
        out["role"] = role
        content = out.get("content")
        if isinstance(content, list):
            texts = [p.get("text", "") for p in content if isinstance(p, dict)]
            out["content"] = [{"type": "text", "text": _text(t)} for t in texts]
        elif content is not None:
            out["content"] = _text(content)
        return [out]
    texts, calls, answers = [], [], []
    for part in message["parts"] if isinstance(message["parts"], list) else []:
        if not isinstance(part, dict):
            continue
        kind = part.get("type", "text")
        if kind == "text":
            texts.append(_text(part.get("content", "")))
        elif kind == "tool_call":
            arguments = part.get("arguments")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments, default=str)
            function = {"name": _clean(part.get("name") or "", 256), "arguments": _text(arguments)}
            call_id = _clean(part.get("id") or "", 256).strip()
            calls.append({"id": call_id, "type": "function", "function": function})
        elif kind == "tool_call_response":
            response = part.get("response", part.get("result"))
            if not isinstance(response, str):
                response = json.dumps(response, default=str)
            call_id = _clean(part.get("id") or "", 256).strip()
            answers.append({"role": "tool", "tool_call_id": call_id, "content": _text(response)})
    if answers:
        return answers
    out = {"role": role, "content": "".join(texts) if texts or not calls else None}
    if calls:
        out["tool_calls"] = calls
    return [out]


def _conversation(span: Span) -> dict[str, Any]:
    """The attributes that hold the span's conversation: its own, else a details event's."""
    if "gen_ai.input.messages" in span.attributes or "gen_ai.output.messages" in span.attributes:
        return span.attributes
    for _, attributes in span.events:  # gen_ai.client.inference.operation.details
        if "gen_ai.input.messages" in attributes:
            return attributes
    return span.attributes


def _messages(span: Span) -> list[Message] | None:
    """The answer span's conversation in OpenAI chat format (the last MAX_MESSAGES), or None
    when it records none. Text is made storable; a message the wire rules still refuse is left
    out, and so is a tool message whose call is not in the (perhaps cut) history."""
    a = _conversation(span)
    raw: list[dict[str, Any]] = []
    instructions = a.get(
        "gen_ai.system_instructions", span.attributes.get("gen_ai.system_instructions")
    )
    if instructions is not None:
        text = "".join(message_text(p) for p in json_messages(instructions))
        raw.append({"role": "system", "content": _text(text)})
    for key, default in (
        ("gen_ai.input.messages", "user"),
        ("gen_ai.output.messages", "assistant"),
    ):
        for message in json_messages(a.get(key, [])):
            if isinstance(message, dict):
                raw += _openai_message(str(message.get("role") or default), message)
            elif isinstance(message, str):
                raw.append({"role": default, "content": _text(message)})
    messages: list[Message] = []
    calls: set[str] = set()
    for candidate in raw[-MAX_MESSAGES:]:
        try:
            parsed = Message.model_validate(candidate)
        except ValidationError:
            continue
        if parsed.tool_call_id is not None and parsed.tool_call_id not in calls:
            continue
        calls.update(call.id for call in parsed.tool_calls or ())
        messages.append(parsed)
    return messages or None


def _session_id(root: Span, spans: Iterable[Span]) -> str | None:
    """``session.id`` (OpenInference too) or ``gen_ai.conversation.id``: the root's, else the
    first span's that has one (instrumentations put it on the chat or agent span)."""
    for span in (root, *sorted(spans, key=lambda s: s.start_ns)):
        value = _first(span, "session.id", "gen_ai.conversation.id")
        if value is not None and value != "":
            text = str(value)
            if len(text) <= 256 and "\x00" not in text:
                return text
    return None


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
    input_tokens = _first(
        answer, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"
    )
    output_tokens = _first(
        answer,
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.token_count.completion",
    )
    errors = [s.error for s in spans if s.error]
    metadata = {
        key: value
        for key, value in {
            "provider": _first(answer, "gen_ai.provider.name", "gen_ai.system", "llm.provider"),
            # For gen_ai.evaluation.result events: the completion evaluated, when known.
            "response_id": answer.attributes.get("gen_ai.response.id"),
            "session_id": _first(root, "session.id", "gen_ai.conversation.id"),
            "user_id": _first(root, "user.id", "enduser.id"),
            "service": root.resource.get("service.name"),
        }.items()
        if value is not None
    }
    # NUL replaced: no store keeps it, and the Trace would be refused (the flusher stopped).
    tools = [
        {
            "name": _clean(s.attributes.get("gen_ai.tool.name") or s.name, 10**6),
            "error": _clean(s.error, 10**6) if s.error else None,
        }
        for s in sorted(spans, key=lambda s: s.start_ns)
        if s.operation == "execute_tool"
    ]
    if tools:
        metadata["tool_calls"] = tools
    fields: dict[str, Any] = dict(
        trace_id=answer.trace_id,
        # Span text made storable (a NUL once made the Trace, and so the flush, fail).
        input=_text(_prompt(answer)),
        output=_text(_completion(answer)),
        contexts=[_text(d) for r in retrievals for d in _documents(r)],
        retrieval=bool(retrievals),
        model=_first(answer, "gen_ai.response.model", "gen_ai.request.model", "llm.model_name"),
        prompt_version=_first(root, "evalfleet.prompt_version", "prompt.version"),
        app_version=_first(root, "evalfleet.app_version", "service.version"),
        tenant=_first(root, "evalfleet.tenant", "tenant.id"),
        feature=_first(root, "evalfleet.feature"),
        latency_ms=(root.end_ns - root.start_ns) / 1e6 if root.end_ns else None,
        finish_reason=finish,
        error=_text(errors[0]) if errors else None,
        tokens=TokenUsage(input=int(input_tokens or 0), output=int(output_tokens or 0))
        if input_tokens is not None or output_tokens is not None
        else None,
        span_id=answer.span_id,
        metadata=metadata,
        started_at=_iso(root.start_ns),
        ended_at=_iso(root.end_ns),
    )
    agent: dict[str, Any] = {}
    try:
        agent["session_id"] = _session_id(root, spans)
        agent["messages"] = _messages(answer)
        trajectory = _steps(spans)
        if trajectory is not None:
            agent["steps"], omitted = trajectory
            if omitted:
                metadata["steps_omitted"] = omitted
        return Trace(**fields, **agent)
    except ValidationError as exc:
        # The answer is still worth evaluating without what the spans added for agents.
        log.warning("trace %s without its agent fields: %s", answer.trace_id, exc)
        metadata["agent_fields_dropped"] = describe_validation_error(exc)
        return Trace(**fields)


def _cut(value: Any, cap: int) -> tuple[Any, bool]:
    text = value if isinstance(value, str) or value is None else json.dumps(value, default=str)
    if text is None or len(text) <= cap:
        return value, False
    return text[:cap], True


def trace_payload(trace: Trace, max_bytes: int) -> str:
    """The trace's wire JSON, fitted under ``max_bytes`` when its steps and messages make it too
    big (they are what the spans of an agent add): step arguments and results are cut shorter
    and shorter, then the messages and finally the steps are left out, counted in metadata. A
    trace too big without them is sent as it is: the sampler dead-letters it with the reason."""

    def dump(candidate: Trace) -> str:
        return candidate.model_dump_json(exclude_none=True, exclude_defaults=True)

    payload = dump(trace)
    if len(payload.encode()) <= max_bytes or (not trace.steps and not trace.messages):
        return payload
    for cap in (4096, 1024, 256, 0):
        steps = []
        for step in trace.steps or ():
            arguments, arguments_cut = _cut(step.arguments, cap)
            result, result_cut = _cut(step.result, cap)
            update = {"arguments": arguments, "result": result}
            if arguments_cut:
                update["arguments_truncated"] = True
            if result_cut:
                update["result_truncated"] = True
            steps.append(step.model_copy(update=update))
        trace = trace.model_copy(update={"steps": steps or trace.steps})
        payload = dump(trace)
        if len(payload.encode()) <= max_bytes:
            return payload
    for field in ("messages", "steps"):
        if getattr(trace, field):
            metadata = {**trace.metadata, f"{field}_omitted": len(getattr(trace, field))}
            trace = trace.model_copy(update={field: None, "metadata": metadata})
            payload = dump(trace)
            if len(payload.encode()) <= max_bytes:
                return payload
    return payload


def traces_from_otlp(document: dict[str, Any]) -> list[Trace]:
    """Every trace with a generation span in an OTLP/JSON export, in order of first appearance."""
    by_trace: dict[str, list[Span]] = {}
    for span in parse_otlp_spans(document):
        by_trace.setdefault(span.trace_id, []).append(span)
    traces = (spans_to_trace(spans) for spans in by_trace.values())
    return [t for t in traces if t is not None]
