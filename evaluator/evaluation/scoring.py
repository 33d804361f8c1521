"""Score one batch of traces: evaluate, store, route. What the worker's tasks call.

``score_batch`` runs the heuristics on every trace; ``judge_batch`` runs the sampled traces'
judges. Both are idempotent in the store and the review stream, so a redelivered batch
(acks_late, a killed worker) has no extra effect there (Prometheus counters do count it again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import redis
from sqlalchemy.exc import OperationalError

from evaluator.constants import HEURISTICS_TASK
from evaluator.evaluators import Evaluator, evaluate_all
from evaluator.judging.files import Judge, evaluation_spec, judge_level
from evaluator.judging.runtime import JudgeResult, run_judgements
from evaluator.ledger import (
    HEURISTICS,
    LedgerState,
    decision_rows,
    heuristics_version,
    ledger_row,
    write_rows,
)
from evaluator.models import (
    JudgeCall,
    ReviewItem,
    SampleDecision,
    Score,
    ScoreStatus,
    Trace,
)
from evaluator.ops import metrics
from evaluator.review import ReviewRouter
from evaluator.sampling import inflight
from evaluator.sampling.budget import SpendMeter
from evaluator.settings import Settings
from evaluator.sinks.base import Sink
from evaluator.sinks.outbox import outbox_rows
from evaluator.sinks.sql import SQLStore, payload_row, score_row
from evaluator.streams import DeadLetterLimits, add_dead_letters, stream_id_ms
from evaluator.work import HeuristicsWork, JudgeWork, WireEntry

Work = HeuristicsWork | JudgeWork
W = TypeVar("W", HeuristicsWork, JudgeWork)
_WORK_TYPES = (HeuristicsWork, JudgeWork)

log = logging.getLogger(__name__)


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


@dataclass
class _Rows:
    """One batch's rows for every table, each carrying its trace id: what ``_store`` splits."""

    traces: list[dict[str, Any]]
    scores: list[dict[str, Any]]
    reviews: list[ReviewItem]
    calls: list[dict[str, Any]]
    outbox: list[dict[str, Any]]
    ledger: list[dict[str, Any]]
    payloads: list[dict[str, Any]]

    def trace_ids(self) -> list[str]:
        ids = {r["trace_id"] for rows in self._dict_rows() for r in rows}
        return sorted(ids | {r.trace_id for r in self.reviews})

    def only(self, keep: set[str]) -> _Rows:
        def rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [r for r in items if r["trace_id"] in keep]

        return _Rows(
            traces=rows(self.traces),
            scores=rows(self.scores),
            reviews=[r for r in self.reviews if r.trace_id in keep],
            calls=rows(self.calls),
            outbox=rows(self.outbox),
            ledger=rows(self.ledger),
            payloads=rows(self.payloads),
        )

    def _dict_rows(self) -> list[list[dict[str, Any]]]:
        return [self.traces, self.scores, self.calls, self.outbox, self.ledger, self.payloads]


# The database is away (or locked): the whole batch waits and is retried, nothing is split.
DatabaseUnavailable = OperationalError
# Errors of the infrastructure, not of the work: the task is retried with backoff, forever (the
# work waits for the database or Redis to come back).
INFRASTRUCTURE_ERRORS = (DatabaseUnavailable, redis.ConnectionError, redis.TimeoutError)


def run_heuristics(
    entries: list[dict[str, Any]], ctx: ScoringContext, batch_id: str
) -> dict[str, int]:
    """The heuristics task: score the batch, then take it off the in-flight record (it is
    stored or dead-lettered; an infrastructure error leaves it there and the task retries)."""
    result = run_batch(HEURISTICS_TASK, score_batch, entries, ctx)
    inflight.remove(ctx.client, [batch_id])
    return result


def run_batch(
    task: str,
    work: Callable[[list[dict[str, Any]], ScoringContext], Any],
    entries: list[dict[str, Any]],
    ctx: ScoringContext,
) -> dict[str, int]:
    """What a worker task does: ``work`` on the batch. Infrastructure errors propagate (the task
    retries); anything else is a bug, and the batch is dead-lettered with the error (to be
    redriven after the fix) rather than acknowledged and lost, or redelivered in a crash loop."""
    try:
        return dict(vars(work(entries, ctx)))
    except INFRASTRUCTURE_ERRORS:
        raise
    except Exception as exc:
        log.exception("%s failed; dead-lettering its %d entries", task, len(entries))
        dead_letter_entries(ctx, entries, f"worker {task}: {type(exc).__name__}: {exc}", task)
        return {"dead_lettered": len(entries)}


