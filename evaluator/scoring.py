"""Score one batch of traces: evaluate, store, route. What the worker's tasks call.

``score_batch`` runs the heuristics on every trace; ``judge_batch`` runs the sampled traces'
judges. Both are idempotent in the store and the review stream, so a redelivered batch
(acks_late, a killed worker) has no extra effect there (Prometheus counters do count it again).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from pydantic import ValidationError

from evaluator.budget import SpendMeter
from evaluator.constants import DEAD_STREAM
from evaluator.evaluators import Evaluator, evaluate_all
from evaluator.evaluators.judge import JudgeResult, run_judgements
from evaluator.judges import Judge
from evaluator.ledger import HEURISTICS, LedgerState, decision_rows, heuristics_version, ledger_row
from evaluator.models import (
    ReviewItem,
    SampleDecision,
    Score,
    ScoreStatus,
    Trace,
    describe_validation_error,
)
from evaluator.review import ReviewRouter
from evaluator.settings import Settings
from evaluator.sinks import metrics
from evaluator.sinks.outbox import Sink, outbox_rows
from evaluator.sinks.sql import SQLStore, payload_row, score_row
from evaluator.streams import dead_letter, stream_id_ms


@dataclass
class BatchResult:
    traces: int
    scores: int
    routed: int
    dead_lettered: int


# Puts deferred judge entries back on the judges queue after a delay (seconds).
Requeue = Callable[[list[dict[str, Any]], float], None]
# Runs (judge, trace) work; the flag marks re-evaluation work (held to its rate-limit share).
RunJudges = Callable[[list[tuple[Judge, Trace]], bool], list[JudgeResult]]


@dataclass
class ScoringContext:
    """Everything a worker process needs to score batches; built once per process."""

    evaluators: list[Evaluator]
    store: SQLStore
    router: ReviewRouter
    client: redis.Redis
    settings: Settings = field(default_factory=Settings)
    judges: dict[str, Judge] = field(default_factory=dict)
    requeue: Requeue | None = None
    # Runs judge calls; the worker passes a JudgeLoop that keeps connections across tasks.
    run_judges: RunJudges | None = None
    # External sinks get outbox rows written with the scores; `evalfleet relay` delivers them.
    sinks: list[Sink] = field(default_factory=list)
    # Judge spend accounting and caps; None: no accounting (tests of the scoring alone).
    spend: SpendMeter | None = None

    @property
    def heuristics_version(self) -> str:
        return heuristics_version(self.evaluators)

    def judge(self, work: list[tuple[Judge, Trace]], backfill: bool = False) -> list[JudgeResult]:
        if self.run_judges is not None:
            return self.run_judges(work, backfill)
        return asyncio.run(run_judgements(self.settings, work, backfill=backfill))


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
        "judges": decision.judges,
        "sample_rate": decision.rate,
        "stratum": decision.stratum,
    }


def _record(
    scores: list[Score], prompt_versions: dict[str, str | None], routed: list[ReviewItem]
) -> None:
    metrics.record_scores(scores, prompt_versions)
    for item in routed:
        metrics.REVIEW_ROUTED.labels(item.evaluator).inc()


# (trace id, evaluator) -> P(that evaluation ran on the trace); absent means 1 (heuristics).
Inclusion = dict[tuple[str, str], float]


def _row(score: Score, trace: Trace, inclusion: Inclusion) -> dict[str, Any]:
    row = score_row(score, trace.tenant, trace.feature, trace.prompt_version)
    row["inclusion_probability"] = inclusion.get((score.trace_id, score.evaluator), 1.0)
    return row


def _write(
    ctx: ScoringContext,
    traces: dict[str, Trace],
    trace_rows: list[dict[str, Any]],
    scores: list[Score],
    reviews: list[ReviewItem],
    calls: Sequence[dict[str, Any]] = (),
    ledger: Sequence[dict[str, Any]] = (),
    payloads: Sequence[dict[str, Any]] = (),
    inclusion: Inclusion | None = None,
) -> None:
    """One transaction: traces, scores, judge calls, review items, ledger rows, trace payloads
    and the sinks' outbox rows."""
    rows = {s.id: _row(s, traces[s.trace_id], inclusion or {}) for s in scores}
    outbox = outbox_rows(ctx.sinks, list({s.id: s for s in scores}.values()), traces, _now())
    try:
        ctx.store.write_batch(
            trace_rows, list(rows.values()), reviews, calls, outbox, ledger, payloads
        )
    except Exception:
        metrics.SQL_WRITES.labels("failed").inc()
        raise
    metrics.SQL_WRITES.labels("written").inc()


