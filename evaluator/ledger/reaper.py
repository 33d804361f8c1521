"""The reaper: nothing stays open for ever. Open rows past their deadline are re-dispatched
from the stored trace payload, or failed with a reason; settled rows and payloads are pruned;
``redrive`` reopens terminal rows after a fix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import col, select

from evaluator.judging.files import Judge, evaluation_spec
from evaluator.ledger.rows import OPEN_RANK, LedgerState, ledger_row, write_rows
from evaluator.models import Trace, is_session_subject
from evaluator.ops import metrics
from evaluator.settings import LedgerSettings, Settings
from evaluator.store.database import Database
from evaluator.store.tables import LedgerRecord, TracePayloadRecord, TraceRecord, as_utc
from evaluator.work import judge_entry

# Hands judge entries to the workers: (entries, re-evaluation run or None).
DispatchJudges = Callable[[list[dict[str, Any]], str | None], None]


@dataclass
class ReapCounts:
    redispatched: int = 0
    failed: int = 0
    payloads_pruned: int = 0
    reasons: list[str] = field(default_factory=list)


def reap(
    store: Database,
    judges: dict[str, Judge],
    settings: Settings,
    dispatch: DispatchJudges,
    now: datetime | None = None,
    limit: int = 1000,
) -> ReapCounts:
    """Re-dispatch open rows past their deadline, or fail them with a reason."""
    now = now or datetime.now(UTC)
    counts = ReapCounts()
    with store.session() as session:
        query = (
            select(LedgerRecord, TracePayloadRecord.payload, TraceRecord.trace_id)
            .join(
                TracePayloadRecord,
                col(TracePayloadRecord.trace_id) == col(LedgerRecord.trace_id),
                isouter=True,
            )
            .join(
                TraceRecord,
                col(TraceRecord.trace_id) == col(LedgerRecord.trace_id),
                isouter=True,
            )
            .where(col(LedgerRecord.terminal).is_(False), col(LedgerRecord.deadline_at) < now)
            .order_by(col(LedgerRecord.deadline_at))
            .limit(limit)
        )
        stuck = list(session.exec(query))
    # A trace not stored yet: its heuristics batch is still on its way (Celery redelivers a lost
    # one after the visibility timeout). Wait for it, but not for ever.
    patience = timedelta(seconds=settings.ledger_queued_deadline_s * settings.ledger_max_dispatches)
    rows: list[dict[str, Any]] = []
    entries: dict[str | None, list[dict[str, Any]]] = {}
    deadline = now + timedelta(seconds=settings.ledger_queued_deadline_s)
    for record, payload, stored in stuck:
        spec = judges.get(record.evaluator)
        reason = ""
        if payload is None and stored is None and now - as_utc(record.created_at) < patience:
            continue
        dispatches = record.dispatches or 0
        if dispatches >= settings.ledger_max_dispatches:
            reason = (
                f"still {record.state} after {dispatches} dispatches "
                f"(EVALFLEET_LEDGER_MAX_DISPATCHES); last: {record.reason or 'no reason given'}"
            )
        elif spec is None:
            reason = f"judge {record.evaluator!r} is not configured on this fleet any more"
        elif payload is None and is_session_subject(record.trace_id):
            reason = "the session's Trace is not stored (it is kept once its judges are decided)"
        elif _evaluated_version(spec, record.trace_id, payload) != record.evaluator_version:
            reason = (
                f"judge {record.evaluator} is now at version {spec.version}"
                if not is_session_subject(record.trace_id)
                else "the session was evaluated again at a later version (a late turn)"
            )
        elif payload is None and stored is None:
            reason = "its trace was never stored (the heuristics batch did not complete)"
        elif payload is None:
            reason = "the trace payload is no longer stored (EVALFLEET_TRACE_RETENTION_S)"
        common: dict[str, Any] = {
            "attempt": record.attempt + (0 if reason else 1),
            "stratum": record.stratum,
            "inclusion": record.inclusion_probability,
            "run": record.run,
            "dispatches": dispatches + (0 if reason else 1),
        }
        if reason:
            state = LedgerState.FAILED
            counts.failed += 1
            counts.reasons.append(reason)
            metrics.LEDGER_REAPED.labels(record.evaluator, "failed").inc()
            rows.append(
                ledger_row(
                    record.trace_id, record.evaluator, record.evaluator_version, state, now,
                    reason=reason, **common,
                )
            )  # fmt: skip
            continue
        was = f"re-dispatched: {record.state} past its deadline"
        rows.append(
            ledger_row(
                record.trace_id, record.evaluator, record.evaluator_version, LedgerState.QUEUED,
                now, reason=was, deadline_at=deadline, **common,
            )
        )  # fmt: skip
        inclusion = {record.evaluator: record.inclusion_probability or 1.0}
        entries.setdefault(record.run, []).append(
            judge_entry(
                f"ledger:{record.id}",
                payload,
                [record.evaluator],
                inclusion,
                now.timestamp(),
                common["attempt"],
                record.run,
            )
        )
        counts.redispatched += 1
        metrics.LEDGER_REAPED.labels(record.evaluator, "redispatched").inc()
    # The rows first: a dispatch that fails leaves them queued with a deadline, reaped again.
    write_rows(store, rows)
    for run, batch in entries.items():
        for start in range(0, len(batch), settings.judge_batch_size):
            dispatch(batch[start : start + settings.judge_batch_size], run)
    counts.payloads_pruned = prune(store, settings, now)
    return counts


def _evaluated_version(spec: Judge, trace_id: str, payload: str | None) -> str:
    """The version an evaluation of ``spec`` on this trace has now: the judge's, and for a
    session its stored Trace's version too (``judging.files.evaluation_spec``)."""
    if payload is None or not is_session_subject(trace_id):
        return spec.version
    return evaluation_spec(spec, Trace.model_validate_json(payload)).version