def _store(store: SQLStore, rows: _Rows) -> dict[str, str]:
    """Write the batch in one transaction. If the database refuses it for what is in it (not
    because it is away), halve it until each trace it cannot store is found: batch-mates are
    stored, and the refused traces come back with the database's message."""
    try:
        store.write_batch(
            rows.traces, rows.scores, rows.reviews, rows.calls, rows.outbox, rows.ledger,
            rows.payloads,
        )  # fmt: skip
    except DatabaseUnavailable:
        metrics.SQL_WRITES.labels("failed").inc()
        raise
    except Exception as exc:
        metrics.SQL_WRITES.labels("failed").inc()
        ids = rows.trace_ids()
        if len(ids) <= 1:
            message = " ".join(str(getattr(exc, "orig", None) or exc).split())
            return {tid: f"database refused the trace: {type(exc).__name__}: {message}"[:1000]
                    for tid in ids}  # fmt: skip
        half = len(ids) // 2
        return {**_store(store, rows.only(set(ids[:half]))),
                **_store(store, rows.only(set(ids[half:])))}  # fmt: skip
    metrics.SQL_WRITES.labels("written").inc()
    return {}


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
) -> dict[str, str]:
    """One transaction: traces, scores, judge calls, review items, ledger rows, trace payloads
    and the sinks' outbox rows. Returns the traces the database refused, and why."""
    rows = {s.id: _row(s, traces[s.trace_id], inclusion or {}) for s in scores}
    outbox = outbox_rows(ctx.sinks, list({s.id: s for s in scores}.values()), traces, _now())
    batch = _Rows(
        list(trace_rows), list(rows.values()), reviews, list(calls), outbox, list(ledger),
        list(payloads),
    )  # fmt: skip
    return _store(ctx.store, batch)


@dataclass
class StallPlan:
    """What to do with a batch whose task died unfinished (its child ran over the hard time
    limit and was killed, or died otherwise): run each trace on its own (a batch-mate is rarely
    the culprit), and dead-letter a trace whose own task died ``max_trace_stalls`` times."""

    retry: list[tuple[dict[str, Any], int]] = field(default_factory=list)  # (entry, losses)
    dead: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""


def plan_after_loss(
    entries: list[dict[str, Any]], losses: int, settings: Settings, why: str
) -> StallPlan:
    """``losses``: how often the trace's own task had died before this time; ``why``: this
    time's cause."""
    if len(entries) > 1:
        return StallPlan(retry=[(entry, 0) for entry in entries])
    losses += 1
    if losses < settings.max_trace_stalls:
        return StallPlan(retry=[(entry, losses) for entry in entries])
    reason = f"stalled or killed its worker {losses} times (last: {why})"
    return StallPlan(dead=list(entries), reason=reason)


def dead_letter_entries(
    ctx: ScoringContext, entries: Sequence[Work | WireEntry], reason: str, consumer: str
) -> None:
    """Put work entries (typed, or wire entries that did not parse) on the dead-letter stream
    with ``reason`` (to be redriven after the fix) and mark their evaluations dead_lettered in
    the ledger."""
    limits = DeadLetterLimits.from_settings(ctx.settings)
    wire = [e.to_wire() if isinstance(e, _WORK_TYPES) else e for e in entries]
    letters = [(reason, str(e.get("trace", "")), str(e.get("id", ""))) for e in wire]
    pipe = ctx.client.pipeline(transaction=True)
    add_dead_letters(pipe, letters, consumer, limits)
    pipe.execute()
    metrics.TRACES_DEAD_LETTERED.inc(len(entries))
    now = _now()
    rows = []
    for entry, sent in zip(entries, wire, strict=True):
        trace_id = entry.trace.trace_id if isinstance(entry, _WORK_TYPES) else _trace_id(sent)
        if trace_id is None:
            continue
        if "judges" not in sent:
            version = ctx.heuristics_version
            rows.append(
                ledger_row(
                    trace_id, HEURISTICS, version, LedgerState.DEAD_LETTERED, now, reason=reason
                )
            )
        for name in sent.get("judges", []):
            if name in ctx.judges:
                version = ctx.judges[name].version
                rows.append(
                    ledger_row(
                        trace_id, name, version, LedgerState.DEAD_LETTERED, now, reason=reason
                    )
                )
    try:
        write_rows(ctx.store, rows)
    except Exception:  # the dead-letter stream holds them; the ledger row is a convenience
        log.exception("could not record %d dead-lettered evaluations in the ledger", len(rows))


