"""Generated stream entries — arbitrary bytes, arbitrary JSON for every Trace field, deep
nesting, huge strings, non-finite numbers, mixed-zone times — interleaved with valid traces,
through the real sampler and the real worker code on SQLite and PostgreSQL.

What must hold for every batch: nothing raises; every valid trace is scored exactly once;
every invalid entry is dead-lettered exactly once with a one-line reason; nothing is left
pending. ``test_fleet_*`` does the same through sampler and Celery worker processes.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from fuzz_entries import ARBITRARY, INVALID, MAX_TRACE_BYTES, VALID, Entry, entry_batches
from helpers import Fleet, fleet_env, wait_for
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from sqlalchemy import delete
from sqlmodel import Session, SQLModel, select

from evaluator.constants import DEAD_STREAM, HEURISTICS_QUEUE, SAMPLER_GROUP, TRACES_STREAM
from evaluator.evaluation.scoring import ScoringContext, run_heuristics
from evaluator.evaluators import evaluate_all, heuristic_evaluators
from evaluator.ledger import HEURISTICS
from evaluator.models import Trace, parse_trace
from evaluator.review import ReviewRouter
from evaluator.sampling import inflight
from evaluator.sampling.sampler import Sampler
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import LedgerRecord, ScoreRecord, TraceRecord
from evaluator.streams import group_info


def _settings(redis_url: str, database_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        max_trace_bytes=MAX_TRACE_BYTES,
        sampler_block_ms=10,
        claim_interval_s=3600,  # no reclaim pass mid-example
        heuristics_batch_size=7,  # several batches per example: batch-mates are tested too
    )


def _publish(client: redis.Redis, entries: list[Entry]) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        pipe.xadd(TRACES_STREAM, entry.fields)  # type: ignore[arg-type]
    return [i.decode() for i in pipe.execute()]


def _expected_to_score(entry: Entry) -> Trace | None:
    """What the entry's verdict must be: VALID and INVALID say so themselves; an ARBITRARY one
    is judged by the wire rules (the test then checks the pipeline keeps to that verdict)."""
    if entry.kind == INVALID:
        return None
    payload = entry.fields.get(b"trace")
    outcome = parse_trace(payload, MAX_TRACE_BYTES) if payload is not None else "no trace"
    if entry.kind == VALID:
        assert isinstance(outcome, Trace), f"generated valid trace refused: {outcome}"
    return outcome if isinstance(outcome, Trace) else None


def check_outcome(
    client: redis.Redis,
    store: SQLStore,
    entries: list[Entry],
    ids: list[str],
    evaluators: list[Any],
) -> None:
    """Every entry ended in exactly one place, and nothing is pending."""
    dead = client.xrange(DEAD_STREAM)
    dead_sources = Counter(fields[b"source_id"].decode() for _, fields in dead)
    for _, fields in dead:
        reason = fields[b"reason"].decode()
        assert reason and "\n" not in reason and len(reason) <= 1000, reason
        assert len(fields[b"payload"]) <= Settings().dead_letter_payload_bytes
    with Session(store.engine) as session:
        traces = {t.trace_id: t for t in session.exec(select(TraceRecord))}
        scores = Counter(s.trace_id for s in session.exec(select(ScoreRecord)))
        done = {
            r.trace_id
            for r in session.exec(select(LedgerRecord))
            if r.evaluator == HEURISTICS and r.state == "done"
        }
    for entry, entry_id in zip(entries, ids, strict=True):
        trace = _expected_to_score(entry)
        if trace is None:
            assert dead_sources[entry_id] == 1, f"{entry.kind} entry {entry_id} not dead-lettered"
            continue
        assert dead_sources[entry_id] == 0, (
            f"valid {entry_id} dead-lettered: {dead_reason(dead, entry_id)}"
        )
        assert trace.trace_id in traces and trace.trace_id in done, f"{entry_id} not scored"
        if entry.kind == VALID:  # unique ids: exactly its own row, and every heuristic's score
            assert traces[trace.trace_id].stream_id == entry_id
            assert scores[trace.trace_id] == len({s.id for s in evaluate_all(evaluators, trace)})
    assert group_info(client, TRACES_STREAM, SAMPLER_GROUP)["pending"] == 0
    assert inflight.count(client) == 0


def dead_reason(dead: list[Any], entry_id: str) -> str:
    return next(
        (f[b"reason"].decode() for _, f in dead if f[b"source_id"].decode() == entry_id), ""
    )


def _clear(client: redis.Redis, store: SQLStore) -> None:
    client.flushdb()
    with Session(store.engine) as session:
        for table in reversed(SQLModel.metadata.sorted_tables):
            session.execute(delete(table))
        session.commit()


@pytest.mark.timeout(600)
def test_generated_entries_through_sampler_and_worker(
    redis_client: redis.Redis, redis_url: str, database_url: str
) -> None:
    settings = _settings(redis_url, database_url)
    store = SQLStore(settings.sqlalchemy_url)
    evaluators = heuristic_evaluators(settings)
    ctx = ScoringContext(
        evaluators=evaluators,
        store=store,
        router=ReviewRouter(settings.review_thresholds, settings.review_routed_ttl_s),
        client=redis_client,
        settings=settings,
    )
    counts = Counter[str]()

    def dispatch(queue: str, batch: list[dict[str, Any]], batch_id: str) -> None:
        assert queue == HEURISTICS_QUEUE  # no judges configured
        run_heuristics(batch, ctx, batch_id)  # what the Celery task runs

    @hypothesis_settings(
        max_examples=int(os.environ.get("EVALFLEET_FUZZ_EXAMPLES", "150")),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(entry_batches(max_size=30))
    def run(entries: list[Entry]) -> None:
        _clear(redis_client, store)
        ids = _publish(redis_client, entries)
        sampler = Sampler(redis_client, settings, dispatch, consumer="fuzz", judges={})
        while sampler.step(block_ms=10):
            pass
        check_outcome(redis_client, store, entries, ids, evaluators)
        counts.update(entry.kind for entry in entries)

    try:
        run()
    finally:
        store.close()
    print(f"entries by kind: {dict(counts)}")
    assert counts[VALID] and counts[INVALID] and counts[ARBITRARY]


def test_fleet_processes_survive_generated_entries(
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    fleet_factory: Callable[[dict[str, str]], Fleet],
    tmp_path: Path,
) -> None:
    """The same through a sampler process and a Celery worker process: neither exits."""
    env = fleet_env(
        redis_url, database_url, max_trace_bytes=MAX_TRACE_BYTES, heuristics_batch_size=25
    )
    fleet = fleet_factory(env)
    worker = fleet.worker(concurrency=2)
    sampler = fleet.sampler()
    settings = _settings(redis_url, database_url)
    store = SQLStore(settings.sqlalchemy_url)

    @hypothesis_settings(
        max_examples=3,
        phases=[Phase.generate],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(entry_batches(max_size=120))
    def run(entries: list[Entry]) -> None:
        before = len(redis_client.xrange(DEAD_STREAM))
        ids = _publish(redis_client, entries)
        expected_dead = sum(_expected_to_score(e) is None for e in entries)

        def settled() -> bool:
            if group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)["pending"]:
                return False
            if redis_client.llen(HEURISTICS_QUEUE):
                return False
            with Session(store.engine) as session:
                stored = {t.stream_id for t in session.exec(select(TraceRecord))}
            dead = redis_client.xlen(DEAD_STREAM) - before
            return dead + sum(i in stored for i in ids) >= len(entries) and dead >= expected_dead

        wait_for(settled, 60, fleet.logs)
        everything = redis_client.xrange(DEAD_STREAM)
        mine = [(i, f) for i, f in everything if f[b"source_id"].decode() in set(ids)]
        assert len(mine) == expected_dead, fleet.logs()
        assert worker.poll() is None and sampler.poll() is None, fleet.logs()

    try:
        run()
        assert worker.poll() is None and sampler.poll() is None, fleet.logs()
    finally:
        store.close()
        fleet.stop_all()
        for process in fleet.processes:
            if process.poll() is None:
                Fleet.kill(process, signal.SIGKILL)
