"""The Trace model's chat and agent fields (session_id, messages, steps): valid shapes, the wire
rules for each, and single-turn traces meaning exactly what they did before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from evaluator.cli import app
from evaluator.models import (
    MAX_STEP_VALUE_CHARS,
    MAX_STEPS,
    Trace,
    describe_validation_error,
    parse_trace,
)

DATA = Path(__file__).parent / "data"
BASE = {"trace_id": "t-1", "output": "It is 18°C and sunny in Paris."}
NEW_FIELDS = {"session_id", "messages", "steps"}

CHAT = {
    **BASE,
    "session_id": "sess-42",
    "messages": [
        {"role": "system", "content": "You answer weather questions."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello, ask me about the weather."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
        {"role": "assistant", "content": "It is 18°C and sunny in Paris."},
    ],
}

AGENT = {
    **BASE,
    "input": "Weather in Paris?",
    "steps": [
        {"id": "a", "kind": "agent", "name": "weather-agent", "started_at": "2026-01-01T10:00:00"},
        {"id": "b", "kind": "llm", "parent_id": "a", "model": "gpt-4o", "tokens": {"input": 50}},
        {
            "id": "c",
            "kind": "tool",
            "name": "get_weather",
            "parent_id": "a",
            "tool_call_id": "call_1",
            "arguments": {"city": "Paris"},
            "error": "timeout after 5 s",
            "latency_ms": 5000.0,
        },
        {
            "id": "d",
            "kind": "tool",
            "name": "get_weather",
            "parent_id": "a",
            "attempt": 2,
            "arguments": {"city": "Paris"},
            "result": {"temp_c": 18},
        },
        {"id": "e", "kind": "llm", "parent_id": "a", "result": "It is 18°C and sunny in Paris."},
    ],
}


def parse(document: dict[str, Any]) -> Trace | str:
    return parse_trace(json.dumps(document).encode(), 256 * 1024)


def test_a_chat_turn_parses_and_its_input_is_the_last_user_message() -> None:
    trace = parse(CHAT)
    assert isinstance(trace, Trace), trace
    assert trace.session_id == "sess-42" and trace.messages is not None
    assert trace.input == "Weather in Paris?"  # not given: the last user message's text
    assert trace.messages[4].tool_calls and trace.messages[4].tool_calls[0].function.arguments
    assert [m.role for m in trace.messages][-2:] == ["tool", "assistant"]
    given = parse({**CHAT, "input": "what the app says"})
    assert isinstance(given, Trace) and given.input == "what the app says"
    # The wire form round-trips (what publish sends).
    again = parse_trace(trace.model_dump_json(exclude_none=True, exclude_defaults=True), 1 << 20)
    assert again == trace


def test_an_agent_trajectory_parses_in_order_with_parents_and_attempts() -> None:
    trace = parse(AGENT)
    assert isinstance(trace, Trace), trace
    assert trace.steps is not None
    assert [(s.id, s.kind, s.parent_id, s.attempt) for s in trace.steps] == [
        ("a", "agent", None, 1),
        ("b", "llm", "a", 1),
        ("c", "tool", "a", 1),
        ("d", "tool", "a", 2),
        ("e", "llm", "a", 1),
    ]
    first = trace.steps[0].started_at
    assert first is not None and first.utcoffset() is not None  # naive is UTC
    assert trace.steps[2].error == "timeout after 5 s" and trace.steps[3].result == {"temp_c": 18}
    assert trace.steps[1].tokens is not None and trace.steps[1].tokens.total == 50
    again = parse_trace(trace.model_dump_json(exclude_none=True, exclude_defaults=True), 1 << 20)
    assert again == trace


def test_single_turn_traces_mean_what_they_meant() -> None:
    """Dumps made by the model before these fields existed: the old fields are identical and the
    new ones are absent."""
    rows = [
        json.loads(line) for line in (DATA / "single_turn_traces.jsonl").read_text().splitlines()
    ]
    assert len(rows) >= 5
    for row in rows:
        trace = parse_trace(row["payload"].encode(), 256 * 1024)
        assert isinstance(trace, Trace), trace
        dump = trace.model_dump(mode="json")
        assert {k: v for k, v in dump.items() if k not in NEW_FIELDS} == row["dump"]
        assert all(dump[name] is None for name in NEW_FIELDS)
        wire = trace.model_dump_json(exclude_none=True, exclude_defaults=True)
        assert not NEW_FIELDS & set(json.loads(wire))  # what publish sends is unchanged


def test_long_message_texts_are_valid_and_parts_are_bounded() -> None:
    # The bound of 100 is on a message's list of parts, never on its text (it once was: every
    # real conversation with a message over 100 characters was dead-lettered).
    long_text = "word " * 20_000
    for content in (long_text, [{"type": "text", "text": long_text}]):
        trace = parse({**BASE, "messages": [{"role": "user", "content": content}]})
        assert isinstance(trace, Trace) and trace.input == long_text
    parts = [{"type": "text", "text": "x"}] * 101
    refused = parse({**BASE, "messages": [{"role": "user", "content": parts}]})
    assert isinstance(refused, str) and "messages.0.content" in refused and "100" in refused


def test_long_results_are_cut_and_marked() -> None:
    big = "x" * (MAX_STEP_VALUE_CHARS + 10)
    trace = parse({**BASE, "steps": [{"id": "1", "kind": "tool", "result": big}]})
    assert isinstance(trace, Trace) and trace.steps
    assert trace.steps[0].result == big[:MAX_STEP_VALUE_CHARS] and trace.steps[0].result_truncated
    structured = {"rows": ["y" * 100] * 200}  # JSON over the cap: kept as its cut JSON text
    trace = parse({**BASE, "steps": [{"id": "1", "kind": "tool", "arguments": structured}]})
    assert isinstance(trace, Trace) and trace.steps
    step = trace.steps[0]
    assert isinstance(step.arguments, str) and len(step.arguments) == MAX_STEP_VALUE_CHARS
    assert step.arguments.startswith('{"rows": ["yyy') and step.arguments_truncated
    assert not step.result_truncated
    small = parse({**BASE, "steps": [{"id": "1", "kind": "tool", "result": {"ok": True}}]})
    assert isinstance(small, Trace) and small.steps and not small.steps[0].result_truncated


def _with(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``document`` with the value at a dotted path replaced."""
    copy: dict[str, Any] = json.loads(json.dumps(document))
    *parents, last = path.split(".")
    target: Any = copy
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return copy


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (_with(CHAT, "session_id", ""), "session_id: String should have at least 1 character"),
        (_with(CHAT, "session_id", "s" * 257), "session_id: String should have at most 256"),
        (_with(CHAT, "session_id", "a\x00b"), "session_id: must not contain a NUL character"),
        (_with(CHAT, "session_id", 42), "session_id: Input should be a valid string"),
        (_with(CHAT, "messages.1.role", "robot"), "messages.1.role: Input should be 'system'"),
        (_with(CHAT, "messages.1.content", None), "messages.1.content: a user message must have"),
        (_with(CHAT, "messages.1.content", "a\x00"), "messages.1.content: must not contain a NUL"),
        (
            _with(CHAT, "messages.3.content", [{"type": "image_url", "text": "x"}]),
            "messages.3.content",
        ),
        (
            _with(CHAT, "messages.3.content", [{"type": "text", "text": "a\x00"}]),
            "messages.3.content.0.text: must not contain a NUL",
        ),
        (
            _with(CHAT, "messages.5.tool_call_id", "call_9"),
            "messages.5.tool_call_id: 'call_9' is not the id of a tool call of an earlier",
        ),
        (
            _with(CHAT, "messages.5", {"role": "tool", "content": "x"}),
            "messages.5.tool_call_id: a tool message must name the tool call it answers",
        ),
        (
            _with(CHAT, "messages.1.tool_call_id", "call_1"),
            "messages.1.tool_call_id: a user message answers no tool call",
        ),
        (
            _with(CHAT, "messages.1.tool_calls", []),
            "messages.1.tool_calls: a user message makes no tool calls",
        ),
        (
            _with(CHAT, "messages.4.tool_calls.0.function.arguments", {"city": "Paris"}),
            "messages.4.tool_calls.0.function.arguments: Input should be a valid string",
        ),
        (_with(CHAT, "messages.4.tool_calls.0.type", "code"), "messages.4.tool_calls.0.type"),
        (_with(CHAT, "messages.1.contnet", "typo"), "messages.1.contnet: Extra inputs"),
        (_with(AGENT, "steps.2.kind", "robot"), "steps.2.kind: Input should be 'llm'"),
        (
            _with(AGENT, "steps.3.parent_id", "z"),
            "steps.3.parent_id: 'z' is not the id of an earlier step",
        ),
        (
            _with(AGENT, "steps.0.parent_id", "e"),  # a later step is no parent
            "steps.0.parent_id: 'e' is not the id of an earlier step",
        ),
        (_with(AGENT, "steps.4.id", "b"), "steps.4.id: 'b' is already the id of an earlier step"),
        (_with(AGENT, "steps.3.attempt", 0), "steps.3.attempt: Input should be greater than"),
        (_with(AGENT, "steps.3.attempt", 2.0), "steps.3.attempt: Input should be a valid integer"),
        (_with(AGENT, "steps.3.attempt", "2"), "steps.3.attempt: Input should be a valid integer"),
        (_with(AGENT, "steps.2.latency_ms", "5000"), "steps.2.latency_ms: Input should be a valid"),
        (_with(AGENT, "steps.2.error", "a\x00b"), "steps.2.error: must not contain a NUL"),
        (_with(AGENT, "steps.2.name", "n" * 257), "steps.2.name: String should have at most 256"),
        (
            _with(AGENT, "steps.2.arguments", {"city": "a\x00"}),
            "steps.2.arguments.city: must not contain a NUL",
        ),
        (
            _with(AGENT, "steps.1.tokens", {"input": 3.0}),
            "steps.1.tokens.input: Input should be a valid integer",
        ),
        (
            _with(AGENT, "steps.0.ended_at", "2026-01-01T09:00:00Z"),
            "steps.0: ended_at is before started_at",
        ),
        (_with(AGENT, "steps.0.started_at", 1700000000), "steps.0.started_at: Input should be"),
        (_with(AGENT, "steps.1.extra", 1), "steps.1.extra: Extra inputs are not permitted"),
        (
            {**BASE, "steps": [{"id": str(i), "kind": "tool"} for i in range(MAX_STEPS + 1)]},
            f"steps: List should have at most {MAX_STEPS} items",
        ),
        ({**BASE, "steps": {"id": "1"}}, "steps: Input should be a valid array"),
    ],
)
def test_each_invalid_shape_gives_a_one_line_reason_naming_the_field(
    document: dict[str, Any], reason: str
) -> None:
    verdict = parse(document)
    assert isinstance(verdict, str), verdict
    assert verdict.startswith(reason) and "\n" not in verdict and len(verdict) <= 1000, verdict


