"""Spans/s and traces/s one `evalfleet otlp-receiver` process sustains, and its memory with
10,000 traces pending.

    python bench/otlp_ingest.py [--requests 200] [--traces-per-request 100] [--clients 2]

Realistic traces of 7 spans (root, retrieval, embedding, tool, two chats with content, a
post-processing span) with GenAI attributes, protobuf-encoded, posted by client processes like
a Collector's batches. The receiver runs as its own process against a throwaway Redis.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from evaluator.ops.embedded import EmbeddedRedis, free_port
from evaluator.streams import connect

QUESTION = "How do I rotate my API key without downtime for the services that use it?"
ANSWER = "Go to Settings > Security > API keys, click Rotate, update your services within 24 hours."
CONTEXT = (
    "API keys are rotated under Settings > Security > API keys. The old key works for 24 hours."
)


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def trace_spans(trace: int, with_root: bool = True) -> list[Span]:
    messages = json.dumps([{"role": "user", "parts": [{"type": "text", "content": QUESTION}]}])
    output = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": ANSWER}]}])
    chat = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.provider.name": "openai",
        "gen_ai.input.messages": messages,
        "gen_ai.output.messages": output,
        "gen_ai.usage.input_tokens": 812,
        "gen_ai.usage.output_tokens": 64,
    }
    shapes = [
        ("answer_question", None, {"session.id": f"s-{trace % 97}", "evalfleet.tenant": "acme"}),
        (
            "retrieve",
            0,
            {
                "gen_ai.operation.name": "retrieval",
                "gen_ai.retrieval.documents": json.dumps([{"content": CONTEXT}] * 3),
            },
        ),
        (
            "embeddings",
            1,
            {
                "gen_ai.operation.name": "embeddings",
                "gen_ai.request.model": "text-embedding-3-small",
            },
        ),
        (
            "execute_tool lookup_plan",
            0,
            {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_plan"},
        ),
        ("chat gpt-4o-mini", 0, chat),
        ("chat gpt-4o-mini", 0, chat),
        ("postprocess", 0, {"app.step": "format"}),
    ]
    spans = []
    base = 1_763_900_000_000_000_000 + trace * 1_000_000_000
    for index, (name, parent, attributes) in enumerate(shapes):
        if parent is None and not with_root:
            continue
        spans.append(
            Span(
                trace_id=(trace + 1).to_bytes(16, "big"),
                span_id=((trace + 1) * 16 + index).to_bytes(8, "big"),
                parent_span_id=((trace + 1) * 16 + parent).to_bytes(8, "big")
                if parent is not None
                else b"",
                name=name,
                start_time_unix_nano=base + index * 1000,
                end_time_unix_nano=base + index * 1000 + 500,
                attributes=[_kv(k, v) for k, v in attributes.items()],
            )
        )
    return spans


def body(first: int, count: int, with_root: bool = True) -> bytes:
    resource = ResourceSpans(
        scope_spans=[
            ScopeSpans(
                spans=[s for t in range(first, first + count) for s in trace_spans(t, with_root)]
            )
        ]
    )
    resource.resource.attributes.extend(
        [_kv("service.name", "support-bot"), _kv("service.version", "2.1.0")]
    )
    return ExportTraceServiceRequest(resource_spans=[resource]).SerializeToString()


def client(url: str, bodies: list[bytes], results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with httpx.Client(timeout=60) as http:
        statuses = [
            http.post(
                url, content=b, headers={"Content-Type": "application/x-protobuf"}
            ).status_code
            for b in bodies
        ]
    results.put(statuses)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--traces-per-request", type=int, default=100)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    with EmbeddedRedis() as redis_server:
        port = free_port()
        env = {
            **os.environ,
            "EVALFLEET_REDIS_URL": redis_server.url,
            "EVALFLEET_OTLP_GRACE_S": os.environ.get("BENCH_GRACE_S", "1"),
            "EVALFLEET_OTLP_MAX_WAIT_S": "3600",
            "EVALFLEET_STREAM_MAXLEN": "10000000",
        }
        receiver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "evaluator.cli",
                "otlp-receiver",
                "--port",
                str(port),
                "--loglevel",
                "warning",
                "--flushers",
                os.environ.get("BENCH_FLUSHERS", "1"),
            ],
            env=env,
        )
        url = f"http://127.0.0.1:{port}/v1/traces"
        try:
            for _ in range(100):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            n, per = args.requests, args.traces_per_request
            bodies = [body(i * per, per) for i in range(n)]
            spans_per_request = per * 7
            results: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
            workers = [
                multiprocessing.Process(
                    target=client, args=(url, bodies[c :: args.clients], results)
                )
                for c in range(args.clients)
            ]
            started = time.perf_counter()
            for w in workers:
                w.start()
            statuses = [s for _ in workers for s in results.get()]
            seconds = time.perf_counter() - started
            for w in workers:
                w.join()
            assert statuses.count(200) == n, {s: statuses.count(s) for s in set(statuses)}
            client_redis = connect(redis_server.url)
            deadline = time.monotonic() + 120
            while client_redis.xlen("evalfleet:traces") < n * per and time.monotonic() < deadline:
                time.sleep(0.2)
            published_s = time.perf_counter() - started
            size_kib = len(bodies[0]) / 1024
            print(f"{n} requests x {spans_per_request} spans ({per} traces of 7 spans), ", end="")
            print(f"{args.clients} clients, {size_kib:.0f} KiB per request")
            spans_s, traces_s = n * spans_per_request / seconds, n * per / seconds
            print(f"accepted: {spans_s:,.0f} spans/s, {traces_s:,.0f} traces/s ({seconds:.1f}s)")
            count = client_redis.xlen("evalfleet:traces")
            print(
                f"published (grace 1 s included): {count:,} traces after {published_s:.1f}s", end=""
            )
            print(f" = {count * 7 / published_s:,.0f} spans/s end to end")

            # 10,000 traces pending: root never ends, max wait 1 h, so nothing is published.
            before_rss, before_redis = (
                rss_mb(receiver.pid),
                client_redis.info("memory")["used_memory"] / 2**20,
            )
            first = 10_000_000
            with httpx.Client(timeout=60) as http:
                for start in range(first, first + 10_000, 500):
                    http.post(
                        url,
                        content=body(start, 500, with_root=False),
                        headers={"Content-Type": "application/x-protobuf"},
                    )
            pending = client_redis.zcard("evalfleet:otlp:pending")
            after_redis = client_redis.info("memory")["used_memory"] / 2**20
            print(f"pending traces: {pending:,}; ", end="")
            print(f"receiver RSS {before_rss:.0f} -> {rss_mb(receiver.pid):.0f} MiB; ", end="")
            print(f"Redis used memory {before_redis:.0f} -> {after_redis:.0f} MiB")
        finally:
            receiver.terminate()
            receiver.wait(10)
            time.sleep(1.5)  # the flusher process leaves within a second of the receiver


if __name__ == "__main__":
    main()
