"""Agent traces over OTLP: a tool-using agent's spans (invoke_agent → chat → execute_tool, which
fails and is retried → chat) become the Trace's steps, session_id and messages, the same from
OTLP/JSON and protobuf, through the receiver and the assembler."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from starlette.testclient import TestClient

from evaluator.constants import TRACES_STREAM
from evaluator.ingest import traces_from_otlp
from evaluator.ingest.assembly import SpanAssembler
from evaluator.ingest.otel import spans_to_trace, trace_payload
from evaluator.ingest.receiver import create_receiver_app
from evaluator.ingest.spans import Span
from evaluator.models import MAX_STEP_VALUE_CHARS, Trace, parse_trace
from evaluator.settings import Settings

T0 = 1_763_900_000_000_000_000
MS = 1_000_000
CALL = "call_weather_1"
QUESTION = [{"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]}]
ASKS_TOOL = [
    {
        "role": "assistant",
        "parts": [
            {"type": "tool_call", "id": CALL, "name": "get_weather", "arguments": {"city": "Paris"}}
        ],
        "finish_reason": "tool_call",
    }
]
TOOL_ANSWER = [
    {"role": "tool", "parts": [{"type": "tool_call_response", "id": CALL, "response": "18°C"}]}
]
ANSWER = [
    {
        "role": "assistant",
        "parts": [{"type": "text", "content": "It is 18°C in Paris."}],
        "finish_reason": "stop",
    }
]


def agent_spans(trace: int) -> list[dict[str, Any]]:
    """The spans of one agent run, as (id, parent, name, start ms, end ms, attributes, error).
    An HTTP span sits between the agent and its second chat: steps link to the agent anyway."""
    weather = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "get_weather",
        "gen_ai.tool.call.id": CALL,
        "gen_ai.tool.call.arguments": json.dumps({"city": "Paris"}),
    }
    return [
        {
            "id": 1,
            "parent": None,
            "name": "invoke_agent weather",
            "start": 0,
            "end": 900,
            "attributes": {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": "weather",
                "gen_ai.conversation.id": f"conv-{trace}",
            },
        },
        {
            "id": 2,
            "parent": 1,
            "name": "chat gpt-4o",
            "start": 10,
            "end": 200,
            "attributes": {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.input.messages": json.dumps(QUESTION),
                "gen_ai.output.messages": json.dumps(ASKS_TOOL),
                "gen_ai.usage.input_tokens": 40,
                "gen_ai.usage.output_tokens": 12,
            },
        },
        {
            "id": 3,
            "parent": 1,
            "name": "execute_tool get_weather",
            "start": 210,
            "end": 400,
            "attributes": weather,
            "error": "weather service timed out",
        },
        {
            "id": 4,
            "parent": 1,
            "name": "execute_tool get_weather",
            "start": 410,
            "end": 500,
            "attributes": {**weather, "gen_ai.tool.call.result": json.dumps({"temp_c": 18})},
        },
        {"id": 5, "parent": 1, "name": "POST /v1/chat", "start": 505, "end": 890, "attributes": {}},
        {
            "id": 6,
            "parent": 5,
            "name": "chat gpt-4o",
            "start": 510,
            "end": 880,
            "attributes": {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.system_instructions": json.dumps(
                    [{"type": "text", "content": "You answer weather questions."}]
                ),
                "gen_ai.input.messages": json.dumps(QUESTION + ASKS_TOOL + TOOL_ANSWER),
                "gen_ai.output.messages": json.dumps(ANSWER),
                "gen_ai.usage.input_tokens": 80,
                "gen_ai.usage.output_tokens": 9,
            },
        },
    ]


def span_id(trace: int, index: int) -> str:
    return f"{trace * 100 + index:016x}"


def otlp_json(trace: int) -> dict[str, Any]:
    def value(v: Any) -> dict[str, Any]:
        return {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}

    spans = []
    for s in agent_spans(trace):
        raw: dict[str, Any] = {
            "traceId": f"{trace:032x}",
            "spanId": span_id(trace, s["id"]),
            "name": s["name"],
            "startTimeUnixNano": str(T0 + s["start"] * MS),
            "endTimeUnixNano": str(T0 + s["end"] * MS),
            "attributes": [{"key": k, "value": value(v)} for k, v in s["attributes"].items()],
        }
        if s["parent"] is not None:
            raw["parentSpanId"] = span_id(trace, s["parent"])
        if "error" in s:
            raw["status"] = {"code": 2, "message": s["error"]}
        spans.append(raw)
    spans.reverse()  # exporters send children first: order must come from the spans
    return {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}


def otlp_protobuf(trace: int) -> bytes:
    def kv(key: str, v: Any) -> KeyValue:
        if isinstance(v, int):
            return KeyValue(key=key, value=AnyValue(int_value=v))
        return KeyValue(key=key, value=AnyValue(string_value=v))

    spans = []
    for s in agent_spans(trace):
        spans.append(
            PbSpan(
                trace_id=trace.to_bytes(16, "big"),
                span_id=bytes.fromhex(span_id(trace, s["id"])),
                parent_span_id=bytes.fromhex(span_id(trace, s["parent"]))
                if s["parent"] is not None
                else b"",
                name=s["name"],
                start_time_unix_nano=T0 + s["start"] * MS,
                end_time_unix_nano=T0 + s["end"] * MS,
                attributes=[kv(k, v) for k, v in s["attributes"].items()],
                status=Status(code=Status.STATUS_CODE_ERROR, message=s["error"])
                if "error" in s
                else None,
            )
        )
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans[::-1])])]
    )
    encoded: bytes = request.SerializeToString()
    return encoded


def check_agent_trace(trace: Trace, number: int) -> None:
    ids = {index: span_id(number, index) for index in range(1, 7)}
    assert trace.session_id == f"conv-{number}"
    assert (trace.input, trace.output) == ("Weather in Paris?", "It is 18°C in Paris.")
    assert trace.span_id == ids[6]  # the last generation is still the answer
    assert trace.steps is not None
    assert [(s.id, s.kind, s.name, s.parent_id, s.attempt) for s in trace.steps] == [
        (ids[1], "agent", "weather", None, 1),
        (ids[2], "llm", "gpt-4o", ids[1], 1),
        (ids[3], "tool", "get_weather", ids[1], 1),
        (ids[4], "tool", "get_weather", ids[1], 2),  # the retry of the failed call
        (ids[6], "llm", "gpt-4o", ids[1], 1),  # under the agent, through the HTTP span
    ]
    agent, ask, failed, retried, final = trace.steps
    assert ask.result == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert ask.tokens is not None and (ask.tokens.input, ask.tokens.output) == (40, 12)
    assert ask.model == "gpt-4o" and ask.latency_ms == 190.0
    assert failed.error == "weather service timed out" and failed.result is None
    assert failed.arguments == {"city": "Paris"} and failed.tool_call_id == CALL
    assert retried.error is None and retried.result == {"temp_c": 18}
    assert final.result == "It is 18°C in Paris." and agent.error is None
    assert trace.messages is not None
    assert [(m.role, m.text) for m in trace.messages] == [
        ("system", "You answer weather questions."),
        ("user", "Weather in Paris?"),
        ("assistant", ""),
        ("tool", "18°C"),
        ("assistant", "It is 18°C in Paris."),
    ]
    [call] = trace.messages[2].tool_calls or []
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        CALL,
        "get_weather",
        {"city": "Paris"},
    )
    assert trace.messages[3].tool_call_id == CALL
    # What existed before steps is unchanged.
    assert trace.metadata["tool_calls"] == [
        {"name": "get_weather", "error": "weather service timed out"},
        {"name": "get_weather", "error": None},
    ]
    assert trace.error == "weather service timed out"
    # The published form passes the wire rules as it is.
    wire = trace.model_dump_json(exclude_none=True, exclude_defaults=True)
    assert parse_trace(wire, 256 * 1024) == trace


def test_an_agent_trace_from_otlp_json() -> None:
    [trace] = traces_from_otlp(otlp_json(11))
    check_agent_trace(trace, 11)


@pytest.fixture
def settings(redis_url: str, redis_client: redis.Redis) -> Settings:
    return Settings(redis_url=redis_url, otlp_grace_s=0.3, otlp_max_wait_s=5)


@pytest.fixture
def client(redis_client: redis.Redis, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_receiver_app(redis_client, settings, flush=False)) as test_client:
        yield test_client


def test_an_agent_trace_through_the_receiver_as_protobuf_and_json(
    client: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    protobuf = {"Content-Type": "application/x-protobuf"}
    assert client.post("/v1/traces", content=otlp_protobuf(21), headers=protobuf).status_code == 200
    assert client.post("/v1/traces", json=otlp_json(22)).status_code == 200
    time.sleep(0.4)
    assert SpanAssembler(redis_client, settings).flush().published == 2
    entries: Any = redis_client.xrange(TRACES_STREAM)
    published = {
        trace.trace_id: trace
        for trace in (Trace.model_validate_json(fields[b"trace"]) for _, fields in entries)
    }
    check_agent_trace(published[f"{21:032x}"], 21)
    check_agent_trace(published[f"{22:032x}"], 22)


def _span(index: int, parent: int | None, start: int, **attributes: Any) -> Span:
    return Span(
        f"{1:032x}",
        f"{index:016x}",
        f"{parent:016x}" if parent is not None else None,
        f"span {index}",
        T0 + start * MS,
        T0 + (start + 5) * MS,
        attributes,
        {},
    )


CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}


def test_a_single_generation_trace_gets_no_steps() -> None:
    """Retrieval + one chat is today's RAG trace: no steps, so its payload is what it was."""
    trace = spans_to_trace(
        [
            _span(1, None, 0),
            _span(2, 1, 1, **{"gen_ai.operation.name": "retrieval"}),
            _span(3, 1, 2, **CHAT, **{"session.id": "s-1"}),
        ]
    )
    assert trace is not None and trace.steps is None
    assert trace.session_id == "s-1"  # from the chat span: metadata keeps only the root's
    assert "session_id" not in trace.metadata


