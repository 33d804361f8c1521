"""Re-evaluating stored traces with a judge version, priced before it runs; comparing versions.

``plan`` reads the trace payloads the workers keep (``trace_payloads``, for
``EVALFLEET_TRACE_RETENTION_S``), applies the filters and the judge's ``applies_when``, leaves out
traces this version already scored (so an interrupted run resumes), and prices the rest: tokens
per call from the judge's recent calls (or from rendering its prompt for a sample of the traces
when it has none), USD from the price table, time from the fleet's rate limit for the judge's
model. ``start`` records the evaluations as ``queued`` in the ledger under a run id and hands
them to the ``judges_backfill`` queue, which workers serve after live judge work; the run has a
spend cap of its own (its evaluations past it become ``over_budget``). New scores carry the new
version in their ids, so they land beside the old ones.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select as sa_select
from sqlmodel import col, func, select

from evaluator.ingest.langfuse import BackfillQuery, LangfuseBackfill
from evaluator.judging.files import Judge, JudgeSpec, evaluation_spec, render_messages
from evaluator.ledger import DispatchJudges, LedgerState, ledger_row
from evaluator.models import SESSION_SUBJECT_PREFIX, Level, Trace, Verdict
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore, payload_row
from evaluator.store.tables import (
    JudgeCallRecord,
    LedgerRecord,
    ReviewLabelRecord,
    ScoreRecord,
    TracePayloadRecord,
    TraceRecord,
)
from evaluator.trust.calibrate import Agreement, agreement, spearman
from evaluator.work import judge_entry

# Output tokens assumed for a judge with no recorded calls (reasoning + a few fields).
_DEFAULT_OUTPUT_TOKENS = 200
_CHARS_PER_TOKEN = 4
_SKIP_STATES = (LedgerState.DONE, LedgerState.QUEUED, LedgerState.RUNNING, LedgerState.RETRYING)


class ReevalError(ValueError):
    """A re-evaluation that cannot be planned as asked (unknown judge, wrong version, ...)."""


def parse_target(target: str, judges: dict[str, Judge]) -> JudgeSpec:
    """``NAME@VERSION`` (or ``NAME``: the current version) -> the judge file's spec."""
    name, _, version = target.partition("@")
    spec = judges.get(name)
    if spec is None:
        raise ReevalError(f"unknown judge {name!r} (known: {', '.join(sorted(judges))})")
    if not isinstance(spec, JudgeSpec):
        raise ReevalError(f"{name} is not a judge file; re-evaluation runs judge files")
    if version and version != spec.version:
        raise ReevalError(
            f"judges/{name}.yaml is at version {spec.version}, not {version}: check out the "
            "version to run, or name the current one"
        )
    return spec


@dataclass
class ReevalPlan:
    spec: JudgeSpec
    selected: list[tuple[str, str, float]]  # (trace id, payload, inclusion probability)
    considered: int = 0
    filtered: int = 0  # applies_when ruled them out
    already: int = 0  # this version already scored (or is scoring) them
    input_tokens_per_call: float = 0.0
    output_tokens_per_call: float = 0.0
    tokens_from: str = ""
    usd: float | None = None
    seconds: float | None = None
    pace: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.selected)


def plan(
    store: SQLStore,
    settings: Settings,
    spec: JudgeSpec,
    since: datetime,
    until: datetime | None = None,
    prompt_version: str | None = None,
    tenant: str | None = None,
    limit: int | None = None,
    all_traces: bool = False,
    candidates: Iterable[Candidate] | None = None,
) -> ReevalPlan:
    """What a re-evaluation would judge and what it would cost. ``candidates`` replaces the
    stored traces (e.g. ``langfuse_candidates``); the filters then have been applied by it."""
    result = ReevalPlan(spec, [])
    done = _already_scored(store, spec)
    sessions = spec.level is Level.SESSION
    if candidates is None and sessions:
        candidates = _stored_sessions(store, spec.name, since, until, tenant, all_traces)
    elif candidates is None:
        candidates = _stored_traces(store, since, until, prompt_version, tenant, all_traces)
    for trace_id, payload, rate in candidates:
        result.considered += 1
        if not sessions and (trace_id, spec.version) in done:  # before parsing: cheap
            result.already += 1
            continue
        trace = Trace.model_validate_json(payload)
        if sessions and (trace_id, evaluation_spec(spec, trace).version) in done:
            result.already += 1  # this version of the session was judged by this version
            continue
        if spec.applies_when.why_not(trace):
            result.filtered += 1
            continue
        result.selected.append((trace_id, payload, 1.0 if all_traces else rate))
        if limit is not None and len(result.selected) >= limit:
            break
    _price(store, settings, result)
    return result


