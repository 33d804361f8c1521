"""Creating and upgrading the database schema: the one place that does it.

Upgrades so far only add nullable columns (``scores.inclusion_probability``,
``evaluation_ledger.dispatches``, ``scores.level``), which ``create_schema`` applies to a
database an older version created, so a running fleet upgrades by restarting its processes.
Existing rows are not rewritten: a column's reader says what its absence means (a score without
a level is a session score when its trace id is a session subject, else a turn score:
``sinks.sql.LEVEL``), so an upgrade costs one ALTER per column, whatever the table's size.
The first change that is not additive (a rename, a type change, a new constraint on existing
rows) is the point to introduce Alembic migrations; until then they would be ceremony without a
job.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, inspect
from sqlmodel import SQLModel

from evaluator.store import tables as _tables  # noqa: F401 - registers every table's metadata

# A fleet starts its processes together against one database: without a lock, two of them
# create the same table at once and one fails (PostgreSQL: a unique violation on pg_type;
# SQLite: "table ... already exists").
_SCHEMA_LOCK_KEY = 0x65766C66  # "evlf": the advisory lock every process takes for the schema


def create_schema(engine: Engine) -> None:
    """Create missing tables and indexes, and add nullable columns a newer version declares;
    one process at a time, the others wait and then find the work done (PostgreSQL: an
    advisory lock held until the commit; SQLite: one exclusive transaction, which others wait
    for within the busy timeout: pysqlite would otherwise run each CREATE on its own)."""
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN EXCLUSIVE")
        elif connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})")
        SQLModel.metadata.create_all(connection)
        _add_missing_columns(connection)
        connection.commit()


def _add_missing_columns(connection: Connection) -> None:
    existing = inspect(connection)
    for table in SQLModel.metadata.sorted_tables:
        if not existing.has_table(table.name):
            continue
        present = {c["name"] for c in existing.get_columns(table.name)}
        for missing in [c for c in table.columns if c.name not in present and c.nullable]:
            kind = missing.type.compile(dialect=connection.dialect)
            connection.exec_driver_sql(
                f'ALTER TABLE {table.name} ADD COLUMN "{missing.name}" {kind}'
            )
