"""The OTLP/HTTP receiver and the span assembler: completion, restarts, bad input."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from pydantic import SecretStr
from starlette.testclient import TestClient

from evaluator.constants import TRACES_STREAM
from evaluator.ingest.assembly import SpanAssembler
from evaluator.ingest.receiver import create_receiver_app
from evaluator.models import Trace
from evaluator.settings import Settings

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def span(trace: int, index: int, parent: int | None, name: str, **attributes: Any) -> PbSpan:
    start = 1_763_900_000_000_000_000 + index * 1_000_000
    return PbSpan(
        trace_id=trace.to_bytes(16, "big"),
        span_id=(trace * 100 + index).to_bytes(8, "big"),
        parent_span_id=(trace * 100 + parent).to_bytes(8, "big") if parent is not None else b"",
        name=name,
        start_time_unix_nano=start,
        end_time_unix_nano=start + 500_000,
        attributes=[kv(k.replace("__", "."), v) for k, v in attributes.items()],
    )


def rag_spans(trace: int) -> list[PbSpan]:
    """Root, retrieval and chat spans of one RAG request (GenAI conventions)."""
    messages = json.dumps(
        [{"role": "user", "parts": [{"type": "text", "content": f"question {trace}"}]}]
    )
    answer = json.dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": f"answer {trace}"}]}]
    )
    docs = json.dumps([{"id": "d1", "content": f"context {trace}"}])
    return [
        span(trace, 0, None, "handle_request"),
        span(
            trace,
            1,
            0,
            "retrieve",
            gen_ai__operation__name="retrieval",
            gen_ai__retrieval__documents=docs,
        ),
        span(
            trace,
            2,
            0,
            "chat gpt-4o-mini",
            gen_ai__operation__name="chat",
            gen_ai__request__model="gpt-4o-mini",
            gen_ai__input__messages=messages,
            gen_ai__output__messages=answer,
            gen_ai__usage__input_tokens=120,
            gen_ai__usage__output_tokens=12,
        ),
    ]


def export(spans: list[PbSpan], service: str = "rag-app") -> bytes:
    resource_spans = ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])
    resource_spans.resource.attributes.append(kv("service.name", service))
    return ExportTraceServiceRequest(resource_spans=[resource_spans]).SerializeToString()


def published(client: redis.Redis) -> list[Trace]:
    return [Trace.model_validate_json(f[b"trace"]) for _, f in client.xrange(TRACES_STREAM)]


@pytest.fixture
def settings(redis_url: str, redis_client: redis.Redis) -> Settings:
    return Settings(redis_url=redis_url, otlp_grace_s=0.3, otlp_max_wait_s=1.5)


@pytest.fixture
def client(redis_client: redis.Redis, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_receiver_app(redis_client, settings, flush=False)) as test_client:
        yield test_client


def test_spans_split_and_out_of_order_make_one_trace(
    client: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    root, retrieval, chat = rag_spans(7)
    assembler = SpanAssembler(redis_client, settings)
    assert client.post("/v1/traces", content=export([chat]), headers=PROTOBUF).status_code == 200
    assert (
        client.post(
            "/v1/traces",
            content=gzip.compress(export([retrieval])),
            headers={**PROTOBUF, "Content-Encoding": "gzip"},
        ).status_code
        == 200
    )
    time.sleep(0.4)
    assert assembler.flush().published == 0  # no root yet: the request is still running
    answer = client.post("/v1/traces", content=export([root]), headers=PROTOBUF)
    assert ExportTraceServiceResponse.FromString(answer.content).partial_success.rejected_spans == 0
    assert assembler.flush().published == 0  # root ended, but within the grace period
    time.sleep(0.4)
    assert assembler.flush().published == 1
    [trace] = published(redis_client)
    assert trace.trace_id == f"{7:032x}" and trace.span_id == f"{702:016x}"
    assert (trace.input, trace.output, trace.contexts) == ("question 7", "answer 7", ["context 7"])
    assert trace.model == "gpt-4o-mini" and trace.tokens is not None and trace.tokens.input == 120
    assert trace.metadata["service"] == "rag-app" and "partial" not in trace.metadata
    assert assembler.flush().published == 0 and assembler.pending() == 0  # published once


def test_a_trace_whose_root_never_ends_is_published_as_partial(
    client: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    _, retrieval, chat = rag_spans(8)
    client.post("/v1/traces", content=export([retrieval, chat]), headers=PROTOBUF)
    assembler = SpanAssembler(redis_client, settings)
    time.sleep(0.8)
    assert assembler.flush().published == 0  # a long-running request is not published early
    time.sleep(0.9)
    counts = assembler.flush()
    assert (counts.published, counts.partial) == (1, 1)
    assert published(redis_client)[0].metadata["partial"] is True


def test_traces_without_genai_spans_are_dropped(
    client: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    client.post("/v1/traces", content=export([span(9, 0, None, "GET /health")]), headers=PROTOBUF)
    time.sleep(0.4)
    assert SpanAssembler(redis_client, settings).flush().dropped == 1
    assert redis_client.xlen(TRACES_STREAM) == 0


def test_restart_loses_nothing_and_publishes_once(
    redis_client: redis.Redis, settings: Settings
) -> None:
    with TestClient(create_receiver_app(redis_client, settings, flush=False)) as first:
        for trace in range(20, 30):
            first.post("/v1/traces", content=export(rag_spans(trace)), headers=PROTOBUF)
    # The first receiver is gone with 10 traces pending; a new one (two flushers) takes over.
    time.sleep(0.4)
    with (
        TestClient(create_receiver_app(redis_client, settings)),
        TestClient(create_receiver_app(redis_client, settings)),
    ):
        deadline = time.monotonic() + 10
        while redis_client.xlen(TRACES_STREAM) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    ids = [t.trace_id for t in published(redis_client)]
    assert sorted(ids) == [f"{i:032x}" for i in range(20, 30)]  # all of them, each once


def test_json_encoding_and_bad_input(
    client: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    document = {
        "resourceSpans": [
            {
                "resource": {"attributes": []},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "ab" * 16,
                                "spanId": "cd" * 8,
                                "name": "chat",
                                "startTimeUnixNano": "1",
                                "endTimeUnixNano": "2",
                                "attributes": [
                                    {"key": "gen_ai.request.model", "value": {"stringValue": "m"}}
                                ],
                            },
                            {"traceId": "", "spanId": "cd" * 8, "name": "no trace id"},
                            {"traceId": "zz" * 16, "spanId": "cd" * 8, "name": "not hex"},
                        ]
                    }
                ],
            }
        ]
    }
    answer = client.post("/v1/traces", json=document)
    assert answer.status_code == 200 and answer.json()["partialSuccess"]["rejectedSpans"] == "2"
    garbage = client.post("/v1/traces", content=b"\x00\xffgarbage", headers=PROTOBUF)
    assert garbage.status_code == 400 and "protobuf" in garbage.text
    assert (
        client.post(
            "/v1/traces", content=b"{not json", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )
    assert (
        client.post("/v1/traces", content=b"x", headers={"Content-Type": "text/plain"}).status_code
        == 415
    )
    bad_gzip = client.post(
        "/v1/traces", content=b"nope", headers={**PROTOBUF, "Content-Encoding": "gzip"}
    )
    assert bad_gzip.status_code == 400 and "gzip" in bad_gzip.text
    small = settings.model_copy(update={"otlp_max_body_bytes": 1024})
    with TestClient(create_receiver_app(redis_client, small, flush=False)) as strict:
        big = export(rag_spans(1) * 20)
        assert strict.post("/v1/traces", content=big, headers=PROTOBUF).status_code == 413
        bomb = gzip.compress(b"\x00" * 100_000)
        assert (
            strict.post(
                "/v1/traces", content=bomb, headers={**PROTOBUF, "Content-Encoding": "gzip"}
            ).status_code
            == 413
        )
    metrics = client.get("/metrics").text
    assert 'evalfleet_otlp_requests_total{outcome="malformed"}' in metrics


def test_token_and_backpressure(redis_client: redis.Redis, settings: Settings) -> None:
    guarded = settings.model_copy(
        update={"otlp_token": SecretStr("s3cret"), "otlp_max_pending_traces": 2}
    )
    with TestClient(create_receiver_app(redis_client, guarded, flush=False)) as client:
        body = export(rag_spans(1))
        assert client.post("/v1/traces", content=body, headers=PROTOBUF).status_code == 401
        auth = {**PROTOBUF, "Authorization": "Bearer s3cret"}
        assert (
            client.post(
                "/v1/traces", content=body, headers={**PROTOBUF, "Authorization": "Bearer no"}
            ).status_code
            == 401
        )
        for scheme in ("bearer", "BEARER", "Basic"):  # the scheme is case-insensitive (RFC 7235)
            header = {**PROTOBUF, "Authorization": f"{scheme} s3cret"}
            answer = client.post("/v1/traces", content=export([]), headers=header)
            assert answer.status_code == (401 if scheme == "Basic" else 200), scheme
        assert (
            client.post("/v1/traces", content=export(rag_spans(2)), headers=auth).status_code == 200
        )
        assert (
            client.post("/v1/traces", content=export(rag_spans(3)), headers=auth).status_code == 200
        )
        time.sleep(0.6)  # the back-pressure check is cached for 0.5 s
        busy = client.post("/v1/traces", content=export(rag_spans(4)), headers=auth)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "5"


def test_receiver_over_real_http(redis_client: redis.Redis, settings: Settings) -> None:
    """The CLI's server (uvicorn) with the flusher running."""
    import threading

    import uvicorn

    from evaluator.ops.embedded import free_port

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_receiver_app(redis_client, settings), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/traces", content=export(rag_spans(42)), headers=PROTOBUF
        )
        assert answer.status_code == 200
        deadline = time.monotonic() + 5
        while redis_client.xlen(TRACES_STREAM) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert published(redis_client)[0].trace_id == f"{42:032x}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_in_process_exporter(redis_client: redis.Redis, settings: Settings) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from evaluator.ingest.exporter import EvalfleetSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": "inline-app"}))
    provider.add_span_processor(SimpleSpanProcessor(EvalfleetSpanExporter(redis_client, settings)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("request") as root:
        root.set_attribute("user.id", "u-7")
        with tracer.start_as_current_span("chat") as chat:
            chat.set_attribute("gen_ai.operation.name", "chat")
            chat.set_attribute("gen_ai.request.model", "gpt-4o-mini")
            chat.set_attribute("gen_ai.prompt.0.role", "user")
            chat.set_attribute("gen_ai.prompt.0.content", "hello?")  # the older conventions
            chat.set_attribute("gen_ai.completion.0.content", "hi!")
        trace_id = f"{root.get_span_context().trace_id:032x}"
    deadline = time.monotonic() + 5
    while redis_client.xlen(TRACES_STREAM) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    provider.shutdown()
    [trace] = published(redis_client)
    assert (trace.trace_id, trace.input, trace.output) == (trace_id, "hello?", "hi!")
    assert trace.metadata["user_id"] == "u-7" and trace.metadata["service"] == "inline-app"


def test_cli_receiver_with_a_flusher_process(
    redis_url: str, redis_client: redis.Redis, sqlite_url: str
) -> None:
    import subprocess
    import sys

    from helpers import fleet_env, wait_for

    from evaluator.ops.embedded import free_port

    port = free_port()
    env = {**fleet_env(redis_url, sqlite_url, otlp_grace_s=0.3)}
    command = [
        sys.executable,
        "-m",
        "evaluator.cli",
        "otlp-receiver",
        "--port",
        str(port),
        "--flushers",
        "1",
        "--loglevel",
        "warning",
    ]
    receiver = subprocess.Popen(command, env=env)
    try:

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 20, "receiver up")
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/traces", content=export(rag_spans(77)), headers=PROTOBUF
        )
        assert answer.status_code == 200
        wait_for(
            lambda: redis_client.xlen(TRACES_STREAM) == 1, 20, "published by the flusher process"
        )
        assert published(redis_client)[0].trace_id == f"{77:032x}"
    finally:
        receiver.terminate()
        receiver.wait(20)
    # The flusher process leaves with its receiver, even when uvicorn re-raises SIGTERM.
    time.sleep(2)
    children = subprocess.run(
        ["pgrep", "-f", "multiprocessing.spawn"], capture_output=True, text=True
    )
    assert children.stdout.strip() == ""


