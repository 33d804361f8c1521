"""A real OpenTelemetry-instrumented app (tests/otel_app.py: the official OpenAI instrumentation
and the SDK's OTLP/HTTP exporter, gzip or deflate compressed) sends to the receiver; its traces
flow to scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import uvicorn
from helpers import Fleet, fleet_env, wait_for
from openai_server import OpenAIServer
from sqlmodel import Session, select

from evaluator.constants import TRACES_STREAM
from evaluator.ingest.receiver import create_receiver_app
from evaluator.models import Trace
from evaluator.ops.embedded import free_port
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import ScoreRecord, TraceRecord

pytest.importorskip("opentelemetry.instrumentation.openai_v2")


def run_app(
    redis_url: str, redis_client: redis.Redis, mode: str, compression: str
) -> tuple[dict[str, dict[str, str]], dict[str, Trace]]:
    """Run tests/otel_app.py against a receiver, its exporters compressing as the standard
    variable says; what the app sent and the published Traces."""
    settings = Settings(redis_url=redis_url, otlp_grace_s=0.5)
    port = free_port()
    app = create_receiver_app(redis.Redis.from_url(redis_url), settings)
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, "receiver started")
        with OpenAIServer() as llm:
            command = [
                sys.executable,
                str(Path(__file__).parent / "otel_app.py"),
                llm.base_url,
                f"http://127.0.0.1:{port}/v1/traces",
                "6",
                mode,
            ]
            env = {**os.environ, "OTEL_EXPORTER_OTLP_COMPRESSION": compression}
            done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        sent = {row["trace_id"]: row for row in map(json.loads, done.stdout.splitlines())}
        wait_for(lambda: redis_client.xlen(TRACES_STREAM) == 6, 20, "6 traces published")
    finally:
        server.should_exit = True
        thread.join(10)

    traces = {
        t.trace_id: t
        for t in (
            Trace.model_validate_json(f[b"trace"]) for _, f in redis_client.xrange(TRACES_STREAM)
        )
    }
    assert set(traces) == set(sent)
    return sent, traces


def assert_content(sent: dict[str, dict[str, str]], traces: dict[str, Trace]) -> None:
    """Each published Trace carries the question, answer and document the app used."""
    for trace_id, row in sent.items():
        trace = traces[trace_id]
        expected = (row["question"], row["answer"], [row["context"]])
        assert (trace.input, trace.output, trace.contexts) == expected


def test_instrumented_app_to_scores(
    redis_url: str,
    redis_client: redis.Redis,
    sqlite_url: str,
    fleet_factory: Callable[[dict[str, str]], Fleet],
) -> None:
    sent, traces = run_app(redis_url, redis_client, "spans", "gzip")
    assert_content(sent, traces)
    for trace in traces.values():
        assert (trace.model, trace.tenant, trace.prompt_version, trace.app_version) == (
            "gpt-4o-mini",
            "acme",
            "support-v7",
            "2.1.0",
        )
        assert trace.metadata["service"] == "support-bot" and trace.metadata["provider"] == "openai"
        assert trace.retrieval and trace.span_id and "partial" not in trace.metadata
        # gen_ai.response.id: what the sink's evaluation events name the completion by.
        assert trace.metadata["response_id"].startswith("chatcmpl-")

    fleet = fleet_factory(fleet_env(redis_url, sqlite_url))
    fleet.worker()
    fleet.sampler()
    store = SQLStore(sqlite_url)
    wait_for(lambda: store.count(TraceRecord) == 6, 60, fleet.logs)
    with Session(store.engine) as session:
        scored = set(session.exec(select(ScoreRecord.trace_id)).all())
    assert scored == set(sent)
    store.close()


def test_message_content_from_log_events(redis_url: str, redis_client: redis.Redis) -> None:
    """The instrumentation's default: content only in log-based events, sent to /v1/logs; both
    exporters deflate (zlib) their bodies."""
    sent, traces = run_app(redis_url, redis_client, "events", "deflate")
    assert_content(sent, traces)
    for trace in traces.values():
        assert trace.finish_reason == "stop" and trace.model == "gpt-4o-mini"