def test_openinference_spans_become_steps() -> None:
    spans = [
        _span(1, None, 0, **{"openinference.span.kind": "AGENT", "session.id": "oi-1"}),
        _span(2, 1, 1, **CHAT, **{"openinference.span.kind": "LLM", "llm.token_count.prompt": 7}),
        _span(
            3,
            1,
            2,
            **{
                "openinference.span.kind": "TOOL",
                "tool.name": "search",
                "input.value": '{"q": "paris"}',
                "output.value": "Paris is in France.",
            },
        ),
        _span(4, 1, 3, **{"openinference.span.kind": "RETRIEVER", "input.value": "paris"}),
        _span(5, 1, 4, **{"openinference.span.kind": "CHAIN"}),
    ]
    trace = spans_to_trace(spans)
    assert trace is not None and trace.steps is not None and trace.session_id == "oi-1"
    assert [(s.kind, s.name) for s in trace.steps] == [
        ("agent", "span 1"),
        ("llm", "m"),
        ("tool", "search"),
        ("retrieval", "span 4"),
        ("chain", "span 5"),
    ]
    tool = trace.steps[2]
    assert (tool.arguments, tool.result) == ({"q": "paris"}, "Paris is in France.")
    assert trace.steps[1].tokens is not None and trace.steps[1].tokens.input == 7
    assert trace.steps[3].arguments == "paris"


