"""A trace that stalls a worker child: the parent kills the child at the hard time limit, the
batch is split one task per trace, its batch-mates are scored, and the culprit is dead-lettered
after stalling its own task ``max_trace_stalls`` times. Real sampler, real Celery worker."""

from __future__ import annotations

import json
from collections.abc import Callable

import redis
from helpers import Fleet, fleet_env, make_trace, wait_for
from sqlmodel import Session, select

from evaluator.constants import DEAD_STREAM
from evaluator.ingest import publish_many
from evaluator.models import SampleDecision
from evaluator.scoring import plan_after_stall
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore, TraceRecord


def _entry(index: int) -> dict[str, object]:
    decision = SampleDecision(judge=False, rate=0.1).model_dump()
    return {"id": f"1-{index}", "trace": make_trace(index).model_dump_json(), "decision": decision}


def test_a_stalled_batch_is_split_and_a_repeat_staller_dead_lettered() -> None:
    settings = Settings(max_trace_stalls=2, trace_time_limit_s=5)
    batch = [_entry(i) for i in range(3)]
    split = plan_after_stall(batch, 0, 120, settings)
    assert [(e["id"], n) for e, n in split.retry] == [("1-0", 0), ("1-1", 0), ("1-2", 0)]
    once = plan_after_stall(batch[:1], 0, 5, settings)
    assert [n for _, n in once.retry] == [1] and not once.dead
    twice = plan_after_stall(batch[:1], 1, 5, settings)
    assert not twice.retry and twice.dead == batch[:1]
    assert twice.reason.startswith("stalled its worker 2 times: ran over the 5 s task time limit")


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
    assert dead[b"reason"].decode().startswith("stalled its worker 2 times")
    assert dead[b"payload"].startswith(b'{"trace_id":"t-000999"')
    assert all(p.poll() is None for p in fleet.processes), fleet.logs()
    store.close()
