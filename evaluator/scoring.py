"""Score one batch of traces: evaluate, store, route. What the heuristics task calls.

Idempotent end to end, so a redelivered batch (acks_late, a killed worker) has no extra effect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import ValidationError

from evaluator.constants import DEAD_STREAM
from evaluator.evaluators import Evaluator, evaluate_all
from evaluator.models import SampleDecision, Trace, describe_validation_error
from evaluator.review import ReviewRouter
from evaluator.sinks.sql import SQLStore, score_row
from evaluator.streams import dead_letter, stream_id_ms

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    traces: int
    scores: int
    routed: int
    dead_lettered: int


@dataclass
class ScoringContext:
    """Everything a worker process needs to score batches; built once per process."""

    evaluators: list[Evaluator]
    store: SQLStore
    router: ReviewRouter
    client: redis.Redis


def trace_row(
    entry_id: str, trace: Trace, decision: SampleDecision, scored_at: datetime
) -> dict[str, Any]:
    return {
        "trace_id": trace.trace_id,
        "stream_id": entry_id,
        "tenant": trace.tenant,
        "feature": trace.feature,
        "prompt_version": trace.prompt_version,
        "model": trace.model,
        "published_at": datetime.fromtimestamp(stream_id_ms(entry_id) / 1000, UTC),
        "scored_at": scored_at,
        "judge_sampled": decision.judge,
        "judge_reasons": decision.reasons,
        "sample_rate": decision.rate,
    }


def score_batch(entries: list[dict[str, Any]], ctx: ScoringContext) -> BatchResult:
    """Run the heuristics over a batch of sampler entries and write the results."""
    now = datetime.now(UTC)
    trace_rows: dict[str, dict[str, Any]] = {}
    score_rows: dict[str, dict[str, Any]] = {}
    reviews = []
    dead = 0
    for entry in entries:
        try:
            trace = Trace.model_validate_json(entry["trace"])
        except ValidationError as exc:
            # Only reachable when sampler and worker run different model versions.
            reason = f"worker: {describe_validation_error(exc)}"
            ctx.client.xadd(
                DEAD_STREAM,
                dead_letter(reason, entry["trace"], entry["id"], "worker", now.isoformat()),
            )
            dead += 1
            continue
        decision = SampleDecision.model_validate(entry["decision"])
        scores = evaluate_all(ctx.evaluators, trace)
        # Keyed by id: a trace published twice in one batch must not upsert the same row twice.
        trace_rows[trace.trace_id] = trace_row(entry["id"], trace, decision, now)
        for score in scores:
            score_rows[score.id] = score_row(
                score, trace.tenant, trace.feature, trace.prompt_version
            )
        reviews += ctx.router.route(trace, scores)
    unique_reviews = list({r.id: r for r in reviews}.values())
    ctx.store.write_batch(list(trace_rows.values()), list(score_rows.values()), unique_reviews)
    routed = ctx.router.publish(ctx.client, unique_reviews)
    return BatchResult(len(trace_rows), len(score_rows), routed, dead)