def _trace_id(entry: WireEntry) -> str | None:
    """The trace id of a wire entry that did not parse as work, if its trace has one."""
    try:
        value = json.loads(entry.get("trace", "")).get("trace_id")
    except (ValueError, TypeError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def _parse(kind: type[W], entries: Sequence[WireEntry], ctx: ScoringContext) -> tuple[list[W], int]:
    """The batch's work items, each trace parsed once; entries that are not valid work (only
    when sampler and worker run different versions) are dead-lettered with the reason."""
    items: list[W] = []
    invalid: dict[str, list[WireEntry]] = defaultdict(list)
    for entry in entries:
        item = kind.from_wire(entry, ctx.settings.max_trace_bytes)
        if isinstance(item, str):
            invalid[item].append(entry)
        else:
            items.append(item)
    for reason, dead in invalid.items():
        dead_letter_entries(ctx, dead, reason, "worker")
    return items, sum(len(dead) for dead in invalid.values())


def _refused(ctx: ScoringContext, items: Sequence[Work], refused: dict[str, str], task: str) -> int:
    """Dead-letter the work of traces the database refused; returns how many."""
    by_reason: dict[str, list[Work]] = defaultdict(list)
    for item in items:
        reason = refused.get(item.trace.trace_id)
        if reason is not None:
            by_reason[reason].append(item)
    for reason, dead in by_reason.items():
        log.warning("%s: dead-lettering %d entries: %s", task, len(dead), reason)
        dead_letter_entries(ctx, dead, reason, task)
    return sum(len(dead) for dead in by_reason.values())


def _now() -> datetime:
    return datetime.now(UTC)


def score_batch(entries: list[dict[str, Any]], ctx: ScoringContext) -> BatchResult:
    """Run the heuristics over a batch of sampler entries and write the results."""
    now = datetime.now(UTC)
    trace_rows: dict[str, dict[str, Any]] = {}
    traces: dict[str, Trace] = {}
    reviews = []
    all_scores: list[Score] = []
    prompt_versions: dict[str, str | None] = {}
    ledger: list[dict[str, Any]] = []
    payloads: list[dict[str, Any]] = []
    version = ctx.heuristics_version
    items, dead = _parse(HeuristicsWork, entries, ctx)
    for item in items:
        trace, decision = item.trace, item.decision
        scores = evaluate_all(ctx.evaluators, trace, ctx.settings.evaluator_budget_s)
        all_scores += scores
        prompt_versions[trace.trace_id] = trace.prompt_version
        # Keyed by id: a trace published twice in one batch must not upsert the same row twice.
        trace_rows[trace.trace_id] = trace_row(item.id, trace, decision, now)
        traces[trace.trace_id] = trace
        reviews += ctx.router.route(trace, scores)
        ledger.append(
            ledger_row(trace.trace_id, HEURISTICS, version, LedgerState.DONE, now, inclusion=1.0)
        )
        ledger += decision_rows(trace.trace_id, decision, ctx.judges, ctx.settings, now)
        if ctx.settings.trace_retention_s > 0:
            published_at = trace_rows[trace.trace_id]["published_at"]
            payloads.append(payload_row(trace, item.payload, published_at))
    unique_reviews = list({r.id: r for r in reviews}.values())
    refused = _write(
        ctx,
        traces,
        list(trace_rows.values()),
        all_scores,
        unique_reviews,
        ledger=ledger,
        payloads=list({p["trace_id"]: p for p in payloads}.values()),
    )
    if refused:
        dead += _refused(ctx, items, refused, "worker")
        all_scores = [s for s in all_scores if s.trace_id not in refused]
        unique_reviews = [r for r in unique_reviews if r.trace_id not in refused]
        trace_rows = {tid: row for tid, row in trace_rows.items() if tid not in refused}
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
        trace.trace_id, spec.name, spec.version, spec.name, status=ScoreStatus.ERROR,
        reason=reason, level=judge_level(spec),
    )  # fmt: skip


