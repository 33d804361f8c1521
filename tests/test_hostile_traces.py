"""Hostile traces mixed with good ones through a real sampler and a real Celery worker (prefork,
defaults for every budget and limit): the good ones are scored within the normal bound, each
hostile one ends as a score with its reason or a dead letter with its reason, no process dies."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import redis
from helpers import Fleet, fleet_env, make_trace, wait_for
from sqlmodel import Session, select

from evaluator.constants import DEAD_STREAM
from evaluator.ingest import publish_many
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import ScoreRecord, TraceRecord


def _hostile() -> dict[str, dict[str, Any]]:
    """trace id -> fields of a trace built to hang, exhaust or crash a naive evaluator."""
    return {
        "h-redos": {  # catastrophic backtracking for a backtracking engine
            "output": json.dumps("a" * 46 + "!"),
            "output_schema": {"type": "string", "pattern": "^(a+)+$"},
        },
        "h-backref": {
            "output": json.dumps("abab"),
            "output_schema": {"type": "string", "pattern": "^(ab)\\1$"},
        },
        "h-deep": {"output": "[" * 10_000 + "]" * 10_000, "output_format": "json"},
        "h-one-char": {"output": "a" * 1_000_000},
        "h-digits": {"output": "1-" * 400_000},  # number runs for the PII scanner
        "h-wide-schema": {
            "output": "{}",
            "output_schema": {
                "type": "object",
                "properties": {f"p{i}": {"type": "string"} for i in range(100_000)},
            },
        },
        "h-unique-items": {  # quadratic in a naive uniqueItems check
            "output": json.dumps([{"a": i} for i in range(6000)]),
            "output_schema": {"type": "array", "uniqueItems": True},
        },
    }


def test_hostile_traces_do_not_hold_up_good_ones(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    fleet_factory: Callable[[dict[str, str]], Fleet],
) -> None:
    env = fleet_env(redis_url, sqlite_url, max_trace_bytes=4 * 1024 * 1024)
    fleet = fleet_factory(env)
    worker = fleet.worker(concurrency=2, queues="heuristics")
    sampler = fleet.sampler()
    wait_for(lambda: "ready." in fleet.logs(), 30, "worker ready")
    hostile = _hostile()
    good = [make_trace(i) for i in range(300)]
    bad = [make_trace(900, trace_id=tid, **fields) for tid, fields in hostile.items()]
    mixed = good[:100] + bad[:4] + good[100:200] + bad[4:] + good[200:]
    store = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)
    started = time.monotonic()
    publish_many(redis_client, mixed, Settings(max_trace_bytes=4 * 1024 * 1024))

    def stored() -> set[str]:
        with Session(store.engine) as session:
            return set(session.exec(select(TraceRecord.trace_id)).all())

    good_ids = {t.trace_id for t in good}
    wait_for(lambda: good_ids <= stored(), 60, fleet.logs)
    good_seconds = time.monotonic() - started

    def settled() -> bool:
        return set(hostile) <= stored() | _dead_trace_ids(redis_client)

    wait_for(settled, 120, fleet.logs)
    with Session(store.engine) as session:
        scores = list(session.exec(select(ScoreRecord).where(ScoreRecord.trace_id.in_(hostile))))  # type: ignore[attr-defined]
    outcomes = {}
    for tid in hostile:
        mine = [s for s in scores if s.trace_id == tid]
        errors = [f"{s.name}: {s.reason}" for s in mine if s.status == "error" or s.passed is False]
        outcomes[tid] = errors
        assert all(s.reason for s in mine), (tid, [(s.name, s.reason) for s in mine])
    assert worker.poll() is None and sampler.poll() is None, fleet.logs()
    print(f"good traces scored {good_seconds:.1f} s after publishing; hostile: {outcomes}")
    assert good_seconds < 60
    store.close()


def _dead_trace_ids(client: redis.Redis) -> set[str]:
    """Trace ids of dead letters (their payloads may be cut short: read the id from the start)."""
    entries: Any = client.xrange(DEAD_STREAM)
    found = (re.match(rb'\{"trace_id":"([^"]+)"', f[b"payload"]) for _, f in entries)
    return {m.group(1).decode() for m in found if m}
