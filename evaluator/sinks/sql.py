"""The SQL store (SQLModel): scores, per-trace sampling decisions and review items.

Writes are idempotent upserts keyed on deterministic ids, one transaction per batch, so a
redelivered batch leaves exactly the same rows. SQLite by default (WAL), PostgreSQL by URL.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    Text,
    bindparam,
    case,
    cast,
    column,
    event,
    func,
    inspect,
    literal_column,
)
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

from evaluator import metrics
from evaluator.estimates import ScoreSums, Sums
from evaluator.models import (
    ReviewItem,
    ReviewLabel,
    ReviewStatus,
    Score,
    ScoreStatus,
    Trace,
    Verdict,
)


def _tz_datetime(**kwargs: Any) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), **kwargs))


class ScoreRecord(SQLModel, table=True):
    __tablename__ = "scores"

    id: str = Field(primary_key=True, max_length=32)
    trace_id: str = Field(index=True, max_length=256)
    evaluator: str = Field(index=True, max_length=128)
    evaluator_version: str = Field(max_length=64)
    name: str = Field(max_length=128)
    data_type: str = Field(max_length=16)
    value: float | None = None
    label: str | None = Field(default=None, max_length=256)
    passed: bool | None = None
    severity: str = Field(max_length=16)
    status: str = Field(max_length=16)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    tenant: str | None = Field(default=None, max_length=128)
    feature: str | None = Field(default=None, max_length=128)
    prompt_version: str | None = Field(default=None, max_length=128)
    created_at: datetime = _tz_datetime(nullable=False)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # P(this evaluation ran on the trace): 1 for heuristics, the sampler's for judges. Aggregates
    # weight by its inverse (evaluator.estimates). Rows from before it existed read as 1.
    inclusion_probability: float | None = None


class TraceRecord(SQLModel, table=True):
    """One row per scored trace: where it came from and the sampler's judge decision."""

    __tablename__ = "traces"

    trace_id: str = Field(primary_key=True, max_length=256)
    stream_id: str = Field(max_length=64)
    tenant: str | None = Field(default=None, max_length=128)
    feature: str | None = Field(default=None, max_length=128)
    prompt_version: str | None = Field(default=None, max_length=128)
    model: str | None = Field(default=None, max_length=256)
    published_at: datetime = _tz_datetime(nullable=False)
    scored_at: datetime = _tz_datetime(nullable=False, index=True)
    judge_sampled: bool = Field(index=True)
    judge_reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    judges: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    sample_rate: float
    stratum: str | None = Field(default=None, max_length=32)


class TracePayloadRecord(SQLModel, table=True):
    """The trace as published, kept ``EVALFLEET_TRACE_RETENTION_S``: what the reaper re-dispatches
    and ``evalfleet reeval`` re-judges."""

    __tablename__ = "trace_payloads"

    trace_id: str = Field(primary_key=True, max_length=256)
    tenant: str | None = Field(default=None, max_length=128)
    prompt_version: str | None = Field(default=None, max_length=128)
    published_at: datetime = _tz_datetime(nullable=False, index=True)
    payload: str = Field(sa_column=Column(Text, nullable=False))


class LedgerRecord(SQLModel, table=True):
    """One row per (trace, evaluator, evaluator version): where that evaluation stands.

    See ``evaluator.ledger`` for the states and the rule that a row only moves forward.
    """

    __tablename__ = "evaluation_ledger"

    id: str = Field(primary_key=True, max_length=32)
    trace_id: str = Field(index=True, max_length=256)
    evaluator: str = Field(max_length=128)
    evaluator_version: str = Field(max_length=64)
    state: str = Field(max_length=16)
    terminal: bool
    # attempt * 10 + the state's rank: a write lands only when it moves the row forward.
    progress: int
    attempt: int = 0
    stratum: str | None = Field(default=None, max_length=32)
    inclusion_probability: float | None = None
    run: str | None = Field(default=None, max_length=64)  # a re-evaluation run; None: live
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    next_attempt_at: datetime | None = _tz_datetime(nullable=True)
    deadline_at: datetime | None = _tz_datetime(nullable=True)
    created_at: datetime = _tz_datetime(nullable=False)
    updated_at: datetime = _tz_datetime(nullable=False, index=True)

    __table_args__ = (
        Index("ix_evaluation_ledger_open", "terminal", "deadline_at"),
        Index("ix_evaluation_ledger_evaluator", "evaluator", "evaluator_version", "state"),
    )


