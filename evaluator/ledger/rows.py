"""The ledger's rows and transitions: its states, how a row is built, and the one write
that moves rows forward (never back)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlmodel import Session

from evaluator.evaluators import Evaluator
from evaluator.judging.files import Judge
from evaluator.models import SampleDecision, stable_id
from evaluator.ops import metrics
from evaluator.settings import LedgerSettings
from evaluator.store.database import Database
from evaluator.store.tables import LedgerRecord
from evaluator.store.upsert import upsert

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
    dispatches: int | None = None,
) -> dict[str, Any]:
    """A ledger row. ``dispatches`` (how often the work was handed to a worker) only from those
    who dispatch: the sampler's verdict, re-evaluation and the reaper; other writes leave it."""
    terminal = state not in OPEN_RANK
    row = {
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
    if dispatches is not None:
        row["dispatches"] = dispatches
    return row


def decision_rows(
    trace_id: str,
    decision: SampleDecision,
    judges: dict[str, Judge],
    settings: LedgerSettings,
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
                    inclusion=decision.inclusion.get(name), deadline_at=deadline, dispatches=1,
                    **common,
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


def _moves_forward(table: Any, proposed: Any) -> Any:
    # A terminal row stays; an open one only moves to a later attempt or state.
    return table.c.terminal.is_(False) & (proposed.progress > table.c.progress)


def write_rows(
    db: Database, rows: Sequence[dict[str, Any]], session: Session | None = None
) -> None:
    """Move ledger rows forward; stale or backward writes are no-ops. Inside ``session`` when
    given (a results batch's transaction), else in a transaction of its own. Rows sorted by id:
    concurrent writers then lock in one order (no deadlocks)."""
    unique = sorted({r["id"]: r for r in rows}.values(), key=lambda r: str(r["id"]))
    for (evaluator, state), count in Counter((r["evaluator"], r["state"]) for r in unique).items():
        metrics.LEDGER_TRANSITIONS.labels(evaluator, state).inc(count)
    # One upsert per column set: a row without "dispatches" must not reset the reaper's count.
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in unique:
        by_columns.setdefault(tuple(row), []).append(row)
    if session is not None:
        _upsert_groups(session, by_columns.values())
        return
    with db.session() as own:
        _upsert_groups(own, by_columns.values())
        own.commit()


def _upsert_groups(session: Session, groups: Iterable[list[dict[str, Any]]]) -> None:
    for group in groups:
        upsert(
            session, LedgerRecord, group, "id",
            update=True, guard=_moves_forward, keep=("created_at",),
        )  # fmt: skip
