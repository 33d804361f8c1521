"""The evaluation ledger: for every (trace, evaluator, evaluator version), where it stands.

States: ``filtered`` (the judge does not apply), ``sampled_out``, ``queued``, ``running``,
``retrying`` (attempt, next time), ``done``, ``failed`` (reason), ``dead_lettered``,
``over_budget``. The first two and the last four are terminal.

Rows only move forward: a write lands when the row is open and the write's
``attempt * 10 + rank(state)`` is larger (a terminal write always is), so a late "queued" from
the heuristics worker never overwrites the judge worker's "running", and a Celery redelivery of
a finished batch changes nothing. Heuristics run on every trace in one step and are recorded as
one row per trace (evaluator ``heuristics``).

Nothing stays open for ever: ``reap`` (run by the sampler every ``EVALFLEET_REAPER_INTERVAL_S``
under a fleet-wide lock, or ``evalfleet ledger reap``) re-dispatches open rows past their
deadline from the stored trace payload, or fails them with a reason after
``EVALFLEET_LEDGER_MAX_DISPATCHES``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import Session, col, func, select

from evaluator import metrics
from evaluator.evaluators import Evaluator
from evaluator.judges import Judge
from evaluator.models import SampleDecision, stable_id
from evaluator.settings import Settings
from evaluator.sinks.sql import (
    LedgerRecord,
    SQLStore,
    TracePayloadRecord,
    TraceRecord,
    as_utc,
)
from evaluator.work import judge_entry

log = logging.getLogger(__name__)

HEURISTICS = "heuristics"


class LedgerState(StrEnum):
    FILTERED = "filtered"
    SAMPLED_OUT = "sampled_out"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    OVER_BUDGET = "over_budget"


OPEN_RANK = {LedgerState.QUEUED: 1, LedgerState.RUNNING: 2, LedgerState.RETRYING: 3}
_TERMINAL_PROGRESS = 10**9


def heuristics_version(evaluators: Sequence[Evaluator]) -> str:
    """One version for the heuristics bundle: changes when any heuristic's version does."""
    return stable_id(*sorted(f"{e.name}@{e.version}" for e in evaluators))[:12]


def ledger_row(
    trace_id: str,
    evaluator: str,
    version: str,
    state: LedgerState,
    now: datetime,
    *,
    attempt: int = 0,
    reason: str = "",
    stratum: str | None = None,
    inclusion: float | None = None,
    run: str | None = None,
    next_attempt_at: datetime | None = None,
    deadline_at: datetime | None = None,
) -> dict[str, Any]:
    terminal = state not in OPEN_RANK
    return {
        "id": stable_id(trace_id, evaluator, version),
        "trace_id": trace_id,
        "evaluator": evaluator,
        "evaluator_version": version,
        "state": state.value,
        "terminal": terminal,
        "progress": _TERMINAL_PROGRESS if terminal else attempt * 10 + OPEN_RANK[state],
        "attempt": attempt,
        "stratum": stratum,
        "inclusion_probability": inclusion,
        "run": run,
        "reason": reason[:2000],
        "next_attempt_at": next_attempt_at,
        "deadline_at": deadline_at,
        "created_at": now,
        "updated_at": now,
    }


def decision_rows(
    trace_id: str,
    decision: SampleDecision,
    judges: dict[str, Judge],
    settings: Settings,
    now: datetime,
) -> list[dict[str, Any]]:
    """The sampler's verdict for each judge: queued, sampled_out or filtered."""
    rows = []
    deadline = now + timedelta(seconds=settings.ledger_queued_deadline_s)
    why_out = f"stratum {decision.stratum} at rate {decision.rate:g}"
    for name in [*decision.judges, *decision.sampled_out, *decision.filtered]:
        spec = judges.get(name)
        if spec is None:
            continue  # not this worker's judge: the judge task records it as an error
        common: dict[str, Any] = {"stratum": decision.stratum}
        if name in decision.judges:
            rows.append(
                ledger_row(
                    trace_id, name, spec.version, LedgerState.QUEUED, now, attempt=1,
                    inclusion=decision.inclusion.get(name), deadline_at=deadline, **common,
                )
            )  # fmt: skip
        elif name in decision.filtered:
            reason = decision.filtered[name]
            rows.append(
                ledger_row(trace_id, name, spec.version, LedgerState.FILTERED, now, reason=reason)
            )
        else:
            reason = why_out if not decision.judge else "thinned out by the judge's budget"
            rows.append(
                ledger_row(
                    trace_id, name, spec.version, LedgerState.SAMPLED_OUT, now,
                    reason=reason, **common,
                )
            )  # fmt: skip
    return rows


# -- reading --------------------------------------------------------------------------------


