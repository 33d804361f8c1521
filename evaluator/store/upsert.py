"""Batched idempotent upserts: INSERT … ON CONFLICT compiled once per table and column set.

Every write of the fleet is an upsert keyed on a deterministic id, so a redelivered batch leaves
exactly the same rows. A guard limits which existing rows an update may change (the ledger's
forward-only rule, the outbox's changed-content rule).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Dialect, bindparam, cast, column, func
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session, SQLModel

# Which existing rows an upsert may update: (table, the proposed row) -> condition.
Guard = Callable[[Any, Any], Any]


def _json_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in a JSON batch")


@dataclass(frozen=True)
class _CompiledUpsert:
    """An INSERT ... ON CONFLICT compiled once per table, and how to pass a batch of rows to it."""

    sql: str
    # SQLite: executemany; each value converted by its column type's bind processor.
    processors: list[tuple[str, Callable[[Any], Any]]]
    order: list[str]
    # PostgreSQL: the whole batch as one JSON document, expanded by jsonb_to_recordset.
    json_batch: bool

    def parameters(self, rows: Sequence[dict[str, Any]]) -> Any:
        if self.json_batch:
            return {"rows": json.dumps(rows, default=_json_default)}
        converted = []
        for row in rows:
            values = dict(row)
            for name, process in self.processors:
                values[name] = process(values[name])
            converted.append(tuple(values[name] for name in self.order))
        return converted


def upsert(
    session: Session,
    model: type[SQLModel],
    rows: Sequence[dict[str, Any]],
    key: str,
    *,
    update: bool,
    guard: Guard | None = None,
    keep: tuple[str, ...] = (),
) -> None:
    """Insert ``rows`` (all with the same columns); on a key conflict update the row (where
    ``guard`` holds, leaving ``keep`` alone) or, without ``update``, leave it as it is."""
    if not rows:
        return
    dialect = session.get_bind().dialect
    compiled = _compiled_upsert(dialect, model, tuple(rows[0]), key, update, guard, keep)
    session.connection().exec_driver_sql(compiled.sql, compiled.parameters(rows))


@cache
def _compiled_upsert(
    dialect: Dialect,
    model: type[SQLModel],
    columns: tuple[str, ...],
    key: str,
    update: bool,
    guard: Guard | None,
    keep: tuple[str, ...],
) -> _CompiledUpsert:
    """Compile the upsert once; batches then skip SQLAlchemy's per-row parameter handling.

    That per-row work dominated batches of thousands of score rows. On PostgreSQL a batch is
    one statement (one JSON parameter through jsonb_to_recordset) instead of a row each.
    """
    table = model.__table__  # type: ignore[attr-defined]
    if dialect.name == "postgresql":
        record = (
            func.jsonb_to_recordset(cast(bindparam("rows"), JSONB))
            .table_valued(*[column(c, table.c[c].type) for c in columns])
            .render_derived(with_types=True)
        )
        base: Any = postgresql.insert(table).from_select(
            list(columns), sa_select(*[record.c[c] for c in columns])
        )
    elif dialect.name == "sqlite":
        base = sqlite.insert(table)
    else:
        raise ValueError(f"unsupported database {dialect.name!r} (use SQLite or PostgreSQL)")
    where = None if guard is None else guard(table, base.excluded)
    stmt = (
        base.on_conflict_do_update(
            index_elements=[key],
            set_={c: base.excluded[c] for c in columns if c != key and c not in keep},
            where=where,
        )
        if update
        else base.on_conflict_do_nothing(index_elements=[key])
    )
    compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
    processors = [
        (name, process)
        for name in columns
        if (process := table.c[name].type._cached_bind_processor(dialect)) is not None
    ]
    order = list(compiled.positiontup or columns)
    return _CompiledUpsert(compiled.string, processors, order, dialect.name == "postgresql")
