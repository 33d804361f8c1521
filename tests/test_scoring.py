"""score_batch without Celery: idempotent SQL writes and once-only review routing."""

from __future__ import annotations

import redis
from helpers import make_trace
from sqlmodel import Session, select

from evaluator.constants import REVIEW_STREAM
from evaluator.evaluation.scoring import ScoringContext, score_batch
from evaluator.evaluators import heuristic_evaluators
from evaluator.models import ReviewItem, SampleDecision, Score, ScoreType, Severity
from evaluator.review import (
    CRITICAL_PRIORITY,
    HIGH_SEVERITY_PRIORITY,
    THRESHOLD_PRIORITY,
    ReviewRouter,
)
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import ReviewItemRecord, ScoreRecord, TraceRecord


def entries(traces: list[tuple[str, object]]) -> list[dict[str, object]]:
    decision = SampleDecision(judge=False, rate=0.1).model_dump()
    return [
        {"id": f"{1763630000000 + i}-0", "trace": t.model_dump_json(), "decision": decision}  # type: ignore[attr-defined]
        for i, (_, t) in enumerate(traces)
    ]


def context(store: SQLStore, client: redis.Redis) -> ScoringContext:
    return ScoringContext(heuristic_evaluators(Settings()), store, ReviewRouter(), client)


def test_redelivered_batch_has_no_extra_effect(store: SQLStore, redis_client: redis.Redis) -> None:
    batch = entries(
        [
            ("ok", make_trace(1)),
            ("leak", make_trace(2, output="Mail maria@fjordlab.dk for help.")),
            ("truncated", make_trace(3, finish_reason="length")),
        ]
    )
    ctx = context(store, redis_client)
    first = score_batch(batch, ctx)
    assert (first.traces, first.routed) == (3, 2)
    with Session(store.engine) as session:
        item = session.exec(
            select(ReviewItemRecord).where(ReviewItemRecord.trace_id == "t-000002")
        ).one()
        item.status = "claimed"  # a reviewer took it meanwhile
        session.add(item)
        session.commit()
    again = score_batch(batch, ctx)
    assert again.routed == 0
    assert store.count(TraceRecord) == 3
    assert store.count(ScoreRecord) == first.scores == 3 * 7  # no JSON, no forbidden-phrase list
    assert store.count(ReviewItemRecord) == 2
    assert redis_client.xlen(REVIEW_STREAM) == 2
    with Session(store.engine) as session:
        kept = session.exec(
            select(ReviewItemRecord).where(ReviewItemRecord.trace_id == "t-000002")
        ).one()
        assert kept.status == "claimed"
        assert kept.reasons == ["pii_leak: PII in answer: email x1"]
        assert kept.priority == HIGH_SEVERITY_PRIORITY


def test_review_stream_entry_carries_the_trace_and_failing_scores(
    store: SQLStore, redis_client: redis.Redis
) -> None:
    score_batch(
        entries([("leak", make_trace(7, output="Call +1 415 555 2671 now, it's Bob's."))]),
        context(store, redis_client),
    )
    [(_, fields)] = redis_client.xrange(REVIEW_STREAM)
    item = ReviewItem.model_validate_json(fields[b"item"])
    assert item.trace.trace_id == "t-000007"
    assert item.evaluator == "pii_leak"
    assert fields[b"priority"] == str(HIGH_SEVERITY_PRIORITY).encode()
    assert len(item.score_ids) == 1


def _numeric(value: float, name: str = "groundedness") -> Score:
    return Score.for_trace("t", "judge", "1.0.0", name, data_type=ScoreType.NUMERIC, value=value)


def test_routing_rules() -> None:
    router = ReviewRouter(thresholds={"groundedness": 0.7})
    trace = make_trace(1)
    low_check = Score.for_trace("t", "refusal", "1", "refusal", passed=False, value=0.0)
    high_check = Score.for_trace(
        "t", "pii", "1", "pii", passed=False, value=0.0, severity=Severity.HIGH
    )
    assert router.failing(_numeric(0.5)) == THRESHOLD_PRIORITY
    assert router.failing(_numeric(0.7)) is None
    assert router.failing(_numeric(0.1, name="unlisted")) is None
    assert router.failing(low_check) is None
    assert router.failing(high_check) == HIGH_SEVERITY_PRIORITY
    items = router.route(trace, [_numeric(0.2), high_check, low_check])
    assert sorted(i.evaluator for i in items) == ["judge", "pii"]
    unsafe = Score.for_trace("t", "safety", "1", "safe", passed=False, severity=Severity.CRITICAL)
    other = Score.for_trace("t", "safety", "1", "tone", passed=False, severity=Severity.HIGH)
    assert router.failing(unsafe) == CRITICAL_PRIORITY
    [item] = router.route(trace, [other, unsafe])
    assert item.priority == CRITICAL_PRIORITY  # the most urgent failing score decides
