"""A handle on the fleet's database: the engine, with the schema created on open."""

from __future__ import annotations

from sqlmodel import Session, SQLModel, func, select

from evaluator.store.engine import make_engine
from evaluator.store.schema import create_schema


class Database:
    """The engine for ``url`` with every table present. Rooms that own tables (results in
    ``sinks/sql.py``, the ledger, the outbox) read and write through it."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        create_schema(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return Session(self.engine)

    def count(self, model: type[SQLModel]) -> int:
        with self.session() as session:
            return int(session.exec(select(func.count()).select_from(model)).one())
