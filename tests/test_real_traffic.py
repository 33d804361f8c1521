"""Ordinary inputs that once broke the spine: each must end as a score or a dead letter with a
reason, never as a crash, a crash loop, or batch-mates taken down with it."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from helpers import make_trace
from sqlalchemy import text
from sqlmodel import Session, select
from typer.testing import CliRunner

from evaluator.cli import app
from evaluator.constants import DEAD_STREAM, REVIEW_STREAM, SAMPLER_GROUP, TRACES_STREAM
from evaluator.evaluation.scoring import ScoringContext, run_batch, score_batch
from evaluator.evaluators import heuristic_evaluators
from evaluator.models import SampleDecision, parse_trace
from evaluator.ops.dlq import TruncatedPayload, get_dead, redrive
from evaluator.review import ReviewRouter
from evaluator.review.routing import republish_unrouted
from evaluator.sampling.sampler import Sampler
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import LedgerRecord, TraceRecord
from evaluator.streams import group_info

BASE = {"trace_id": "t-1", "output": "fine"}


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({**BASE, "cost_usd": float("inf")}, "cost_usd: must be a finite number"),
        ({**BASE, "latency_ms": float("nan")}, "latency_ms: must be a finite number"),
        ({**BASE, "metadata": {"a": [1, float("nan")]}}, "metadata.a.1: must be a finite number"),
        ({**BASE, "retrieval": "yes"}, "retrieval: Input should be a valid boolean"),
        ({**BASE, "latency_ms": "812"}, "latency_ms: Input should be a valid number"),
        ({**BASE, "tokens": {"input": 3.0}}, "tokens.input: Input should be a valid integer"),
        ({**BASE, "output": "a\x00b"}, "output: must not contain a NUL character"),
        ({**BASE, "prompt_version": "v" * 129}, "prompt_version: String should have at most 128"),
    ],
)
def test_wire_rules_give_the_reason(document: dict[str, Any], reason: str) -> None:
    verdict = parse_trace(json.dumps(document).encode(), 256 * 1024)
    assert isinstance(verdict, str) and verdict.startswith(reason), verdict


def test_wire_rules_for_bytes_json_cannot_express() -> None:
    overflow = b'{"trace_id": "t", "output": "x", "cost_usd": 1e400}'
    assert parse_trace(overflow, 1024) == "cost_usd: must be a finite number (not NaN or Infinity)"
    lone = parse_trace(b'{"trace_id": "t", "output": "\\ud800"}', 1024)
    assert "unpaired UTF-16 surrogate" in str(lone)
    paired = parse_trace(b'{"trace_id": "t", "output": "\\ud83d\\ude00"}', 1024)
    assert not isinstance(paired, str) and paired.output == "\N{GRINNING FACE}"
    assert parse_trace(b'{"trace_id": "t", "output": "\xff"}', 1024) == (
        "payload is not valid UTF-8 (byte 0xff at offset 29)"
    )


def test_naive_and_aware_times_compare_as_utc() -> None:
    mixed = {**BASE, "started_at": "2026-01-01T00:00:00", "ended_at": "2026-01-01T00:00:01Z"}
    trace = parse_trace(json.dumps(mixed), 1024)
    assert not isinstance(trace, str) and trace.started_at and trace.started_at.tzinfo is not None
    reversed_ = {**mixed, "started_at": "2026-01-01T00:00:02"}
    assert parse_trace(json.dumps(reversed_), 1024) == "ended_at is before started_at"


def _sampler(client: redis.Redis, batches: list[list[dict[str, Any]]], consumer: str) -> Sampler:
    settings = Settings(sampler_block_ms=10, claim_interval_s=0.01, claim_idle_ms=100)
    return Sampler(client, settings, lambda _, b, __: batches.append(b), consumer, judges={})


def test_entries_of_any_bytes_are_dead_lettered_even_when_reclaimed(
    redis_client: redis.Redis,
) -> None:
    """A consumer died holding non-UTF-8 entries; the one that reclaims them dead-letters them
    (the poison guard itself once crashed on such bytes) and keeps the good ones."""
    redis_client.xgroup_create(TRACES_STREAM, SAMPLER_GROUP, id="0", mkstream=True)
    redis_client.xadd(TRACES_STREAM, {b"\xff\xfe": b"x"})
    redis_client.xadd(TRACES_STREAM, {b"note": b"\xc3\x28"})
    redis_client.xadd(TRACES_STREAM, {"trace": make_trace(1).model_dump_json()})
    redis_client.xreadgroup(SAMPLER_GROUP, "died", {TRACES_STREAM: ">"}, count=10)
    batches: list[list[dict[str, Any]]] = []
    survivor = _sampler(redis_client, batches, "survivor")
    time.sleep(0.15)  # past claim_idle_ms
    while survivor.step(block_ms=10):
        pass
    assert [json.loads(e["trace"])["trace_id"] for b in batches for e in b] == ["t-000001"]
    reasons = [f[b"reason"].decode() for _, f in redis_client.xrange(DEAD_STREAM)]
    assert reasons == [
        "entry has no 'trace' field (fields: \\xff\\xfe)",
        "entry has no 'trace' field (fields: note)",
    ]
    assert group_info(redis_client, TRACES_STREAM, SAMPLER_GROUP)["pending"] == 0


def test_dead_letters_keep_a_capped_payload_and_refuse_a_blind_redrive(
    redis_client: redis.Redis,
) -> None:
    settings = Settings(dead_letter_payload_bytes=1024, dead_stream_maxlen=100)
    big = json.dumps({"trace_id": "big", "output": "x" * 400_000})
    redis_client.xadd(TRACES_STREAM, {"trace": big})
    loop = Sampler(redis_client, settings, lambda *_: None, "c", judges={})
    loop.step(block_ms=10)
    [(dead_id, _)] = redis_client.xrange(DEAD_STREAM)
    letter = get_dead(redis_client, dead_id.decode())
    assert letter is not None and letter.truncated and len(letter.payload) == 1024
    assert letter.payload_bytes == len(big) and len(letter.payload_sha256) == 64
    assert letter.reason.startswith(f"payload is {len(big)} bytes, over the limit")
    with pytest.raises(TruncatedPayload, match="redrive it with --payload-file"):
        redrive(redis_client, [letter.id], settings)
    for _ in range(400):  # the stream is trimmed to about its MAXLEN
        redis_client.xadd(TRACES_STREAM, {"x": "y"})
    while loop.step(block_ms=10):
        pass
    assert redis_client.xlen(DEAD_STREAM) < 250


def test_replay_refuses_lines_the_sampler_would_refuse(tmp_path: Any, redis_url: str) -> None:
    lines = tmp_path / "t.jsonl"
    lines.write_text(
        make_trace(1).model_dump_json() + "\n" + json.dumps({**BASE, "output": "x" * 3000})
    )
    env = {"EVALFLEET_REDIS_URL": redis_url, "EVALFLEET_MAX_TRACE_BYTES": "2048"}
    result = CliRunner().invoke(app, ["replay", str(lines)], env=env)
    output = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code == 2 and "t.jsonl:2: payload is 3033 bytes, over the limit" in output
    lines.write_text(json.dumps({**BASE, "latency_ms": float("nan")}))
    result = CliRunner().invoke(app, ["replay", "--validate", str(lines)], env=env)
    assert result.exit_code == 2 and "latency_ms: must be a finite number" in result.output


def test_a_batch_the_database_refuses_in_part_keeps_its_good_traces(
    store: SQLStore, redis_client: redis.Redis
) -> None:
    """A database rule (here a trigger, on SQLite and PostgreSQL alike) refuses one trace: its
    40 batch-mates are stored and only it is dead-lettered, with the database's message."""
    with store.engine.begin() as connection:
        if store.engine.dialect.name == "sqlite":
            connection.execute(text(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON traces WHEN NEW.trace_id = 'poison'"
                " BEGIN SELECT RAISE(ABORT, 'poison trace refused'); END"
            ))  # fmt: skip
        else:
            connection.execute(text(
                "CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                "IF NEW.trace_id = 'poison' THEN RAISE EXCEPTION 'poison trace refused'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            ))  # fmt: skip
            connection.execute(text(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON traces "
                "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            ))  # fmt: skip
    traces = [make_trace(i) for i in range(40)]
    traces.insert(17, make_trace(99, trace_id="poison"))
    decision = SampleDecision(judge=False, rate=0.1).model_dump()
    batch = [
        {"id": f"1763630000000-{i}", "trace": t.model_dump_json(), "decision": decision}
        for i, t in enumerate(traces)
    ]
    settings = Settings()
    ctx = ScoringContext(heuristic_evaluators(settings), store, ReviewRouter(), redis_client)
    result = run_batch("heuristics", score_batch, batch, ctx)
    assert result["traces"] == 40 and result["dead_lettered"] == 1
    assert store.count(TraceRecord) == 40
    [(_, dead)] = redis_client.xrange(DEAD_STREAM)
    assert dead[b"source_id"] == b"1763630000000-17"
    assert b"database refused the trace" in dead[b"reason"]
    assert b"poison trace refused" in dead[b"reason"]
    with Session(store.engine) as session:
        row = session.exec(select(LedgerRecord).where(LedgerRecord.trace_id == "poison")).one()
    assert row.state == "dead_lettered"


def test_review_items_in_sql_but_not_on_the_stream_are_republished(
    store: SQLStore, redis_client: redis.Redis
) -> None:
    """A worker killed between its commit and its XADD left review items only in SQL: the
    reaper's pass puts each on the stream once, however often it runs."""
    leak = make_trace(1, output="Write to maria.lopez@gmail.com or call +1 415 555 2671.")
    ctx = ScoringContext(heuristic_evaluators(Settings()), store, ReviewRouter(), redis_client)
    scores = [s for e in ctx.evaluators for s in e.evaluate(leak)]
    reviews = ctx.router.route(leak, scores)
    assert reviews
    store.write_batch([], [], reviews)  # committed; the worker died before publishing
    assert redis_client.xlen(REVIEW_STREAM) == 0
    later = datetime.now(UTC) + timedelta(minutes=10)
    assert republish_unrouted(redis_client, ctx.router, store, now=later) == len(reviews)
    assert republish_unrouted(redis_client, ctx.router, store, now=later) == 0
    assert ctx.router.publish(redis_client, reviews) == []  # a redelivered batch adds nothing
    assert redis_client.xlen(REVIEW_STREAM) == len(reviews)