def test_non_finite_numbers_in_steps_are_refused_from_raw_json() -> None:
    for payload in (
        '{"trace_id": "t", "output": "x", "steps": [{"id": "1", "kind": "tool", "result": NaN}]}',
        '{"trace_id": "t", "output": "x", "steps": [{"id": "1", "kind": "tool", '
        '"arguments": {"a": [1e400]}}]}',
        '{"trace_id": "t", "output": "x", "steps": [{"id": "1", "kind": "llm", '
        '"latency_ms": Infinity}]}',
    ):
        verdict = parse_trace(payload.encode(), 1 << 20)
        assert isinstance(verdict, str) and "must be a finite number" in verdict, verdict
        assert verdict.startswith("steps.0."), verdict


def test_deep_arguments_are_refused_cheaply() -> None:
    deep: Any = "leaf"
    for _ in range(300):
        deep = [deep]
    # On the wire the JSON parser stops it; built in Python (an adapter), the free-form walk.
    verdict = parse_trace(
        json.dumps({**BASE, "steps": [{"id": "1", "kind": "tool", "arguments": deep}]}), 1 << 20
    )
    assert isinstance(verdict, str) and "recursion limit exceeded" in verdict, verdict
    with pytest.raises(ValidationError) as refused:
        Trace.model_validate({**BASE, "steps": [{"id": "1", "kind": "tool", "arguments": deep}]})
    reason = describe_validation_error(refused.value)
    assert reason.startswith("steps.0.arguments.0.0.") and "nests deeper than 200" in reason


