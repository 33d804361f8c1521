"""Reading the ledger: one trace's rows, counts per state, inclusion probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import col, func, select

from evaluator.store.database import Database
from evaluator.store.tables import LedgerRecord


def rows_for_trace(store: Database, trace_id: str) -> list[LedgerRecord]:
    with store.session() as session:
        query = (
            select(LedgerRecord)
            .where(LedgerRecord.trace_id == trace_id)
            .order_by(col(LedgerRecord.evaluator))
        )
        return list(session.exec(query))


def summary(store: Database, since: datetime | None = None) -> dict[str, dict[str, int]]:
    """{evaluator: {state: count}} of rows updated since ``since``."""
    with store.session() as session:
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
    store: Database, evaluator: str, trace_ids: Sequence[str]
) -> dict[str, float]:
    """trace id -> P(the sampler sent it to ``evaluator``), where the ledger knows it."""
    found: dict[str, float] = {}
    with store.session() as session:
        for start in range(0, len(trace_ids), 500):
            query = select(LedgerRecord.trace_id, LedgerRecord.inclusion_probability).where(
                LedgerRecord.evaluator == evaluator,
                col(LedgerRecord.trace_id).in_(trace_ids[start : start + 500]),
                col(LedgerRecord.inclusion_probability).is_not(None),
            )
            found.update({t: float(p) for t, p in session.exec(query) if p})
    return found


def open_count(store: Database) -> int:
    with store.session() as session:
        query = (
            select(func.count())
            .select_from(LedgerRecord)
            .where(col(LedgerRecord.terminal).is_(False))
        )
        return int(session.exec(query).one())