def _now() -> datetime:
    return datetime.now(UTC)


def score_batch(entries: list[dict[str, Any]], ctx: ScoringContext) -> BatchResult:
    """Run the heuristics over a batch of sampler entries and write the results."""
    now = datetime.now(UTC)
    trace_rows: dict[str, dict[str, Any]] = {}
    traces: dict[str, Trace] = {}
    reviews = []
    dead = 0
    all_scores: list[Score] = []
    prompt_versions: dict[str, str | None] = {}
    ledger: list[dict[str, Any]] = []
    payloads: list[dict[str, Any]] = []
    version = ctx.heuristics_version
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
        all_scores += scores
        prompt_versions[trace.trace_id] = trace.prompt_version
        # Keyed by id: a trace published twice in one batch must not upsert the same row twice.
        trace_rows[trace.trace_id] = trace_row(entry["id"], trace, decision, now)
        traces[trace.trace_id] = trace
        reviews += ctx.router.route(trace, scores)
        ledger.append(
            ledger_row(trace.trace_id, HEURISTICS, version, LedgerState.DONE, now, inclusion=1.0)
        )
        ledger += decision_rows(trace.trace_id, decision, ctx.judges, ctx.settings, now)
        if ctx.settings.trace_retention_s > 0:
            published_at = trace_rows[trace.trace_id]["published_at"]
            payloads.append(payload_row(trace, entry["trace"], published_at))
    unique_reviews = list({r.id: r for r in reviews}.values())
    _write(
        ctx,
        traces,
        list(trace_rows.values()),
        all_scores,
        unique_reviews,
        ledger=ledger,
        payloads=list({p["trace_id"]: p for p in payloads}.values()),
    )
    routed = ctx.router.publish(ctx.client, unique_reviews)
    _record(all_scores, prompt_versions, routed)
    for row in trace_rows.values():
        metrics.PUBLISH_TO_SCORE.observe((now - row["published_at"]).total_seconds())
    unique_scores = len({s.id for s in all_scores})
    return BatchResult(len(trace_rows), unique_scores, len(routed), dead)


@dataclass
class JudgeBatchResult:
    scores: int
    calls: int
    routed: int
    deferred: int


def _unknown_judge_score(trace: Trace, name: str, known: list[str]) -> Score:
    reason = f"unknown judge {name!r} (known: {', '.join(known) or 'none'})"
    return Score.for_trace(
        trace.trace_id, name, "unknown", name, status=ScoreStatus.ERROR, reason=reason
    )


def _gave_up_score(spec: Judge, trace: Trace, waited_s: float) -> Score:
    reason = f"judge endpoint unavailable; gave up after {waited_s:.0f}s of retries"
    return Score.for_trace(
        trace.trace_id, spec.name, spec.version, spec.name, status=ScoreStatus.ERROR, reason=reason
    )


def _judge_outcome(result: JudgeResult) -> tuple[LedgerState, str]:
    """done, or failed with the first error score's reason (schema failures, refusals...)."""
    errors = [score.reason for score in result.scores if score.status == ScoreStatus.ERROR]
    return (LedgerState.FAILED, errors[0]) if errors else (LedgerState.DONE, "")


def _judge_row(
    spec: Judge,
    trace: Trace,
    entry: dict[str, Any],
    state: LedgerState,
    now: datetime,
    **fields: Any,
) -> dict[str, Any]:
    """The ledger row of one judge evaluation of a judge entry."""
    fields.setdefault("attempt", int(entry.get("attempt", 1)))
    inclusion = entry.get("inclusion", {}).get(spec.name)
    return ledger_row(
        trace.trace_id, spec.name, spec.version, state, now,
        inclusion=inclusion, run=entry.get("run"), **fields,
    )  # fmt: skip


@dataclass
class _Admitted:
    """What a judge batch will run, and what it will not (unknown judge, over a spend cap)."""

    work: list[tuple[Judge, Trace, dict[str, Any]]] = field(default_factory=list)
    running: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)  # over_budget ledger rows
    scores: list[Score] = field(default_factory=list)  # error scores of unknown judges
    inclusion: Inclusion = field(default_factory=dict)