def test_hostile_spans_give_a_valid_trace() -> None:
    """What the wire rules refuse is made storable or left out; a parent cycle, a span sent
    twice, a missing parent and a clock running backwards still give a valid trajectory."""
    spans = [
        _span(1, None, 100, **{"gen_ai.operation.name": "invoke_agent"}),
        _span(2, 1, 50, **CHAT),  # starts "before" its parent: another service's clock
        _span(
            3,
            1,
            120,
            **{
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "t\x00" + "n" * 300,
                "gen_ai.tool.call.arguments": '{"a": "\\u0000", "b": NaN}',
                "gen_ai.tool.call.result": "r" * (MAX_STEP_VALUE_CHARS + 1),
            },
        ),
        _span(3, 1, 120, **{"gen_ai.operation.name": "execute_tool"}),  # sent twice
        _span(4, 99, 130, **CHAT),  # its parent never arrived
        _span(5, 6, 140, **CHAT),  # 5 and 6: each the other's parent
        _span(6, 5, 150, **CHAT),
    ]
    trace = spans_to_trace(spans)
    assert trace is not None and trace.steps is not None
    ids = [int(s.id, 16) for s in trace.steps]
    assert ids == [1, 2, 3, 4]
    assert [s.parent_id for s in trace.steps] == [None, f"{1:016x}", f"{1:016x}", None]
    tool = trace.steps[2]
    assert tool.name.startswith("t\ufffd") and len(tool.name) == 256
    assert tool.arguments == '{"a": "\\u0000", "b": NaN}'  # kept as text: not storable as JSON
    assert tool.result_truncated and len(tool.result) == MAX_STEP_VALUE_CHARS
    assert "agent_fields_dropped" not in trace.metadata
    wire = trace.model_dump_json(exclude_none=True, exclude_defaults=True)
    assert isinstance(parse_trace(wire, 256 * 1024), Trace)