class JudgeCallRecord(SQLModel, table=True):
    """One judge call per (trace, judge, version): tokens, cost and latency for spend accounting."""

    __tablename__ = "judge_calls"

    id: str = Field(primary_key=True, max_length=32)
    trace_id: str = Field(index=True, max_length=256)
    judge: str = Field(index=True, max_length=128)
    judge_version: str = Field(max_length=64)
    model: str = Field(max_length=256)
    input_tokens: int
    output_tokens: int
    cost_usd: float | None = None
    latency_ms: float
    attempts: int
    mode: str = Field(max_length=16)
    status: str = Field(max_length=16)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = _tz_datetime(nullable=False, index=True)


class OutboxRecord(SQLModel, table=True):
    """A score waiting for (or delivered to) an external sink: the durable hand-off to the relay.

    Written in the same transaction as the score, so a sink that is down loses nothing. Delivered
    rows are kept (until pruned) with their digest, so a redelivered batch with unchanged content
    is not sent twice, while a changed score is sent again.
    """

    __tablename__ = "sink_outbox"

    id: str = Field(primary_key=True, max_length=64)
    sink: str = Field(max_length=32)
    score_id: str = Field(max_length=32)
    trace_id: str = Field(max_length=256)
    # JSON text, serialised once in the worker (and hashed for the digest from the same bytes).
    payload: str = Field(sa_column=Column(Text, nullable=False))
    digest: str = Field(max_length=32)
    created_at: datetime = _tz_datetime(nullable=False)  # the score's time, sent as timestamp
    status: str = Field(max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _tz_datetime(nullable=False)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    updated_at: datetime = _tz_datetime(nullable=False)

    __table_args__ = (Index("ix_sink_outbox_due", "sink", "status", "next_attempt_at"),)


class ReviewItemRecord(SQLModel, table=True):
    __tablename__ = "review_items"

    id: str = Field(primary_key=True, max_length=32)
    trace_id: str = Field(index=True, max_length=256)
    evaluator: str = Field(max_length=128)
    evaluator_version: str = Field(max_length=64)
    priority: int = Field(index=True)
    reasons: list[str] = Field(sa_column=Column(JSON, nullable=False))
    score_ids: list[str] = Field(sa_column=Column(JSON, nullable=False))
    tenant: str | None = Field(default=None, max_length=128)
    feature: str | None = Field(default=None, max_length=128)
    status: str = Field(max_length=16, index=True)
    created_at: datetime = _tz_datetime(nullable=False)
    trace: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class ReviewLabelRecord(SQLModel, table=True):
    """One human label per review item (or imported example): the golden data."""

    __tablename__ = "review_labels"

    id: str = Field(primary_key=True, max_length=32)
    trace_id: str = Field(index=True, max_length=256)
    evaluator: str = Field(index=True, max_length=128)
    evaluator_version: str | None = Field(default=None, max_length=64)
    reviewer: str = Field(max_length=128)
    verdict: str = Field(max_length=16)
    field_scores: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    note: str = Field(default="", sa_column=Column(Text, nullable=False))
    labelled_at: datetime = _tz_datetime(nullable=False)
    source: str = Field(max_length=256)
    tenant: str | None = Field(default=None, max_length=128)
    prompt_version: str | None = Field(default=None, max_length=128)
    trace: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))

    def to_label(self) -> ReviewLabel:
        return ReviewLabel(
            id=self.id,
            trace_id=self.trace_id,
            evaluator=self.evaluator,
            evaluator_version=self.evaluator_version,
            reviewer=self.reviewer,
            verdict=Verdict(self.verdict),
            field_scores=self.field_scores,
            note=self.note,
            labelled_at=as_utc(self.labelled_at),
            source=self.source,
            trace=Trace.model_validate(self.trace),
        )