# (trace id, trace JSON, P(the trace was sampled for judges)).
Candidate = tuple[str, str, float]


def langfuse_candidates(
    backfill: LangfuseBackfill,
    query: BackfillQuery,
    prompt_version: str | None = None,
    tenant: str | None = None,
) -> Iterator[Candidate]:
    """Traces read back from Langfuse (when they are no longer, or never were, in the store).
    Every trace is a candidate: inclusion probability 1."""
    for page in backfill.trace_pages(query):
        for trace in page.traces:
            if prompt_version is not None and trace.prompt_version != prompt_version:
                continue
            if tenant is not None and trace.tenant != tenant:
                continue
            yield trace.trace_id, trace.model_dump_json(exclude_none=True), 1.0


def _stored_traces(
    store: SQLStore,
    since: datetime,
    until: datetime | None,
    prompt_version: str | None,
    tenant: str | None,
    all_traces: bool,
) -> Iterator[tuple[str, str, float]]:
    with store.session() as session:
        query = (
            select(TracePayloadRecord.trace_id, TracePayloadRecord.payload, TraceRecord.sample_rate)
            .join(TraceRecord, col(TraceRecord.trace_id) == col(TracePayloadRecord.trace_id))
            .where(col(TracePayloadRecord.published_at) >= since)
            .order_by(col(TracePayloadRecord.published_at))
        )
        if until is not None:
            query = query.where(col(TracePayloadRecord.published_at) < until)
        if prompt_version is not None:
            query = query.where(TracePayloadRecord.prompt_version == prompt_version)
        if tenant is not None:
            query = query.where(TracePayloadRecord.tenant == tenant)
        if not all_traces:  # the traces the sampler chose: their inclusion probabilities hold
            query = query.where(col(TraceRecord.judge_sampled).is_(True))
        yield from session.exec(query.execution_options(yield_per=1000))


def _stored_sessions(
    store: SQLStore,
    judge: str,
    since: datetime,
    until: datetime | None,
    tenant: str | None,
    all_traces: bool,
) -> Iterator[Candidate]:
    """Completed sessions as their session task kept them (``sessions.judging``: the Trace at
    its latest version), each with the probability this judge's sampling gave it; with
    ``all_traces`` every kept session, at 1. (A session judge new to the fleet has sampled no
    session yet: re-evaluate it with ``all_traces``.)"""
    with store.session() as session:
        query = select(TracePayloadRecord.trace_id, TracePayloadRecord.payload).where(
            col(TracePayloadRecord.trace_id).startswith(SESSION_SUBJECT_PREFIX),
            col(TracePayloadRecord.published_at) >= since,
        )
        if until is not None:
            query = query.where(col(TracePayloadRecord.published_at) < until)
        if tenant is not None:
            query = query.where(TracePayloadRecord.tenant == tenant)
        kept = list(session.exec(query.order_by(col(TracePayloadRecord.published_at))))
        sampled: dict[str, float] = {}
        if not all_traces:
            decided = select(LedgerRecord.trace_id, LedgerRecord.inclusion_probability).where(
                LedgerRecord.evaluator == judge,
                col(LedgerRecord.trace_id).startswith(SESSION_SUBJECT_PREFIX),
                col(LedgerRecord.inclusion_probability).is_not(None),
                col(LedgerRecord.state).not_in(
                    [LedgerState.SAMPLED_OUT.value, LedgerState.FILTERED.value]
                ),
            )
            sampled = {trace_id: p or 1.0 for trace_id, p in session.exec(decided)}
    for trace_id, payload in kept:
        if all_traces or trace_id in sampled:
            yield trace_id, payload, 1.0 if all_traces else sampled[trace_id]


