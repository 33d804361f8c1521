"""Publishing to the stream, and the OTel GenAI / JSONL adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from helpers import make_trace
from typer.testing import CliRunner

from evaluator.cli import app
from evaluator.constants import TRACE_FIELD, TRACES_STREAM
from evaluator.ingest import publish, publish_many, read_otlp, read_traces, traces_from_otlp
from evaluator.models import Trace
from evaluator.settings import Settings

DATA = Path(__file__).parent / "data"


def test_publish_round_trips_the_trace(redis_client: redis.Redis) -> None:
    trace = make_trace(1, tokens={"input": 10, "output": 5}, metadata={"k": [1, 2]})
    entry_id = publish(redis_client, trace, Settings())
    [(read_id, fields)] = redis_client.xrange(TRACES_STREAM)
    assert read_id.decode() == entry_id
    assert Trace.model_validate_json(fields[TRACE_FIELD.encode()]) == trace


def test_publish_many_pipelines_and_trims_approximately(redis_client: redis.Redis) -> None:
    settings = Settings(stream_maxlen=1000)
    ids = publish_many(redis_client, (make_trace(i) for i in range(5000)), settings, chunk_size=700)
    assert len(ids) == 5000 and len(set(ids)) == 5000
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    length = redis_client.xlen(TRACES_STREAM)
    assert 1000 <= length < 5000  # approximate MAXLEN trims whole macro nodes only


def test_otel_current_conventions_with_retrieval() -> None:
    traces = {t.trace_id: t for t in read_otlp(DATA / "otel_genai_export.json")}
    rag = traces["5b8efff798038103d269b633813fc60c"]
    assert rag.input == "How do I rotate my API key?"
    assert rag.output == "Open Settings > Security > API keys and click Rotate."
    assert rag.contexts == [
        "API keys are rotated under Settings > Security > API keys.",
        "Old keys stay valid for 24 hours after rotation.",
    ]
    assert rag.retrieval is True
    assert rag.model == "gpt-4o-mini-2024-07-18"
    assert rag.tokens is not None and (rag.tokens.input, rag.tokens.output) == (412, 57)
    assert rag.finish_reason == "stop"
    assert rag.latency_ms == 1250.0
    assert (rag.tenant, rag.feature, rag.prompt_version, rag.app_version) == (
        "acme",
        "support-chat",
        "support-v8",
        "2.14.1",
    )
    assert rag.span_id == "a000000000000003"
    assert rag.metadata == {
        "provider": "openai",
        "session_id": "sess-42",
        "user_id": "u-7",
        "service": "support-bot",
    }
    # The conversation as the app sent it, in OpenAI chat format; one generation is no trajectory.
    assert rag.session_id == "sess-42" and rag.steps is None
    assert rag.messages is not None
    assert [(m.role, m.text) for m in rag.messages] == [
        ("system", "You are a support assistant."),
        ("user", "How do I rotate my API key?"),
        ("assistant", "Open Settings > Security > API keys and click Rotate."),
    ]


def test_otel_legacy_conventions_and_errors() -> None:
    traces = {t.trace_id: t for t in read_otlp(DATA / "otel_genai_export.json")}
    legacy = traces["6c9f0008a9149214e37ac744924ad71d"]
    assert (legacy.session_id, legacy.messages, legacy.steps) == (None, None, None)
    assert legacy.input == "Summarise the outage report."
    assert legacy.output == "The outage started at 09:12 when"
    assert legacy.finish_reason == "length"
    assert legacy.error == "client disconnected"
    assert legacy.tokens is not None and legacy.tokens.total == 1156
    assert legacy.retrieval is False and legacy.contexts == []


def test_otel_tool_calls_and_their_errors() -> None:
    span = {"traceId": "ab" * 16, "startTimeUnixNano": "1", "endTimeUnixNano": "9"}
    document = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {**span, "spanId": "01" * 8, "name": "request"},
                            {
                                **span,
                                "spanId": "02" * 8,
                                "parentSpanId": "01" * 8,
                                "name": "execute_tool lookup_plan",
                                "startTimeUnixNano": "2",
                                "attributes": [
                                    {
                                        "key": "gen_ai.operation.name",
                                        "value": {"stringValue": "execute_tool"},
                                    },
                                    {
                                        "key": "gen_ai.tool.name",
                                        "value": {"stringValue": "lookup_plan"},
                                    },
                                ],
                                "status": {"code": 2, "message": "plan service timed out"},
                            },
                            {
                                **span,
                                "spanId": "03" * 8,
                                "parentSpanId": "01" * 8,
                                "name": "chat",
                                "startTimeUnixNano": "3",
                                "attributes": [
                                    {
                                        "key": "gen_ai.operation.name",
                                        "value": {"stringValue": "chat"},
                                    }
                                ],
                            },
                        ]
                    }
                ]
            }
        ]
    }
    [trace] = traces_from_otlp(document)
    assert trace.metadata["tool_calls"] == [
        {"name": "lookup_plan", "error": "plan service timed out"}
    ]
    assert trace.error == "plan service timed out"


def test_otel_trace_without_generation_is_dropped() -> None:
    ids = {t.trace_id for t in read_otlp(DATA / "otel_genai_export.json")}
    assert "7da0111ab0250325f48bd855a35be82e" not in ids
    assert len(ids) == 2


def test_read_traces_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(make_trace(1).model_dump_json() + "\n\n" + '{"trace_id": "x"}\n')
    iterator = read_traces(path, 256 * 1024)
    assert next(iterator).trace_id == "t-000001"
    try:
        next(iterator)
    except ValueError as exc:
        assert f"{path}:3" in str(exc) and "output" in str(exc)
    else:
        raise AssertionError("invalid line accepted")


def test_schema_command_prints_the_trace_json_schema() -> None:
    result = CliRunner().invoke(app, ["schema", "trace"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema["title"] == "Trace"
    assert schema["required"] == ["trace_id", "output"]
    assert schema["additionalProperties"] is False


def test_replay_otel_file_publishes_converted_traces(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVALFLEET_REDIS_URL", redis_url)
    result = CliRunner().invoke(
        app, ["replay", str(DATA / "otel_genai_export.json"), "--format", "otel"]
    )
    assert result.exit_code == 0, result.output
    assert "published 2 traces" in result.output
    payloads = [
        Trace.model_validate_json(f[b"trace"]) for _, f in redis_client.xrange(TRACES_STREAM)
    ]
    assert {p.trace_id for p in payloads} == {
        "5b8efff798038103d269b633813fc60c",
        "6c9f0008a9149214e37ac744924ad71d",
    }