def as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def label_row(label: ReviewLabel) -> dict[str, Any]:
    return {
        "id": label.id,
        "trace_id": label.trace_id,
        "evaluator": label.evaluator,
        "evaluator_version": label.evaluator_version,
        "reviewer": label.reviewer,
        "verdict": label.verdict.value,
        "field_scores": label.field_scores,
        "note": label.note,
        "labelled_at": label.labelled_at,
        "source": label.source,
        "tenant": label.trace.tenant,
        "prompt_version": label.trace.prompt_version,
        "trace": label.trace.model_dump(mode="json", exclude_none=True),
    }


def score_row(
    score: Score, tenant: str | None, feature: str | None, prompt_version: str | None
) -> dict[str, Any]:
    return {
        "id": score.id,
        "trace_id": score.trace_id,
        "evaluator": score.evaluator,
        "evaluator_version": score.evaluator_version,
        "name": score.name,
        "data_type": score.data_type.value,
        "value": score.value,
        "label": score.label,
        "passed": score.passed,
        "severity": score.severity.value,
        "status": score.status.value,
        "reason": score.reason,
        "tenant": tenant,
        "feature": feature,
        "prompt_version": prompt_version,
        "created_at": score.created_at,
        "details": score.metadata,
    }


def payload_row(trace: Trace, payload: str, published_at: datetime) -> dict[str, Any]:
    """A ``trace_payloads`` row: the trace as published, for the reaper and re-evaluation."""
    return {
        "trace_id": trace.trace_id,
        "tenant": trace.tenant,
        "prompt_version": trace.prompt_version,
        "published_at": published_at,
        "payload": payload,
    }


def review_row(item: ReviewItem) -> dict[str, Any]:
    row = item.model_dump(mode="json", exclude={"trace", "created_at"})
    row["created_at"] = item.created_at
    row["trace"] = item.trace.model_dump(mode="json", exclude_none=True)
    return row


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so processes can share it."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        cursor.close()

    return engine


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


def _sum_terms(w: Any, y: Any) -> list[Any]:
    """w, wy, w², w²y, w²y²: what ``estimates.Sums`` holds besides n."""
    return [w, w * y, w * w, w * w * y, w * w * y * y]


# Which existing rows an upsert may update: (table, the proposed row) -> condition.
Guard = Callable[[Any, Any], Any]


def _digest_changed(table: Any, proposed: Any) -> Any:
    # Outbox: leave a row alone when its content (digest) did not change.
    return table.c.digest != proposed.digest


def _moves_forward(table: Any, proposed: Any) -> Any:
    # Ledger: a terminal row stays; an open one only moves to a later attempt or state.
    return table.c.terminal.is_(False) & (proposed.progress > table.c.progress)


def _add_missing_columns(engine: Engine) -> None:
    """Add nullable columns that a newer version declares to tables an older one created."""
    existing = inspect(engine)
    for table in SQLModel.metadata.sorted_tables:
        if not existing.has_table(table.name):
            continue
        present = {c["name"] for c in existing.get_columns(table.name)}
        for missing in [c for c in table.columns if c.name not in present and c.nullable]:
            kind = missing.type.compile(dialect=engine.dialect)
            with engine.begin() as connection:
                connection.exec_driver_sql(
                    f'ALTER TABLE {table.name} ADD COLUMN "{missing.name}" {kind}'
                )