def _already_scored(store: SQLStore, spec: JudgeSpec) -> set[tuple[str, str]]:
    """(trace id, evaluation version) of this judge version's evaluations that need no rerun;
    a session's evaluation version is ``<judge version>/<session version>``."""
    with store.session() as session:
        query = select(LedgerRecord.trace_id, LedgerRecord.evaluator_version).where(
            LedgerRecord.evaluator == spec.name,
            col(LedgerRecord.evaluator_version).in_([spec.version])
            | col(LedgerRecord.evaluator_version).startswith(spec.version + "/"),
            col(LedgerRecord.state).in_([s.value for s in _SKIP_STATES]),
        )
        return {(trace_id, version) for trace_id, version in session.exec(query)}


def _price(store: SQLStore, settings: Settings, result: ReevalPlan) -> None:
    spec = result.spec
    since = datetime.now(UTC) - timedelta(days=7)
    with store.session() as session:
        tokens_in, tokens_out, latency, calls = session.exec(
            select(
                func.avg(JudgeCallRecord.input_tokens),
                func.avg(JudgeCallRecord.output_tokens),
                func.avg(JudgeCallRecord.latency_ms),
                func.count(),
            ).where(
                JudgeCallRecord.judge == spec.name,
                JudgeCallRecord.status == "ok",
                col(JudgeCallRecord.created_at) >= since,
            )
        ).one()
    if calls:
        result.input_tokens_per_call = float(tokens_in)
        result.output_tokens_per_call = float(tokens_out)
        result.tokens_from = f"the average of its {calls} calls in the last 7 days"
    elif result.selected:
        sample = result.selected[:20]
        chars = [
            sum(
                len(m["content"])
                for m in render_messages(
                    spec, Trace.model_validate_json(p), settings.judge_redact_pii,
                    settings.golden_dir,
                )
            )
            for _, p, _ in sample
        ]  # fmt: skip
        result.input_tokens_per_call = sum(chars) / len(chars) / _CHARS_PER_TOKEN
        result.output_tokens_per_call = _DEFAULT_OUTPUT_TOKENS
        result.tokens_from = (
            f"its prompt rendered for {len(sample)} of the traces (~4 characters per token; "
            f"{_DEFAULT_OUTPUT_TOKENS} output tokens assumed): no recorded calls"
        )
    n = result.count
    per_call = settings.cost_usd(
        spec.model, round(result.input_tokens_per_call), round(result.output_tokens_per_call)
    )
    if per_call is None:
        result.notes.append(
            f"model {spec.model} is not in the price table (EVALFLEET_MODEL_PRICES)"
        )
    else:
        result.usd = per_call * n
    rpm = settings.judge_requests_per_minute.get(spec.model)
    tpm = settings.judge_tokens_per_minute.get(spec.model)
    limits = []
    if rpm:
        limits.append(n / rpm * 60)
    if tpm:
        limits.append(n * (result.input_tokens_per_call + result.output_tokens_per_call) / tpm * 60)
    if limits:
        result.seconds = max(limits)
        result.pace = "at the fleet's rate limit for " + spec.model
    elif n:
        per_call_s = (float(latency) / 1000) if calls and latency else 1.0
        result.seconds = n * per_call_s / settings.judge_max_in_flight
        result.pace = (
            f"no rate limit set: {settings.judge_max_in_flight} calls in flight in one judge "
            f"worker process at {per_call_s:.2f} s per call"
        )
    else:
        result.seconds = 0.0


@dataclass
class ReevalRun:
    run: str
    dispatched: int
    cap_usd: float | None


def start(
    store: SQLStore,
    settings: Settings,
    planned: ReevalPlan,
    dispatch: DispatchJudges,
    cap_usd: float | None,
    progress: Callable[[int], None] | None = None,
) -> ReevalRun:
    """Record the run's evaluations as queued and hand them to the backfill queue."""
    spec = planned.spec
    run = f"reeval-{spec.name}-{spec.version}-{secrets.token_hex(3)}"
    now = datetime.now(UTC)
    deadline = now + timedelta(seconds=settings.ledger_queued_deadline_s)
    size = settings.judge_backfill_batch_size
    for start_at in range(0, planned.count, size):
        chunk = planned.selected[start_at : start_at + size]
        queued, kept = [], []
        for trace_id, payload, p in chunk:
            trace = Trace.model_validate_json(payload)
            # A session's evaluation version carries its own (judging.files.evaluation_spec).
            version = evaluation_spec(spec, trace).version
            queued.append(
                ledger_row(
                    trace_id, spec.name, version, LedgerState.QUEUED, now, attempt=1,
                    inclusion=p, run=run, deadline_at=deadline, reason=f"re-evaluation {run}",
                    dispatches=1,
                )
            )  # fmt: skip
            # Payloads kept for the reaper (a no-op for traces the store already holds).
            kept.append(payload_row(trace, payload, trace.ended_at or now))
        store.write_batch([], [], [], ledger=queued, payloads=kept)
        entries = [
            judge_entry(
                f"{run}:{trace_id}",
                payload,
                [spec.name],
                {spec.name: p},
                now.timestamp(),
                run=run,
                run_cap=cap_usd,
            )
            for trace_id, payload, p in chunk
        ]
        dispatch(entries, run)
        if progress is not None:
            progress(len(chunk))
    return ReevalRun(run, planned.count, cap_usd)