def prune(store: Database, settings: LedgerSettings, now: datetime) -> int:
    """Drop trace payloads and terminal ledger rows older than their retentions; returns how
    many payloads went. Open rows stay whatever their age: the reaper settles them."""
    cutoff = now - timedelta(seconds=settings.trace_retention_s)
    ledger_cutoff = now - timedelta(seconds=settings.ledger_retention_s)
    with store.session() as session:
        result: Any = session.exec(
            delete(TracePayloadRecord).where(col(TracePayloadRecord.published_at) < cutoff)
        )
        session.exec(
            delete(LedgerRecord).where(
                col(LedgerRecord.terminal).is_(True), col(LedgerRecord.updated_at) < ledger_cutoff
            )
        )
        session.commit()
        return int(result.rowcount or 0)


def redrive(
    store: Database, state: LedgerState, evaluator: str | None = None, limit: int = 10_000
) -> int:
    """Reopen terminal rows (``over_budget`` after a budget was raised, ``failed`` after a fix)
    as queued past their deadline, dispatch count reset; the reaper then dispatches them."""
    now = datetime.now(UTC)
    with store.session() as session:
        query = select(LedgerRecord.id).where(LedgerRecord.state == state.value)
        if evaluator is not None:
            query = query.where(LedgerRecord.evaluator == evaluator)
        ids = list(session.exec(query.limit(limit)))
        if ids:
            session.exec(
                update(LedgerRecord)
                .where(col(LedgerRecord.id).in_(ids))
                .values(
                    state=LedgerState.QUEUED.value,
                    terminal=False,
                    attempt=0,
                    dispatches=0,
                    progress=OPEN_RANK[LedgerState.QUEUED],
                    reason=f"redriven from {state.value}",
                    deadline_at=now - timedelta(seconds=1),
                    updated_at=now,
                )
            )
            session.commit()
    return len(ids)