def test_a_big_trajectory_is_fitted_under_the_payload_limit() -> None:
    spans = [_span(1, None, 0, **{"gen_ai.operation.name": "invoke_agent"}), _span(2, 1, 1, **CHAT)]
    for index in range(3, 40):
        spans.append(
            _span(
                index,
                1,
                index,
                **{
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": "fetch",
                    "gen_ai.tool.call.result": "page " * 5000,
                },
            )
        )
    trace = spans_to_trace(spans)
    assert trace is not None and trace.steps is not None and len(trace.steps) == 39
    full = trace.model_dump_json(exclude_none=True, exclude_defaults=True)
    assert len(full) > 256 * 1024
    payload = trace_payload(trace, 256 * 1024)
    assert len(payload.encode()) <= 256 * 1024
    fitted = parse_trace(payload, 256 * 1024)
    assert isinstance(fitted, Trace) and fitted.steps is not None and len(fitted.steps) == 39
    assert all(s.result_truncated for s in fitted.steps[2:])
    tiny = parse_trace(trace_payload(trace, 2048), 1 << 20)
    assert isinstance(tiny, Trace) and tiny.steps is None
    assert tiny.metadata["steps_omitted"] == 39


def test_an_openinference_only_trace_is_published_with_its_answer() -> None:
    """OpenInference instrumentations set no gen_ai attributes: their LLM span is the answer."""
    llm = {
        "openinference.span.kind": "LLM",
        "llm.model_name": "gpt-4o-mini",
        "llm.input_messages.0.message.role": "system",
        "llm.input_messages.0.message.content": "Be brief.",
        "llm.input_messages.1.message.role": "user",
        "llm.input_messages.1.message.content": "Capital of France?",
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.content": "Paris.",
        "llm.token_count.prompt": 12,
        "llm.token_count.completion": 2,
        "input.value": '{"messages": []}',
        "input.mime_type": "application/json",
    }
    trace = spans_to_trace(
        [_span(1, None, 0, **{"openinference.span.kind": "CHAIN"}), _span(2, 1, 1, **llm)]
    )
    assert trace is not None
    assert (trace.input, trace.output, trace.model) == (
        "Capital of France?",
        "Paris.",
        "gpt-4o-mini",
    )
    assert trace.tokens is not None and (trace.tokens.input, trace.tokens.output) == (12, 2)
    assert trace.steps is None  # one generation: no trajectory
    plain = spans_to_trace(
        [
            _span(
                1,
                None,
                0,
                **{"openinference.span.kind": "LLM", "input.value": "hi", "output.value": "hello"},
            )
        ]
    )
    assert plain is not None and (plain.input, plain.output) == ("hi", "hello")