# -- comparing versions ---------------------------------------------------------------------


@dataclass
class FieldComparison:
    name: str
    n: int
    spearman: float | None
    mean_a: float | None
    mean_b: float | None


@dataclass
class Comparison:
    judge: str
    version_a: str
    version_b: str
    traces_a: int
    traces_b: int
    both: int
    verdicts: Agreement
    fields: list[FieldComparison]
    humans_a: Agreement | None = None  # each version against human labels on the same traces
    humans_b: Agreement | None = None

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return json.loads(json.dumps(asdict(self), default=str))  # type: ignore[no-any-return]


Values = dict[str, dict[str, float]]  # trace id -> score name -> value


def _verdicts(store: SQLStore, judge: str, version: str) -> tuple[dict[str, Verdict], Values]:
    """Per trace: the version's verdict (fail when any score failed; errors left out) and its
    numeric values by score name."""
    verdicts: dict[str, Verdict] = {}
    errors: set[str] = set()
    values: Values = {}
    with store.session() as session:
        query = sa_select(
            col(ScoreRecord.trace_id),
            col(ScoreRecord.name),
            col(ScoreRecord.status),
            col(ScoreRecord.passed),
            col(ScoreRecord.value),
        ).where(col(ScoreRecord.evaluator) == judge, col(ScoreRecord.evaluator_version) == version)
        for trace_id, name, status, passed, value in session.execute(query):
            if status != "ok":
                errors.add(trace_id)
                continue
            if passed is not None:
                failed = verdicts.get(trace_id) is Verdict.FAIL or passed is False
                verdicts[trace_id] = Verdict.FAIL if failed else Verdict.PASS
            if value is not None:
                values.setdefault(trace_id, {})[name] = float(value)
    return {t: v for t, v in verdicts.items() if t not in errors}, values


def compare(store: SQLStore, judge: str, version_a: str, version_b: str) -> Comparison:
    a, values_a = _verdicts(store, judge, version_a)
    b, values_b = _verdicts(store, judge, version_b)
    both = sorted(a.keys() & b.keys())
    names = sorted({n for t in both for n in values_a.get(t, {}) if n in values_b.get(t, {})})
    fields = []
    for name in names:
        pairs = [
            (values_a[t][name], values_b[t][name])
            for t in both
            if name in values_a.get(t, {}) and name in values_b.get(t, {})
        ]
        xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
        fields.append(
            FieldComparison(
                name, len(pairs), spearman(xs, ys),
                sum(xs) / len(xs) if xs else None, sum(ys) / len(ys) if ys else None,
            )
        )  # fmt: skip
    result = Comparison(
        judge, version_a, version_b, len(a), len(b), len(both),
        agreement([(a[t], b[t]) for t in both]), fields,
    )  # fmt: skip
    humans = _human_verdicts(store, judge, both)
    if humans:
        result.humans_a = agreement([(humans[t], a[t]) for t in humans])
        result.humans_b = agreement([(humans[t], b[t]) for t in humans])
    return result


def _human_verdicts(store: SQLStore, judge: str, trace_ids: list[str]) -> dict[str, Verdict]:
    if not trace_ids:
        return {}
    with store.session() as session:
        query = (
            select(ReviewLabelRecord.trace_id, ReviewLabelRecord.verdict)
            .where(ReviewLabelRecord.evaluator == judge)
            .where(col(ReviewLabelRecord.trace_id).in_(trace_ids))
            .order_by(col(ReviewLabelRecord.labelled_at))
        )
        return {t: Verdict(v) for t, v in session.exec(query) if v in ("pass", "fail")}
