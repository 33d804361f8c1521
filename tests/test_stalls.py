"""A trace that stalls a worker child: the parent kills the child at the hard time limit, the
batch is split one task per trace, its batch-mates are scored, and the culprit is dead-lettered
after stalling its own task ``max_trace_stalls`` times. Real sampler, real Celery worker."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import redis
from helpers import Fleet, fleet_env, make_trace, wait_for
from sqlmodel import Session, select

from evaluator.console.stats import fleet_stats
from evaluator.constants import DEAD_STREAM, HEURISTICS_QUEUE
from evaluator.evaluation.scoring import plan_after_loss
from evaluator.ingest import publish_many
from evaluator.models import SampleDecision
from evaluator.sampling import inflight
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import TraceRecord


def _entry(index: int) -> dict[str, object]:
    decision = SampleDecision(judge=False, rate=0.1).model_dump()
    return {"id": f"1-{index}", "trace": make_trace(index).model_dump_json(), "decision": decision}


def test_a_stalled_batch_is_split_and_a_repeat_staller_dead_lettered() -> None:
    settings = Settings(max_trace_stalls=2, trace_time_limit_s=5)
    batch = [_entry(i) for i in range(3)]
    why = "ran over the 5 s task time limit and was killed"
    split = plan_after_loss(batch, 0, settings, why)
    assert [(e["id"], n) for e, n in split.retry] == [("1-0", 0), ("1-1", 0), ("1-2", 0)]
    once = plan_after_loss(batch[:1], 0, settings, why)
    assert [n for _, n in once.retry] == [1] and not once.dead
    twice = plan_after_loss(batch[:1], 1, settings, why)
    assert not twice.retry and twice.dead == batch[:1]
    assert twice.reason == f"stalled or killed its worker 2 times (last: {why})"


def _slow_trace() -> str:
    """Valid, but costly to check: ``uniqueItems`` over thousands of objects is quadratic in
    the JSON Schema validator (tens of seconds here)."""
    document = [{"a": i} for i in range(6000)]
    return make_trace(
        999,
        output=json.dumps(document),
        output_schema={"type": "array", "uniqueItems": True},
    ).model_dump_json()


def test_stalling_trace_is_dead_lettered_and_its_batch_mates_scored(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    fleet_factory: Callable[[dict[str, str]], Fleet],
) -> None:
    env = fleet_env(
        redis_url,
        sqlite_url,
        heuristics_time_limit_s=2,
        trace_time_limit_s=2,
        max_trace_stalls=2,
        evaluator_budget_s=600,  # only the hard limit stops it
        max_trace_bytes=1024 * 1024,
    )
    fleet = fleet_factory(env)
    fleet.worker(concurrency=2)
    fleet.sampler()
    good = [make_trace(i).model_dump_json() for i in range(40)]
    publish_many(redis_client, [*good[:20], _slow_trace(), *good[20:]], Settings())
    store = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)

    def scored() -> int:
        with Session(store.engine) as session:
            return len(session.exec(select(TraceRecord.trace_id)).all())

    wait_for(lambda: redis_client.xlen(DEAD_STREAM) == 1 and scored() == 40, 90, fleet.logs)
    [(_, dead)] = redis_client.xrange(DEAD_STREAM)
    assert dead[b"reason"].decode().startswith("stalled or killed its worker 2 times (last: ran")
    assert dead[b"payload"].startswith(b'{"trace_id":"t-000999"')
    assert all(p.poll() is None for p in fleet.processes), fleet.logs()
    store.close()


def test_a_batch_the_broker_lost_is_dispatched_again(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    fleet_factory: Callable[[dict[str, str]], Fleet],
) -> None:
    """Celery's Redis transport loses a message a worker popped and was killed before recording
    (kombu#305): here the message is popped off the queue by hand, which leaves the same state.
    The sampler's in-flight record brings the batch back, and `stats` shows it meanwhile."""
    env = fleet_env(redis_url, sqlite_url, heuristics_time_limit_s=2, reaper_interval_s=1)
    fleet = fleet_factory(env)
    sampler = fleet.sampler()
    publish_many(redis_client, [make_trace(i) for i in range(30)], Settings())
    wait_for(lambda: redis_client.llen(HEURISTICS_QUEUE) == 1, 30, fleet.logs)
    assert redis_client.rpop(HEURISTICS_QUEUE)  # gone, as if a killed worker had taken it
    store = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)
    assert fleet_stats(redis_client, store).heuristics_in_flight == 1
    lost_at = time.monotonic()
    fleet.worker(concurrency=1, queues="heuristics")

    def scored() -> int:
        with Session(store.engine) as session:
            return len(session.exec(select(TraceRecord.trace_id)).all())

    wait_for(lambda: scored() == 30, 60, fleet.logs)
    back_s = time.monotonic() - lost_at
    wait_for(lambda: inflight.count(redis_client) == 0, 10, "in-flight record removed")
    # Due after 1.5 x the visibility timeout (10 s for a 2 s limit: at least 10 s).
    assert 15 <= back_s < 40, back_s
    assert sampler.poll() is None
    store.close()


def _stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _busy_child(pid: int) -> int | None:
    """A pool child of ``pid`` with over a second of CPU: the one holding the slow trace."""
    for entry in os.listdir("/proc"):
        stat = _stat(entry) if entry.isdigit() else None
        if stat and int(stat[1]) == pid and int(stat[11]) > os.sysconf("SC_CLK_TCK"):
            return int(entry)
    return None


def test_a_trace_whose_child_keeps_dying_is_dead_lettered(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    fleet_factory: Callable[[dict[str, str]], Fleet],
) -> None:
    """A child that dies while scoring (out of memory, a crash: here SIGKILL from outside) is
    replaced and the message redelivered; the redelivered batch is split, and the trace whose
    own task died twice is dead-lettered while its batch-mates are scored."""
    env = fleet_env(
        redis_url, sqlite_url, evaluator_budget_s=600, max_trace_stalls=2,
        max_trace_bytes=1024 * 1024, broker_visibility_timeout_s=600,
    )  # fmt: skip
    fleet = fleet_factory(env)
    worker = fleet.worker(concurrency=1, queues="heuristics", pool="prefork")
    fleet.sampler()
    wait_for(lambda: "ready." in fleet.logs(), 30, "worker ready")
    good = [make_trace(i).model_dump_json() for i in range(20)]
    publish_many(redis_client, [*good[:10], _slow_trace(), *good[10:]], Settings())
    store = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)
    kills = 0
    deadline = time.monotonic() + 120
    while redis_client.xlen(DEAD_STREAM) == 0 and time.monotonic() < deadline:
        child = _busy_child(worker.pid)
        if child is not None:
            os.kill(child, signal.SIGKILL)  # reject_on_worker_lost: redelivered at once
            kills += 1
        time.sleep(0.2)

    def scored() -> int:
        with Session(store.engine) as session:
            return len(session.exec(select(TraceRecord.trace_id)).all())

    wait_for(lambda: redis_client.xlen(DEAD_STREAM) == 1 and scored() == 20, 60, fleet.logs)
    [(_, dead)] = redis_client.xrange(DEAD_STREAM)
    reason = dead[b"reason"].decode()
    assert reason.startswith("stalled or killed its worker 2 times (last: its worker process died")
    assert kills >= 2 and worker.poll() is None, fleet.logs()
    store.close()