def _judge_outcome(result: JudgeResult) -> tuple[LedgerState, str]:
    """done, or failed with the first error score's reason (schema failures, refusals...)."""
    errors = [score.reason for score in result.scores if score.status == ScoreStatus.ERROR]
    return (LedgerState.FAILED, errors[0]) if errors else (LedgerState.DONE, "")


def _judge_row(
    spec: Judge, item: JudgeWork, state: LedgerState, now: datetime, **fields: Any
) -> dict[str, Any]:
    """The ledger row of one judge evaluation of a judge work item."""
    fields.setdefault("attempt", item.attempt)
    return ledger_row(
        item.trace.trace_id, spec.name, spec.version, state, now,
        inclusion=item.inclusion.get(spec.name), run=item.run, **fields,
    )  # fmt: skip


@dataclass
class _Admitted:
    """What a judge batch will run, and what it will not (unknown judge, over a spend cap)."""

    work: list[tuple[Judge, JudgeWork]] = field(default_factory=list)
    running: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)  # over_budget ledger rows
    scores: list[Score] = field(default_factory=list)  # error scores of unknown judges
    inclusion: Inclusion = field(default_factory=dict)


def _admit(items: list[JudgeWork], ctx: ScoringContext, now: datetime) -> _Admitted:
    admitted = _Admitted()
    spent = ctx.spend.today() if ctx.spend else {}
    run_spent: dict[str, float] = {}
    deadline = now + timedelta(seconds=ctx.settings.ledger_running_deadline_s)
    for item in items:
        trace, run = item.trace, item.run
        for name in item.judges:
            known = ctx.judges.get(name)
            if known is None:
                admitted.scores.append(_unknown_judge_score(trace, name, sorted(ctx.judges)))
                continue
            spec = evaluation_spec(known, trace)  # a session's judge version holds its version
            admitted.inclusion[(trace.trace_id, name)] = item.inclusion_of(name)
            if ctx.spend is not None:
                if run is not None and run not in run_spent:
                    run_spent[run] = ctx.spend.run_spent(run)
                blocked = ctx.spend.over_cap(
                    name, spent, run, run_spent.get(run or "", 0.0), item.run_cap
                )
                if blocked:
                    admitted.refused.append(
                        _judge_row(spec, item, LedgerState.OVER_BUDGET, now, reason=blocked)
                    )
                    metrics.OVER_BUDGET.labels(name).inc()
                    continue
            admitted.running.append(
                _judge_row(spec, item, LedgerState.RUNNING, now, deadline_at=deadline)
            )
            admitted.work.append((spec, item))
    return admitted


