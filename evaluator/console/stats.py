"""Fleet state in one read: stream, group, queues, dead letters, scores and pass rates, and the
scores' totals per level (turn, trajectory, session)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from evaluator.constants import (
    DEAD_STREAM,
    REVIEW_STREAM,
    SAMPLER_GROUP,
    TRACES_STREAM,
    UNACKED_PREFIX,
    WORK_QUEUES,
    WORKER_ROLES,
)
from evaluator.ledger import summary
from evaluator.models import Level
from evaluator.ops import metrics
from evaluator.sampling import inflight
from evaluator.sampling.estimates import ScoreEstimate, score_estimates
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import TraceRecord
from evaluator.streams import group_info, queue_depth


@dataclass
class FleetStats:
    stream_length: int
    pending: int
    lag: int
    consumers: int
    queue_depths: dict[str, int]
    # Tasks taken by a worker and not acknowledged yet (running, or lost with a killed worker
    # until its role's visibility timeout), per worker role.
    unacked: dict[str, int]
    # Heuristics batches dispatched and not stored yet (evaluator.sampling.inflight).
    heuristics_in_flight: int
    dead_letters: int
    review_stream_length: int
    traces_scored: int
    judge_sampled: int
    review_pending: int
    # Per evaluator and score name, each with its level (SQLStore.score_summary(by_level=True)).
    scores: list[dict[str, Any]] = field(default_factory=list)
    # Outbox rows per external sink and status (pending, delivered, rejected).
    sinks: dict[str, dict[str, int]] = field(default_factory=dict)
    # Inverse-probability weighted pass rates and means beside the plain ones.
    estimates: list[ScoreEstimate] = field(default_factory=list)
    # Evaluation ledger: {evaluator: {state: count}}.
    ledger: dict[str, dict[str, int]] = field(default_factory=dict)
    # {level: {count, passed, failed, errors}}: the score rows summed per level.
    levels: dict[str, dict[str, int]] = field(default_factory=dict)


def level_totals(scores: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The score summary's rows summed per level, in the order turn, trajectory, session."""
    totals: dict[str, dict[str, int]] = {}
    for level in Level:
        rows = [row for row in scores if row["level"] == level.value]
        if rows:
            totals[level.value] = {
                key: sum(row[key] for row in rows)
                for key in ("count", "passed", "failed", "errors")
            }
    return totals


def fleet_stats(
    client: redis.Redis,
    store: SQLStore,
    since: datetime | None = None,
    broker: redis.Redis | None = None,
) -> FleetStats:
    """``broker``: the Celery broker's Redis, when it is not ``client``'s."""
    broker = broker or client
    group = group_info(client, TRACES_STREAM, SAMPLER_GROUP)
    scores = store.score_summary(by_level=True)
    return FleetStats(
        stream_length=int(client.xlen(TRACES_STREAM)),
        pending=group["pending"],
        lag=group["lag"],
        consumers=group["consumers"],
        queue_depths={q: queue_depth(broker, q) for q in WORK_QUEUES},
        unacked=unacked_tasks(broker),
        heuristics_in_flight=inflight.count(client),
        dead_letters=int(client.xlen(DEAD_STREAM)),
        review_stream_length=int(client.xlen(REVIEW_STREAM)),
        traces_scored=store.count(TraceRecord),
        judge_sampled=store.judge_sampled_count(),
        review_pending=store.pending_review_count(),
        scores=scores,
        sinks=store.outbox_counts(),
        estimates=score_estimates(store.score_sums(since)),
        ledger=summary(store, since),
        levels=level_totals(scores),
    )


def unacked_tasks(client: redis.Redis) -> dict[str, int]:
    return {role: int(client.hlen(f"{UNACKED_PREFIX}{role}")) for role in WORKER_ROLES}


def refresh_estimate_gauges(store: SQLStore, window_s: float = 3600) -> None:
    """Set the estimated-score gauges from the last ``window_s`` of scores."""
    since = datetime.now(UTC) - timedelta(seconds=window_s)
    for e in score_estimates(store.score_sums(since)):
        for bound, value in (
            ("estimate", e.weighted.mean),
            ("low", e.weighted.low),
            ("high", e.weighted.high),
        ):
            metrics.ESTIMATED_SCORE.labels(e.evaluator, e.name, e.statistic, bound).set(value)