def rows_for_trace(store: SQLStore, trace_id: str) -> list[LedgerRecord]:
    with Session(store.engine) as session:
        query = (
            select(LedgerRecord)
            .where(LedgerRecord.trace_id == trace_id)
            .order_by(col(LedgerRecord.evaluator))
        )
        return list(session.exec(query))


def summary(store: SQLStore, since: datetime | None = None) -> dict[str, dict[str, int]]:
    """{evaluator: {state: count}} of rows updated since ``since``."""
    with Session(store.engine) as session:
        query = select(LedgerRecord.evaluator, LedgerRecord.state, func.count()).group_by(
            col(LedgerRecord.evaluator), col(LedgerRecord.state)
        )
        if since is not None:
            query = query.where(col(LedgerRecord.updated_at) >= since)
        out: dict[str, dict[str, int]] = {}
        for evaluator, state, count in session.exec(query):
            out.setdefault(evaluator, {})[state] = int(count)
        return out


def inclusion_probabilities(
    store: SQLStore, evaluator: str, trace_ids: Sequence[str]
) -> dict[str, float]:
    """trace id -> P(the sampler sent it to ``evaluator``), where the ledger knows it."""
    found: dict[str, float] = {}
    with Session(store.engine) as session:
        for start in range(0, len(trace_ids), 500):
            query = select(LedgerRecord.trace_id, LedgerRecord.inclusion_probability).where(
                LedgerRecord.evaluator == evaluator,
                col(LedgerRecord.trace_id).in_(trace_ids[start : start + 500]),
                col(LedgerRecord.inclusion_probability).is_not(None),
            )
            found.update({t: float(p) for t, p in session.exec(query) if p})
    return found


def open_count(store: SQLStore) -> int:
    with Session(store.engine) as session:
        query = (
            select(func.count())
            .select_from(LedgerRecord)
            .where(col(LedgerRecord.terminal).is_(False))
        )
        return int(session.exec(query).one())


# -- the reaper -----------------------------------------------------------------------------

# Hands judge entries to the workers: (entries, re-evaluation run or None).
DispatchJudges = Callable[[list[dict[str, Any]], str | None], None]


@dataclass
class ReapCounts:
    redispatched: int = 0
    failed: int = 0
    payloads_pruned: int = 0
    reasons: list[str] = field(default_factory=list)


def reap(
    store: SQLStore,
    judges: dict[str, Judge],
    settings: Settings,
    dispatch: DispatchJudges,
    now: datetime | None = None,
    limit: int = 1000,
) -> ReapCounts:
    """Re-dispatch open rows past their deadline, or fail them with a reason."""
    now = now or datetime.now(UTC)
    counts = ReapCounts()
    with Session(store.engine) as session:
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
        if record.attempt >= settings.ledger_max_dispatches:
            reason = (
                f"still {record.state} after {record.attempt} dispatches "
                f"(EVALFLEET_LEDGER_MAX_DISPATCHES); last: {record.reason or 'no reason given'}"
            )
        elif spec is None:
            reason = f"judge {record.evaluator!r} is not configured on this fleet any more"
        elif spec.version != record.evaluator_version:
            reason = f"judge {record.evaluator} is now at version {spec.version}"
        elif payload is None and stored is None:
            reason = "its trace was never stored (the heuristics batch did not complete)"
        elif payload is None:
            reason = "the trace payload is no longer stored (EVALFLEET_TRACE_RETENTION_S)"
        common: dict[str, Any] = {
            "attempt": record.attempt + (0 if reason else 1),
            "stratum": record.stratum,
            "inclusion": record.inclusion_probability,
            "run": record.run,
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
    store.write_ledger(rows)
    for run, batch in entries.items():
        for start in range(0, len(batch), settings.judge_batch_size):
            dispatch(batch[start : start + settings.judge_batch_size], run)
    counts.payloads_pruned = prune(store, settings, now)
    return counts


def prune(store: SQLStore, settings: Settings, now: datetime) -> int:
    """Drop trace payloads and terminal ledger rows older than their retentions; returns how
    many payloads went. Open rows stay whatever their age: the reaper settles them."""
    cutoff = now - timedelta(seconds=settings.trace_retention_s)
    ledger_cutoff = now - timedelta(seconds=settings.ledger_retention_s)
    with Session(store.engine) as session:
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
    store: SQLStore, state: LedgerState, evaluator: str | None = None, limit: int = 10_000
) -> int:
    """Reopen terminal rows (``over_budget`` after a budget was raised, ``failed`` after a fix)
    as queued past their deadline, dispatch count reset; the reaper then dispatches them."""
    now = datetime.now(UTC)
    with Session(store.engine) as session:
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
                    progress=OPEN_RANK[LedgerState.QUEUED],
                    reason=f"redriven from {state.value}",
                    deadline_at=now - timedelta(seconds=1),
                    updated_at=now,
                )
            )
            session.commit()
    return len(ids)
