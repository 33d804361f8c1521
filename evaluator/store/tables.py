"""Every table of the fleet's database, in one place (what ``store.schema`` creates).

Each table's meaning lives with the room that writes it: scores, traces, calls, payloads and
review rows with ``sinks/sql.py``, the outbox with ``sinks/outbox.py``, the ledger with
``evaluator.ledger``. Imports models only, so any room may import it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, Text
from sqlmodel import Field, SQLModel

from evaluator.models import ReviewLabel, Trace, Verdict


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
    # weight by its inverse (evaluator.sampling.estimates). Rows from before it existed read as 1.
    inclusion_probability: float | None = None
    # What the score is about (models.Level: turn, trajectory, session). Rows from before it
    # existed have none: read as "session" when their trace id is a session subject
    # ("session:<digest>"), else as "turn" (sinks.sql.LEVEL, the one place that reads it).
    level: str | None = Field(default=None, max_length=16)


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

    Owned by ``evaluator.ledger``: its states, transitions, the rule that a row only moves
    forward, and its queries.
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
    # How often it was handed to a worker (the first dispatch and the reaper's; deferrals and
    # retries bump ``attempt``, not this): what EVALFLEET_LEDGER_MAX_DISPATCHES bounds.
    dispatches: int | None = None
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
    cached_tokens: int | None = None  # of input_tokens, from the provider's prompt cache
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
    # Issue 15: what is reviewed (turn / trajectory / session), the session, the failing steps
    # and turns. Nullable, so create_schema adds them to an older database; None reads as turn.
    level: str | None = Field(default=None, max_length=16)
    session_id: str | None = Field(default=None, max_length=256)
    focus: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


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