def _admit(
    entries: list[dict[str, Any]], traces: dict[str, Trace], ctx: ScoringContext, now: datetime
) -> _Admitted:
    admitted = _Admitted()
    spent = ctx.spend.today() if ctx.spend else {}
    run_spent: dict[str, float] = {}
    deadline = now + timedelta(seconds=ctx.settings.ledger_running_deadline_s)
    for entry in entries:
        trace = traces[entry["id"]]
        run = entry.get("run")
        for name in entry["judges"]:
            spec = ctx.judges.get(name)
            if spec is None:
                admitted.scores.append(_unknown_judge_score(trace, name, sorted(ctx.judges)))
                continue
            admitted.inclusion[(trace.trace_id, name)] = entry.get("inclusion", {}).get(name, 1.0)
            if ctx.spend is not None:
                if run is not None and run not in run_spent:
                    run_spent[run] = ctx.spend.run_spent(run)
                blocked = ctx.spend.over_cap(
                    name, spent, run, run_spent.get(run or "", 0.0), entry.get("run_cap")
                )
                if blocked:
                    admitted.refused.append(
                        _judge_row(spec, trace, entry, LedgerState.OVER_BUDGET, now, reason=blocked)
                    )
                    metrics.OVER_BUDGET.labels(name).inc()
                    continue
            admitted.running.append(
                _judge_row(spec, trace, entry, LedgerState.RUNNING, now, deadline_at=deadline)
            )
            admitted.work.append((spec, trace, entry))
    return admitted


def judge_batch(entries: list[dict[str, Any]], ctx: ScoringContext) -> JudgeBatchResult:
    """Run each entry's judges concurrently; write scores, calls and ledger rows; requeue what
    must wait; record work over a spend cap as over_budget instead of running it."""
    now = _now()
    s = ctx.settings
    traces = {e["id"]: Trace.model_validate_json(e["trace"]) for e in entries}
    admitted = _admit(entries, traces, ctx, now)
    scores, ledger, work = admitted.scores, admitted.refused, admitted.work
    if admitted.running:
        # Before the calls: a worker killed now leaves rows the reaper can see are stuck.
        ctx.store.write_ledger(admitted.running)
    backfill = any(entry.get("run") for entry in entries)  # a batch is one run's or live
    results = ctx.judge([(spec, trace) for spec, trace, _ in work], backfill)
    calls: list[dict[str, Any]] = []
    later: dict[str, dict[str, Any]] = {}
    delay = 0.0
    for (spec, trace, entry), result in zip(work, results, strict=True):
        waited = time.time() - entry["since"]
        if result.deferred and waited < s.judge_give_up_after_s:
            attempt = int(entry.get("attempt", 1))
            later.setdefault(entry["id"], {**entry, "judges": [], "attempt": attempt + 1})[
                "judges"
            ].append(spec.name)
            delay = max(delay, result.defer_s)
            next_at = now + timedelta(seconds=result.defer_s)
            why = result.call.get("error") or "judge endpoint unavailable"
            ledger.append(
                _judge_row(
                    spec, trace, entry, LedgerState.RETRYING, now, reason=f"transient: {why}",
                    next_attempt_at=next_at,
                    deadline_at=next_at + timedelta(seconds=s.ledger_queued_deadline_s),
                )
            )  # fmt: skip
            continue
        if result.deferred:
            gave_up = _gave_up_score(spec, trace, waited)
            scores.append(gave_up)
            ledger.append(
                _judge_row(spec, trace, entry, LedgerState.FAILED, now, reason=gave_up.reason)
            )
            continue
        scores += result.scores
        calls.append({**result.call, "run": entry.get("run")})
        state, reason = _judge_outcome(result)
        ledger.append(_judge_row(spec, trace, entry, state, now, reason=reason))
    by_trace: dict[str, list[Score]] = defaultdict(list)
    for score in scores:
        by_trace[score.trace_id].append(score)
    trace_of = {t.trace_id: t for t in traces.values()}
    reviews = [item for tid, ss in by_trace.items() for item in ctx.router.route(trace_of[tid], ss)]
    call_rows = [{k: v for k, v in c.items() if k != "run"} for c in calls]
    _write(
        ctx, trace_of, [], scores, reviews, call_rows, ledger=ledger, inclusion=admitted.inclusion
    )
    if ctx.spend is not None and calls:
        for run in {c["run"] for c in calls}:
            ctx.spend.record([c for c in calls if c["run"] == run], run)
    routed = ctx.router.publish(ctx.client, reviews)
    _record(scores, {t.trace_id: t.prompt_version for t in traces.values()}, routed)
    metrics.record_judge_calls(call_rows)
    if later:
        if ctx.requeue is None:
            raise RuntimeError("deferred judge work but no requeue configured")
        ctx.requeue(list(later.values()), delay)
    deferred = sum(len(entry["judges"]) for entry in later.values())
    return JudgeBatchResult(len({s.id for s in scores}), len(calls), len(routed), deferred)