def judge_batch(entries: list[WireEntry], ctx: ScoringContext) -> JudgeBatchResult:
    """Run each entry's judges concurrently; write scores, calls and ledger rows; requeue what
    must wait; record work over a spend cap as over_budget instead of running it."""
    now = _now()
    s = ctx.settings
    items, _ = _parse(JudgeWork, entries, ctx)
    admitted = _admit(items, ctx, now)
    scores, ledger, work = admitted.scores, admitted.refused, admitted.work
    if admitted.running:
        # Before the calls: a worker killed now leaves rows the reaper can see are stuck.
        write_rows(ctx.store, admitted.running)
    backfill = any(item.run for item in items)  # a batch is one run's or live
    results = ctx.judge([(spec, item.trace) for spec, item in work], backfill)
    calls: list[tuple[JudgeCall, str | None]] = []  # and the run each belongs to
    later: dict[str, _Deferred] = {}  # entry id -> what of it waits, and how long
    for (spec, item), result in zip(work, results, strict=True):
        waited = time.time() - item.since
        if result.deferred and waited < s.judge_give_up_after_s:
            delay = result.defer_s or _redispatch_delay(s, item.attempt)
            waits = later.setdefault(item.id, _Deferred(item))
            waits.judges[spec.name] = result.call.attempts
            waits.delay_s = max(waits.delay_s, delay)
            metrics.JUDGE_DEFERRED.labels(spec.name, result.defer_reason or "unknown").inc()
            next_at = now + timedelta(seconds=delay)
            why = result.call.error or "judge endpoint unavailable"
            ledger.append(
                _judge_row(
                    spec, item, LedgerState.RETRYING, now, reason=f"transient: {why}",
                    next_attempt_at=next_at,
                    deadline_at=next_at + timedelta(seconds=s.ledger_queued_deadline_s),
                )
            )  # fmt: skip
            continue
        if result.deferred:
            gave_up = _gave_up_score(spec, item.trace, waited)
            scores.append(gave_up)
            ledger.append(_judge_row(spec, item, LedgerState.FAILED, now, reason=gave_up.reason))
            continue
        scores += result.scores
        # The row counts every request of the evaluation, those of dispatches before a
        # deferral too: what the endpoint saw (and billed).
        attempts = result.call.attempts + item.calls_before(spec.name)
        calls.append((result.call.model_copy(update={"attempts": attempts}), item.run))
        state, reason = _judge_outcome(result)
        ledger.append(_judge_row(spec, item, state, now, reason=reason))
    by_trace: dict[str, list[Score]] = defaultdict(list)
    for score in scores:
        by_trace[score.trace_id].append(score)
    trace_of = {item.trace.trace_id: item.trace for item in items}
    reviews = [item for tid, ss in by_trace.items() for item in ctx.router.route(trace_of[tid], ss)]
    call_rows = [call.row() for call, _ in calls]
    refused = _write(
        ctx, trace_of, [], scores, reviews, call_rows, ledger=ledger, inclusion=admitted.inclusion
    )
    if refused:
        _refused(ctx, items, refused, "worker")
        scores = [s for s in scores if s.trace_id not in refused]
        reviews = [r for r in reviews if r.trace_id not in refused]
        calls = [(call, run) for call, run in calls if call.trace_id not in refused]
        call_rows = [c for c in call_rows if c["trace_id"] not in refused]
        later = {k: v for k, v in later.items() if v.item.trace.trace_id not in refused}
    if ctx.spend is not None and calls:
        for run in {run for _, run in calls}:
            ctx.spend.record([call.row() for call, of in calls if of == run], run)
    routed = ctx.router.publish(ctx.client, reviews)
    _record(scores, {t.trace_id: t.prompt_version for t in trace_of.values()}, routed)
    metrics.record_judge_calls(call_rows)
    if later:
        _requeue(ctx, list(later.values()))
    waiting = sum(len(d.judges) for d in later.values())
    return JudgeBatchResult(len({s.id for s in scores}), len(calls), len(routed), waiting)


@dataclass
class _Deferred:
    """A judge work item's evaluations that must wait: judge -> requests made this time."""

    item: JudgeWork
    judges: dict[str, int] = field(default_factory=dict)
    delay_s: float = 0.0


# Deferred items whose delays round up to the same step go back as one task (a batch, not one
# task per trace after an outage: tiny tasks drained slowly), and none waits for a batch-mate's
# longer delay.
_REQUEUE_STEP_S = 0.5


def _requeue(ctx: ScoringContext, deferred: list[_Deferred]) -> None:
    if ctx.requeue is None:
        raise RuntimeError("deferred judge work but no requeue configured")
    groups: dict[float, list[WireEntry]] = defaultdict(list)
    for d in deferred:
        step = math.ceil(d.delay_s / _REQUEUE_STEP_S) * _REQUEUE_STEP_S
        groups[step].append(d.item.later(d.judges))
    for delay_s, entries in sorted(groups.items()):
        # Spread by up to a quarter (a second at most): the batches that met one open breaker
        # do not all come back at the same instant.
        ctx.requeue(entries, delay_s + random.uniform(0, min(1.0, delay_s / 4)))


def _redispatch_delay(settings: Settings, attempt: int) -> float:
    """Before dispatch ``attempt + 1`` of an evaluation whose every request failed while the
    breaker stayed closed: the endpoint as a whole is answering (else the breaker would have
    opened), so soon, growing with each deferral, with jitter."""
    cap = min(settings.judge_backoff_max_s, settings.judge_backoff_base_s * 2 ** (attempt - 1))
    return random.uniform(cap / 2, cap)