def test_schema_command_shows_the_new_fields() -> None:
    result = CliRunner().invoke(app, ["schema", "trace"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema["required"] == ["trace_id", "output"]  # still all a trace needs
    for name in NEW_FIELDS:
        assert schema["properties"][name]["description"], name
    definitions = schema["$defs"]
    assert set(definitions["Step"]["properties"]["kind"]["enum"]) >= {"llm", "tool", "agent"}
    assert definitions["Message"]["properties"]["role"]["enum"] == [
        "system",
        "developer",
        "user",
        "assistant",
        "tool",
    ]
    assert "messages" in schema["description"] and "steps" in schema["description"]


def test_an_app_cannot_publish_into_the_sessions_namespace() -> None:
    # The fleet scores completed sessions as "session:<digest>": an app's trace of that name
    # would mix with a session's scores, so the sampler dead-letters it with the reason.
    from evaluator.sampling.sampler import parse_entry

    payload = json.dumps({**BASE, "trace_id": "session:abc"}).encode()
    reason = parse_entry({b"trace": payload}, 256 * 1024)
    assert reason == (
        "trace_id: must not start with 'session:' (reserved for the sessions the fleet evaluates)"
    )
    assert isinstance(parse_trace(payload, 256 * 1024), Trace)  # the fleet's own work parses
    assert isinstance(parse_entry({b"trace": json.dumps(BASE).encode()}, 256 * 1024), Trace)