def log_export(records: list[LogRecord]) -> bytes:
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=records)])]
    ).SerializeToString()


def event(trace: int, span_index: int, name: str, body: AnyValue) -> LogRecord:
    return LogRecord(
        trace_id=trace.to_bytes(16, "big"),
        span_id=(trace * 100 + span_index).to_bytes(8, "big"),
        event_name=name,
        body=body,
        attributes=[kv("gen_ai.system", "openai")],
    )


def kvlist(**values: Any) -> AnyValue:
    body = AnyValue()
    for key, value in values.items():
        item = body.kvlist_value.values.add(key=key)
        item.value.CopyFrom(value if isinstance(value, AnyValue) else kv(key, value).value)
    return body


def test_message_content_from_log_events(
    client: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    """Spans without content (the instrumentation's default) + GenAI events on /v1/logs."""
    root = span(9, 0, None, "handle_request")
    chat = span(9, 2, 0, "chat gpt-4o-mini", gen_ai__request__model="gpt-4o-mini")
    records = [
        event(9, 2, "gen_ai.system.message", kvlist(content="Answer from the docs.")),
        event(9, 2, "gen_ai.user.message", kvlist(content="an earlier question")),
        event(9, 2, "gen_ai.user.message", kvlist(content="how do I rotate keys?")),
        event(
            9,
            2,
            "gen_ai.choice",
            kvlist(
                index=0,
                finish_reason="stop",
                message=kvlist(role="assistant", content="Click Rotate."),
            ),
        ),
        LogRecord(body=AnyValue(string_value="GET /healthz 200")),  # an app log: ignored
        event(9, 2, "http.request", AnyValue(string_value="not a GenAI event")),  # ignored
    ]
    answer = client.post("/v1/logs", content=log_export(records), headers=PROTOBUF)
    assert answer.status_code == 200
    assert not ExportLogsServiceResponse.FromString(
        answer.content
    ).partial_success.rejected_log_records
    client.post("/v1/traces", content=export([chat, root]), headers=PROTOBUF)
    time.sleep(0.4)
    assert SpanAssembler(redis_client, settings).flush().published == 1
    [trace] = published(redis_client)
    assert (trace.input, trace.output) == ("how do I rotate keys?", "Click Rotate.")
    # OTLP/JSON logs, and the current conventions' single details event.
    details = {
        "resourceLogs": [{"scopeLogs": [{"logRecords": [{
            "traceId": f"{10:032x}", "spanId": f"{1002:016x}",
            "eventName": "gen_ai.client.inference.operation.details",
            "attributes": [
                {"key": "gen_ai.input.messages", "value": {"stringValue": json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": "q10"}]}])}},
                {"key": "gen_ai.output.messages", "value": {"stringValue": json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": "a10"}]}])}},
            ],
        }]}]}]
    }  # fmt: skip
    headers = {"Content-Type": "application/json"}
    assert client.post("/v1/logs", json=details, headers=headers).status_code == 200
    chat10 = span(10, 2, 0, "chat", gen_ai__operation__name="chat")
    client.post("/v1/traces", content=export([chat10, span(10, 0, None, "root")]), headers=PROTOBUF)
    time.sleep(0.4)
    SpanAssembler(redis_client, settings).flush()
    assert [(t.input, t.output) for t in published(redis_client)][1] == ("q10", "a10")
    bad = client.post("/v1/logs", content=b"\x00garbage", headers=PROTOBUF)
    assert bad.status_code == 400 and "ExportLogsServiceRequest" in bad.text


JSON_HEADERS = {"Content-Type": "application/json"}


def status_of(answer: httpx.Response) -> dict[str, Any]:
    """The google.rpc.Status of an error answer, decoded by its Content-Type (the request's)."""
    from google.protobuf import json_format
    from google.rpc.status_pb2 import Status

    media_type = answer.headers["content-type"].split(";")[0]
    if media_type == "application/json":
        document: dict[str, Any] = answer.json()
        return document
    assert media_type == "application/x-protobuf"
    return json_format.MessageToDict(Status.FromString(answer.content))


def test_errors_are_status_messages_in_the_request_encoding(
    client: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    """OTLP/HTTP: every 4xx/5xx body is a google.rpc.Status, protobuf or JSON like the request;
    400 carries a BadRequest detail; 503 (retried by senders) says when to come back."""
    garbage = client.post("/v1/traces", content=b"\x00\xffgarbage", headers=PROTOBUF)
    status = status_of(garbage)
    assert garbage.status_code == 400 and status["code"] == 3  # INVALID_ARGUMENT
    assert "ExportTraceServiceRequest" in status["message"]
    [detail] = status["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["fieldViolations"][0]["description"] == status["message"]
    broken = client.post("/v1/logs", content=b"{not json", headers=JSON_HEADERS)
    assert broken.headers["content-type"] == "application/json"
    assert broken.status_code == 400 and broken.json()["code"] == 3
    assert "OTLP/JSON logs" in broken.json()["message"]
    plain = client.post("/v1/traces", content=b"x", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and "text/plain" in status_of(plain)["message"]

    small = settings.model_copy(
        update={"otlp_max_body_bytes": 1024, "otlp_token": SecretStr("s3cret")}
    )
    with TestClient(create_receiver_app(redis_client, small, flush=False)) as strict:
        for headers in (PROTOBUF, JSON_HEADERS):
            unauthorised = strict.post("/v1/traces", content=b"{}", headers=headers)
            assert unauthorised.status_code == 401
            assert unauthorised.headers["content-type"] == headers["Content-Type"]
            assert status_of(unauthorised) == {
                "code": 16,  # UNAUTHENTICATED
                "message": "a valid bearer token is required",
            }
            big = strict.post(
                "/v1/traces",
                content=b" " * 2048,
                headers={**headers, "Authorization": "Bearer s3cret"},
            )
            assert big.status_code == 413 and status_of(big)["code"] == 8  # RESOURCE_EXHAUSTED

    busy = settings.model_copy(update={"otlp_max_pending_traces": 1})
    with TestClient(create_receiver_app(redis_client, busy, flush=False)) as behind:
        first = behind.post("/v1/traces", content=export(rag_spans(5)), headers=PROTOBUF)
        assert first.status_code == 200
        time.sleep(0.6)  # the back-pressure check is cached for 0.5 s
        for headers, empty in ((PROTOBUF, b""), (JSON_HEADERS, b"{}")):
            answer = behind.post("/v1/traces", content=empty, headers=headers)
            assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
            assert status_of(answer)["code"] == 14  # UNAVAILABLE


def json_span(raw: PbSpan) -> dict[str, Any]:
    """A protobuf span as OTLP/JSON, its hex ids in UPPERCASE (the spec allows either case)."""
    attributes = [
        {"key": kv.key, "value": {"stringValue": kv.value.string_value}}
        for kv in raw.attributes
        if kv.value.HasField("string_value")
    ]
    return {
        "traceId": raw.trace_id.hex().upper(),
        "spanId": raw.span_id.hex().upper(),
        "parentSpanId": raw.parent_span_id.hex().upper(),
        "name": raw.name,
        "startTimeUnixNano": str(raw.start_time_unix_nano),
        "endTimeUnixNano": str(raw.end_time_unix_nano),
        "attributes": attributes,
    }


def test_one_trace_half_json_with_uppercase_ids_half_protobuf(
    client: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    root, retrieval, chat = rag_spans(0xAB)  # ids with hex letters: ...ab, ...42cc
    document = {
        "resourceSpans": [{"scopeSpans": [{"spans": [json_span(root), json_span(retrieval)]}]}]
    }
    assert client.post("/v1/traces", json=document).json() == {}  # all accepted
    assert client.post("/v1/traces", content=export([chat]), headers=PROTOBUF).status_code == 200
    time.sleep(0.4)
    assert SpanAssembler(redis_client, settings).flush().published == 1
    [trace] = published(redis_client)
    assert trace.trace_id == f"{0xAB:032x}" and trace.span_id == f"{0xAB * 100 + 2:016x}"
    assert (trace.output, trace.contexts) == (f"answer {0xAB}", [f"context {0xAB}"])
    assert "partial" not in trace.metadata  # the JSON root counted as this trace's root


def test_all_zero_ids_are_refused_and_a_zero_parent_is_none(
    client: TestClient, redis_client: redis.Redis, settings: Settings
) -> None:
    chat = span(3, 2, None, "chat", gen_ai__request__model="m")
    zero_span = json_span(span(4, 0, None, "chat", gen_ai__request__model="m"))
    zero_span["spanId"] = "0" * 16
    spans = [
        {**json_span(chat), "parentSpanId": "0" * 16},  # a root, as the Collector reads it
        {**json_span(chat), "traceId": "0" * 32, "spanId": "AB" * 8},
        zero_span,
        {**json_span(chat), "spanId": "AB" * 8, "parentSpanId": "not hex!" * 2},
    ]
    answer = client.post("/v1/traces", json={"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})
    assert answer.json()["partialSuccess"]["rejectedSpans"] == "3"
    zero = PbSpan(trace_id=(5).to_bytes(16, "big"), span_id=bytes(8), name="chat")
    answer = client.post("/v1/traces", content=export([zero]), headers=PROTOBUF)
    assert ExportTraceServiceResponse.FromString(answer.content).partial_success.rejected_spans == 1
    time.sleep(0.4)
    assert SpanAssembler(redis_client, settings).flush().published == 1
    [trace] = published(redis_client)
    assert trace.trace_id == f"{3:032x}" and "partial" not in trace.metadata


def zstd_stream(data: bytes) -> bytes:
    """zstd as a streaming encoder (the Collector's) writes it: no content size in the frame."""
    import zstandard

    compressor = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    return compressor.compress(data) + compressor.flush()


def test_content_encodings(
    client: TestClient,
    redis_client: redis.Redis,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gzip, deflate (zlib-wrapped and raw), the Collector's zlib, zstd; anything else is 415;
    a truncated body is 400 and a bomb 413 for each, decompressed no further than the limit."""
    import zlib

    import evaluator.ingest.receiver as receiver_module

    zstandard = pytest.importorskip("zstandard")

    def raw_deflate(data: bytes) -> bytes:
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return compressor.compress(data) + compressor.flush()

    codecs = {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "deflate (raw)": raw_deflate,
        "zlib": zlib.compress,
        "zstd": zstd_stream,
        "zstd (sized)": zstandard.ZstdCompressor().compress,
    }
    for index, (name, compress) in enumerate(codecs.items()):
        encoding = {"Content-Encoding": name.split()[0]}
        body = compress(export(rag_spans(60 + index)))
        answer = client.post("/v1/traces", content=body, headers={**PROTOBUF, **encoding})
        assert answer.status_code == 200, (name, answer.content)
        cut = client.post("/v1/traces", content=body[:-9], headers={**PROTOBUF, **encoding})
        assert cut.status_code == 400 and "truncated" in status_of(cut)["message"], name
        document = json.dumps({"resourceSpans": []}).encode()
        answer = client.post(
            "/v1/traces", content=compress(document), headers={**JSON_HEADERS, **encoding}
        )
        assert answer.status_code == 200 and answer.json() == {}, name
    time.sleep(0.4)
    assert SpanAssembler(redis_client, settings).flush().published == len(codecs)

    brotli = client.post(
        "/v1/traces", content=b"x", headers={**JSON_HEADERS, "Content-Encoding": "br"}
    )
    assert brotli.status_code == 415 and brotli.headers["content-type"] == "application/json"
    assert brotli.json() == {
        "code": 12,  # UNIMPLEMENTED
        "message": "Content-Encoding 'br' is not supported; use gzip, deflate, zstd or none",
    }

    small = settings.model_copy(update={"otlp_max_body_bytes": 1024})
    with TestClient(create_receiver_app(redis_client, small, flush=False)) as strict:
        for name, compress in codecs.items():
            bomb = compress(b"\x00" * 1_000_000)
            assert len(bomb) <= 1024, name
            headers = {**PROTOBUF, "Content-Encoding": name.split()[0]}
            answer = strict.post("/v1/traces", content=bomb, headers=headers)
            assert answer.status_code == 413, name
            assert status_of(answer)["message"] == "decompressed body over 1024 bytes"

    monkeypatch.setattr(receiver_module, "zstandard", None)  # an install without zstandard
    body = zstd_stream(export(rag_spans(70)))
    answer = client.post(
        "/v1/traces", content=body, headers={**PROTOBUF, "Content-Encoding": "zstd"}
    )
    assert answer.status_code == 415
    assert "zstandard" in status_of(answer)["message"]


def test_the_decompressed_size_cap_bounds_memory() -> None:
    """A bomb is stopped at the limit: what is held is the limit plus a small margin."""
    import tracemalloc
    import zlib

    from evaluator.ingest.receiver import decode_content

    limit = 16 * 1024 * 1024
    bomb = zlib.compress(b"\x00" * 100_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(OverflowError):
            decode_content(bomb, "deflate", limit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit * 1.2  # one decompress call for it all held the output twice


def test_finish_reason_and_response_id() -> None:
    """GenAI conventions: finish_reason from gen_ai.response.finish_reasons, else from the output
    messages (apps that fill only those, on the span or in a details event); the answer's
    gen_ai.response.id is kept for the evaluation events."""
    from evaluator.ingest.otel import spans_to_trace
    from evaluator.ingest.spans import Span

    text = [{"type": "text", "content": "It is cut"}]
    output = [
        {"role": "assistant", "parts": text, "finish_reason": ""},
        {"role": "assistant", "parts": text, "finish_reason": "length"},
    ]

    def trace(attributes: dict[str, Any], events: list[Any] | None = None) -> Trace:
        chat = Span(f"{1:032x}", f"{2:016x}", None, "chat", 1, 2, attributes, {}, events or [])
        answer = spans_to_trace([chat])
        assert answer is not None
        return answer

    messages = {"gen_ai.operation.name": "chat", "gen_ai.output.messages": json.dumps(output)}
    assert trace(messages).finish_reason == "length"
    details = ("gen_ai.client.inference.operation.details", {"gen_ai.output.messages": output})
    assert trace({"gen_ai.operation.name": "chat"}, [details]).finish_reason == "length"
    both = trace({**messages, "gen_ai.response.finish_reasons": ["stop"]})
    assert both.finish_reason == "stop"  # the response attribute first
    assert trace({"gen_ai.operation.name": "chat"}).finish_reason is None
    assert "response_id" not in both.metadata
    identified = trace({**messages, "gen_ai.response.id": "chatcmpl-42"})
    assert identified.metadata["response_id"] == "chatcmpl-42"


def test_with_a_token_every_route_needs_it_but_the_probes(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Enumerated from the app's routes, so a route added without the token check fails here;
    without a token configured the receiver is open (README, the OTLP receiver's section)."""
    from helpers import http_get

    from evaluator.ops.embedded import free_port

    port = free_port()
    guarded = settings.model_copy(update={"otlp_token": SecretStr("s3cret"), "metrics_port": port})
    probes = {"/healthz", "/readyz"}
    with TestClient(create_receiver_app(redis_client, guarded, flush=False)) as client:
        paths = set()
        for route in client.app.routes:  # type: ignore[attr-defined]
            paths.add(route.path)
            for method in sorted(route.methods):
                answer = client.request(method, route.path, content=export([]), headers=PROTOBUF)
                if route.path in probes:
                    assert answer.status_code in (200, 503), (method, route.path)
                else:
                    assert answer.status_code == 401, (method, route.path, answer.status_code)
        assert {"/v1/traces", "/v1/logs", "/metrics"} | probes <= paths
        authorised = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert authorised.status_code == 200 and "evalfleet_otlp_requests_total" in authorised.text
        status, body = http_get(port, "/metrics")  # Prometheus' port: no token
        assert status == 200 and "evalfleet_otlp_requests_total" in body
    assert http_get(port, "/metrics", timeout=1)[0] == 0  # stopped with the app