def test_messages_in_openai_form_and_from_a_details_event() -> None:
    """Some instrumentations record OpenAI-format messages (with an SDK dump's extra keys);
    others put the conversation in a details event: both become messages."""
    openai_form = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url"}]},
        {
            "role": "assistant",
            "content": "Hello!",
            "refusal": None,
            "annotations": [],
            "audio": None,
        },
        {"role": "tool", "tool_call_id": "nowhere", "content": "dangling"},  # its call is cut off
        {"role": "user", "content": "a\x00b"},
    ]
    chat = _span(2, None, 0, **CHAT, **{"gen_ai.input.messages": json.dumps(openai_form)})
    trace = spans_to_trace([chat])
    assert trace is not None and trace.messages is not None
    assert [(m.role, m.text) for m in trace.messages] == [
        ("user", "Hi\n"),
        ("assistant", "Hello!"),
        ("user", "a\ufffdb"),
    ]
    details = (
        "gen_ai.client.inference.operation.details",
        {"gen_ai.input.messages": QUESTION, "gen_ai.output.messages": ANSWER},
    )
    evented = Span(f"{1:032x}", f"{2:016x}", None, "chat", T0, T0 + MS, dict(CHAT), {}, [details])
    trace = spans_to_trace([evented])
    assert trace is not None and trace.messages is not None
    assert [(m.role, m.text) for m in trace.messages] == [
        ("user", "Weather in Paris?"),
        ("assistant", "It is 18°C in Paris."),
    ]


def test_a_deep_chain_of_spans_maps_quickly() -> None:
    """2,000 spans (the receiver's default cap per trace), each the parent of the next, half of
    them no step: the mapping stays linear and the trajectory capped."""
    spans = [_span(0, None, 0, **{"gen_ai.operation.name": "invoke_agent"})]
    for index in range(1, 2000):
        attributes = {"gen_ai.operation.name": "execute_tool"} if index % 2 else {}
        spans.append(_span(index, index - 1, index, **attributes))
    spans.append(_span(5000, 1999, 3000, **CHAT))
    started = time.perf_counter()
    trace = spans_to_trace(spans)
    elapsed = time.perf_counter() - started
    assert trace is not None and trace.steps is not None
    assert len(trace.steps) == 1001 - 1 and trace.metadata["steps_omitted"] == 2
    assert all(s.parent_id == p.id for p, s in zip(trace.steps, trace.steps[1:], strict=False))
    assert elapsed < 2.0, elapsed


def test_replay_fits_an_agent_trace_under_the_payload_limit(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`evalfleet replay --format otel` publishes what the receiver would: a trace whose steps
    make it too big is cut to fit, not dead-lettered by the sampler as oversized."""
    from typer.testing import CliRunner

    from evaluator.cli import app
    from evaluator.constants import TRACE_FIELD
    from evaluator.settings import get_settings

    export = tmp_path / "agent.json"
    export.write_text(json.dumps(otlp_json(1)))
    monkeypatch.setenv("EVALFLEET_REDIS_URL", redis_url)
    monkeypatch.setenv("EVALFLEET_MAX_TRACE_BYTES", "1024")  # the full trace is ~2.2 KB
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["replay", str(export), "--format", "otel"])
    assert result.exit_code == 0, result.output
    [(_, fields)] = redis_client.xrange(TRACES_STREAM)
    payload = fields[TRACE_FIELD.encode()]
    assert len(payload) <= 1024
    fitted = parse_trace(payload, 1024)
    assert isinstance(fitted, Trace) and fitted.session_id is not None
