"""The real thing: sampler and Celery worker subprocesses against real Redis and SQL."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from helpers import Fleet, fleet_env, make_trace, wait_for
from typer.testing import CliRunner

from evaluator.cli import app
from evaluator.console.stats import fleet_stats
from evaluator.constants import (
    HEURISTICS_QUEUE,
    REVIEW_STREAM,
    SAMPLER_GROUP,
    TRACES_STREAM,
    UNACKED_PREFIX,
)
from evaluator.ingest import publish_many
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import ScoreRecord, TraceRecord
from evaluator.streams import group_info

UNACKED = f"{UNACKED_PREFIX}{HEURISTICS_QUEUE}"  # heuristics workers' record of taken tasks

FleetFactory = Callable[[dict[str, str]], Fleet]
CHECKS_PER_TRACE = 7  # text RAG trace: every heuristic but JSON validity and forbidden phrases


def mixed_traces(n: int) -> list[Any]:
    """Every 10th trace leaks an email (routed to review); every 25th declares JSON output."""
    traces = []
    for i in range(n):
        fields: dict[str, Any] = {}
        if i % 10 == 0:
            fields["output"] = "Ask maria@fjordlab.dk, she had the same problem."
        elif i % 25 == 1:
            fields.update(output_format="json", output='{"ok": true}')
        traces.append(make_trace(i, **fields))
    return traces


def test_end_to_end_exact_counts(
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    store: SQLStore,
    fleet_factory: FleetFactory,
) -> None:
    n = 400
    fleet = fleet_factory(fleet_env(redis_url, database_url))
    fleet.worker(concurrency=2)
    fleet.sampler()
    publish_many(redis_client, mixed_traces(n), Settings())
    wait_for(
        lambda: store.count(TraceRecord) == n, 60, lambda: f"{n} traces scored\n{fleet.logs()}"
    )
    summary = {row["evaluator"]: row for row in store.score_summary()}
    json_traces = sum(1 for i in range(n) if i % 10 and i % 25 == 1)
    assert summary["json_validity"]["count"] == json_traces
    for name in (
        "length_bounds",
        "ai_self_reference",
        "unsupported_urls",
        "refusal",
        "finish_reason",
        "rag_no_context",
    ):
        assert summary[name]["count"] == n, name
    assert summary["pii_leak"] == {
        "evaluator": "pii_leak",
        "name": "pii_leak",
        "count": n,
        "passed": n - n // 10,
        "failed": n // 10,
        "errors": 0,
        "mean": 0.9,
    }
    assert store.count(ScoreRecord) == n * CHECKS_PER_TRACE + json_traces
    wait_for(lambda: redis_client.xlen(REVIEW_STREAM) == n // 10, 10, "review items routed")
    assert group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP) == {
        "pending": 0,
        "lag": 0,
        "consumers": 1,
    }
    assert redis_client.llen(HEURISTICS_QUEUE) == 0

    for name, value in fleet_env(redis_url, database_url).items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["stats", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["traces_scored"] == n and stats["pending"] == 0 and stats["dead_letters"] == 0
    assert stats["review_stream_length"] == stats["review_pending"] == n // 10
    assert {row["evaluator"] for row in stats["scores"]} == set(summary)


def _freeze_when(
    process: subprocess.Popen[bytes], condition: Callable[[], bool], what: str
) -> None:
    """SIGSTOP the process group at a moment when ``condition`` holds (retrying until it does)."""
    for _ in range(200):
        wait_for(condition, 30, what, interval=0.001)
        os.killpg(process.pid, signal.SIGSTOP)
        if condition():
            return
        os.killpg(process.pid, signal.SIGCONT)
    raise AssertionError(f"could not catch the process while {what}")


def test_kill_9_sampler_and_worker_mid_work_every_trace_scored_exactly_once(
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    store: SQLStore,
    fleet_factory: FleetFactory,
) -> None:
    n = 3000
    env = fleet_env(
        redis_url,
        database_url,
        # The visibility timeout is derived from the time limit (twice it, at least 10 s), as
        # with the defaults (120 s limit: lost work is back within about 4 minutes).
        heuristics_time_limit_s=2,
        claim_idle_ms=1000,
        claim_interval_s=0.5,
        sampler_batch_size=100,
        heuristics_batch_size=50,
    )
    fleet = fleet_factory(env)
    worker = fleet.worker(concurrency=1, queues="heuristics")
    wait_for(lambda: "ready." in fleet.logs(), 30, "worker ready")
    publish_many(redis_client, mixed_traces(n), Settings())
    sampler = fleet.sampler("sampler-a")

    def pending() -> int:
        return int(group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)["pending"])

    def work_in_flight() -> bool:
        return redis_client.llen(HEURISTICS_QUEUE) + redis_client.hlen(UNACKED) > 0

    # Freeze each process while it holds unacknowledged work, then kill -9 both.
    _freeze_when(sampler, lambda: pending() > 0 and work_in_flight(), "the sampler holds entries")
    _freeze_when(worker, lambda: redis_client.hlen(UNACKED) > 0, "the worker holds a task")
    assert redis_client.hlen(UNACKED) > 0 and pending() > 0
    scored_before = store.count(TraceRecord)
    assert scored_before < n
    Fleet.kill(worker)
    Fleet.kill(sampler)
    # Meanwhile the lost work is visible: stats show the task taken and not acknowledged.
    assert fleet_stats(redis_client, store).unacked[HEURISTICS_QUEUE] > 0
    killed_at = time.monotonic()

    # Restart under a new consumer name: the old one's entries must come back through XAUTOCLAIM.
    fleet.worker(concurrency=1, queues="heuristics")
    fleet.sampler("sampler-b")
    wait_for(
        lambda: store.count(TraceRecord) == n, 90, lambda: f"all traces scored\n{fleet.logs()}"
    )
    wait_for(
        lambda: pending() == 0 and redis_client.hlen(UNACKED) == 0,
        30,
        f"nothing in flight: pending={pending()} unacked={redis_client.hgetall(UNACKED)}",
    )
    print(f"every trace scored {time.monotonic() - killed_at:.1f} s after the kill")
    json_traces = sum(1 for i in range(n) if i % 10 and i % 25 == 1)
    assert store.count(ScoreRecord) == n * CHECKS_PER_TRACE + json_traces
    assert redis_client.xlen(REVIEW_STREAM) == n // 10  # each leak routed exactly once


def _queued_entries(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """Decode the Celery messages sitting in a Redis-broker queue into their task entries."""
    entries = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        args = body[0]
        entries += args[0]
    return entries


def test_sigterm_finishes_and_acks_the_batch(
    redis_client: redis.Redis, redis_url: str, sqlite_url: str, fleet_factory: FleetFactory
) -> None:
    n = 20_000
    publish_many(redis_client, (make_trace(i) for i in range(n)), Settings())
    fleet = fleet_factory(fleet_env(redis_url, sqlite_url, max_heuristics_queue_depth=100_000))
    sampler = fleet.sampler("sampler-term")
    wait_for(
        lambda: group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)["pending"] > 0, 30, "reading"
    )
    sampler.send_signal(signal.SIGTERM)
    assert sampler.wait(timeout=20) == 0, fleet.logs()
    group = group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)
    assert group["pending"] == 0
    dispatched = _queued_entries(redis_client, HEURISTICS_QUEUE)
    assert len(dispatched) == n - group["lag"]  # everything read was dispatched, nothing twice
    assert len({e["id"] for e in dispatched}) == len(dispatched)
    assert 0 < len(dispatched) < n, "SIGTERM should arrive before the stream is drained"