class SQLStore:
    """Idempotent batch writes and the read queries used by ``stats``, ``demo`` and tests."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        SQLModel.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def _upsert(
        self,
        session: Session,
        model: type[SQLModel],
        rows: Sequence[dict[str, Any]],
        key: str,
        update: bool,
        guard: Guard | None = None,
        keep: tuple[str, ...] = (),
    ) -> None:
        if not rows:
            return
        upsert = self._compiled_upsert(model, tuple(rows[0]), key, update, guard, keep)
        session.connection().exec_driver_sql(upsert.sql, upsert.parameters(rows))

    @cache  # noqa: B019 - one entry per (table, columns, mode); the store lives as long as the process
    def _compiled_upsert(
        self,
        model: type[SQLModel],
        columns: tuple[str, ...],
        key: str,
        update: bool,
        guard: Guard | None = None,
        keep: tuple[str, ...] = (),
    ) -> _CompiledUpsert:
        """Compile the upsert once; batches then skip SQLAlchemy's per-row parameter handling.

        That per-row work dominated batches of thousands of score rows. On PostgreSQL a batch is
        one statement (one JSON parameter through jsonb_to_recordset) instead of a row each.
        """
        table = model.__table__  # type: ignore[attr-defined]
        dialect = self.engine.dialect
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
        # guard: update an existing row only where it holds; keep: columns an update leaves alone.
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

    def write_batch(
        self,
        traces: Sequence[dict[str, Any]],
        scores: Sequence[dict[str, Any]],
        reviews: Sequence[ReviewItem],
        calls: Sequence[dict[str, Any]] = (),
        outbox: Sequence[dict[str, Any]] = (),
        ledger: Sequence[dict[str, Any]] = (),
        payloads: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Upsert traces, scores and judge calls; insert-if-absent review items (keeping their
        reviewer state) and trace payloads; queue sink deliveries whose content changed; move
        ledger rows forward."""
        with Session(self.engine) as session:
            self._upsert(session, TracePayloadRecord, payloads, "trace_id", update=False)
            self.write_ledger(ledger, session)
            self._upsert(session, OutboxRecord, outbox, "id", update=True, guard=_digest_changed)
            self._upsert(session, JudgeCallRecord, calls, "id", update=True)
            self._upsert(session, TraceRecord, traces, "trace_id", update=True)
            self._upsert(session, ScoreRecord, scores, "id", update=True)
            self._upsert(
                session, ReviewItemRecord, [review_row(r) for r in reviews], "id", update=False
            )
            session.commit()

    def write_ledger(self, rows: Sequence[dict[str, Any]], session: Session | None = None) -> None:
        """Move ledger rows forward (see ``evaluator.ledger``); stale or backward writes are no-ops.
        Rows sorted by id: concurrent writers then lock in one order (no deadlocks)."""
        unique = sorted({r["id"]: r for r in rows}.values(), key=lambda r: str(r["id"]))
        for (evaluator, state), count in Counter(
            (r["evaluator"], r["state"]) for r in unique
        ).items():
            metrics.LEDGER_TRANSITIONS.labels(evaluator, state).inc(count)
        keep = ("created_at",)
        if session is not None:
            self._upsert(session, LedgerRecord, unique, "id", True, _moves_forward, keep)
            return
        with Session(self.engine) as own:
            self._upsert(own, LedgerRecord, unique, "id", True, _moves_forward, keep)
            own.commit()

    # -- reads ---------------------------------------------------------------------------------

    def count(self, model: type[SQLModel]) -> int:
        with Session(self.engine) as session:
            return int(session.exec(select(func.count()).select_from(model)).one())

    def score_summary(self) -> list[dict[str, Any]]:
        """Per evaluator and score name: count, passed, failed, errors, mean value."""
        with Session(self.engine) as session:
            rows = session.execute(
                sa_select(
                    col(ScoreRecord.evaluator),
                    col(ScoreRecord.name),
                    func.count(),
                    func.sum(func.cast(col(ScoreRecord.passed).is_(True), Integer)),
                    func.sum(func.cast(col(ScoreRecord.passed).is_(False), Integer)),
                    func.sum(
                        func.cast(col(ScoreRecord.status) == ScoreStatus.ERROR.value, Integer)
                    ),
                    func.avg(col(ScoreRecord.value)),
                )
                .group_by(ScoreRecord.evaluator, ScoreRecord.name)
                .order_by(ScoreRecord.evaluator, ScoreRecord.name)
            ).all()
        return [
            {
                "evaluator": evaluator,
                "name": name,
                "count": int(count),
                "passed": int(passed or 0),
                "failed": int(failed or 0),
                "errors": int(errors or 0),
                "mean": float(mean) if mean is not None else None,
            }
            for evaluator, name, count, passed, failed, errors, mean in rows
        ]

    def judge_sampled_count(self) -> int:
        with Session(self.engine) as session:
            query = (
                select(func.count())
                .select_from(TraceRecord)
                .where(col(TraceRecord.judge_sampled).is_(True))
            )
            return int(session.exec(query).one())

    def score_sums(self, since: datetime | None = None) -> list[ScoreSums]:
        """Per (evaluator, score): the sums of ``estimates.Sums`` for its pass rate and its
        mean over successful scores, weighted by 1 / inclusion probability (none reads as 1).
        Summed by the database: one row per score, whatever the number of traces."""
        # Constants as SQL literals: PostgreSQL cannot type an untyped parameter inside sum().
        one: Any = literal_column("1.0")
        zero: Any = literal_column("0.0")
        weight = one / func.coalesce(col(ScoreRecord.inclusion_probability), one)
        passed = case((col(ScoreRecord.passed).is_(True), one), else_=zero)
        out: list[ScoreSums] = []
        with Session(self.engine) as session:
            for statistic, y, present in (
                ("pass_rate", passed, col(ScoreRecord.passed).is_not(None)),
                ("mean", col(ScoreRecord.value), col(ScoreRecord.value).is_not(None)),
            ):
                query = (
                    sa_select(
                        col(ScoreRecord.evaluator),
                        col(ScoreRecord.name),
                        func.count(),
                        *[func.sum(term) for term in _sum_terms(weight, y)],
                        *[func.sum(term) for term in _sum_terms(one, y)],
                    )
                    .where(col(ScoreRecord.status) == ScoreStatus.OK.value, present)
                    .group_by(col(ScoreRecord.evaluator), col(ScoreRecord.name))
                )
                if since is not None:
                    query = query.where(col(ScoreRecord.created_at) >= since)
                for evaluator, name, n, *sums in session.execute(query):
                    values = [float(v or 0.0) for v in sums]
                    out.append(
                        (
                            evaluator,
                            name,
                            statistic,
                            Sums(int(n), *values[:5]),
                            Sums(int(n), *values[5:]),
                        )
                    )
        return out

    def judge_spend_since(self, since: datetime) -> dict[str, tuple[float, int]]:
        """{judge: (USD, calls)} recorded in judge_calls since ``since``."""
        with Session(self.engine) as session:
            query = (
                select(JudgeCallRecord.judge, func.sum(JudgeCallRecord.cost_usd), func.count())
                .where(col(JudgeCallRecord.created_at) >= since)
                .group_by(col(JudgeCallRecord.judge))
            )
            return {judge: (float(usd or 0.0), int(n)) for judge, usd, n in session.exec(query)}

    def pending_review_count(self) -> int:
        with Session(self.engine) as session:
            query = (
                select(func.count())
                .select_from(ReviewItemRecord)
                .where(ReviewItemRecord.status == ReviewStatus.PENDING.value)
            )
            return int(session.exec(query).one())

    def reviews_created_between(
        self, after: datetime, until: datetime, limit: int = 1000
    ) -> list[ReviewItemRecord]:
        """Pending review items created in (after, until], oldest first."""
        with Session(self.engine) as session:
            query = (
                select(ReviewItemRecord)
                .where(
                    ReviewItemRecord.status == ReviewStatus.PENDING.value,
                    col(ReviewItemRecord.created_at) > after,
                    col(ReviewItemRecord.created_at) <= until,
                )
                .order_by(col(ReviewItemRecord.created_at))
                .limit(limit)
            )
            return list(session.exec(query).all())

    def review_queue(self, limit: int = 10) -> list[ReviewItemRecord]:
        """Pending review items, most urgent first."""
        with Session(self.engine) as session:
            query = (
                select(ReviewItemRecord)
                .where(ReviewItemRecord.status == ReviewStatus.PENDING.value)
                .order_by(col(ReviewItemRecord.priority).desc(), col(ReviewItemRecord.created_at))
                .limit(limit)
            )
            return list(session.exec(query).all())

    def outbox_counts(self) -> dict[str, dict[str, int]]:
        """Outbox rows per sink and status (pending, delivered, rejected)."""
        counts: dict[str, dict[str, int]] = {}
        with Session(self.engine) as session:
            query = select(OutboxRecord.sink, OutboxRecord.status, func.count()).group_by(
                OutboxRecord.sink, OutboxRecord.status
            )
            for sink, status, count in session.exec(query):
                counts.setdefault(sink, {})[status] = int(count)
        return counts

    # -- review --------------------------------------------------------------------------------

    def add_labels(self, labels: Sequence[ReviewLabel], replace: bool = False) -> None:
        """Insert labels; an existing label (same id) is kept unless ``replace`` (imports)."""
        with Session(self.engine) as session:
            rows = [label_row(label) for label in labels]
            self._upsert(session, ReviewLabelRecord, rows, "id", update=replace)
            session.commit()

    def label(self, label_id: str) -> ReviewLabel | None:
        with Session(self.engine) as session:
            record = session.get(ReviewLabelRecord, label_id)
            return record.to_label() if record else None

    def labels(self, evaluator: str | None = None) -> list[ReviewLabel]:
        with Session(self.engine) as session:
            query = select(ReviewLabelRecord).order_by(col(ReviewLabelRecord.labelled_at))
            if evaluator is not None:
                query = query.where(ReviewLabelRecord.evaluator == evaluator)
            return [record.to_label() for record in session.exec(query)]

    def review_item(self, item_id: str) -> ReviewItemRecord | None:
        with Session(self.engine) as session:
            return session.get(ReviewItemRecord, item_id)

    def set_review_status(self, item_id: str, status: ReviewStatus) -> None:
        with Session(self.engine) as session:
            record = session.get(ReviewItemRecord, item_id)
            if record is not None and record.status != ReviewStatus.LABELLED.value:
                record.status = status.value  # a label is final
                session.add(record)
                session.commit()

    def scores_by_id(self, score_ids: Sequence[str]) -> list[ScoreRecord]:
        with Session(self.engine) as session:
            query = select(ScoreRecord).where(col(ScoreRecord.id).in_(list(score_ids)))
            return list(session.exec(query))

    def review_counts(self) -> list[tuple[str, str | None, str, int]]:
        """(evaluator, tenant, status, count) over all review items."""
        with Session(self.engine) as session:
            query = select(
                ReviewItemRecord.evaluator,
                ReviewItemRecord.tenant,
                ReviewItemRecord.status,
                func.count(),
            ).group_by(
                col(ReviewItemRecord.evaluator),
                col(ReviewItemRecord.tenant),
                col(ReviewItemRecord.status),
            )
            return [(e, t, s, int(c)) for e, t, s, c in session.exec(query)]

    def publish_to_score_delays_ms(self) -> list[float]:
        with Session(self.engine) as session:
            rows = session.exec(select(TraceRecord.published_at, TraceRecord.scored_at)).all()
        return sorted((scored - published).total_seconds() * 1000 for published, scored in rows)


__all__ = [
    "JudgeCallRecord",
    "LedgerRecord",
    "OutboxRecord",
    "ReviewItemRecord",
    "ReviewLabelRecord",
    "SQLStore",
    "ScoreRecord",
    "TracePayloadRecord",
    "TraceRecord",
    "make_engine",
]
