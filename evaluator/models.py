"""Wire and domain models: what apps publish (Trace) and what evaluators produce (Score)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


def _now() -> datetime:
    return datetime.now(UTC)


def stable_id(*parts: str) -> str:
    """A deterministic 32-hex-digit id; the same parts always give the same id."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:32]


def display_name(evaluator: str, score_name: str) -> str:
    """A score's name outside Evalfleet: the score name, prefixed by its evaluator when a judge
    returns several fields (``correctness.completeness``)."""
    return score_name if score_name == evaluator else f"{evaluator}.{score_name}"


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line, human-readable summary of what is wrong with a payload."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


class TokenUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: int = Field(default=0, ge=0)
    output: int = Field(default=0, ge=0)

    @property
    def total(self) -> int:
        return self.input + self.output


class Trace(BaseModel):
    """One completed interaction of an LLM application, as published to ``evalfleet:traces``.

    Only ``trace_id`` and ``output`` are required. Unknown top-level fields are rejected so that a
    typo (``ouput``) is a clear dead-letter reason rather than silently missing data; put anything
    app-specific into ``metadata``.
    """

    model_config = ConfigDict(extra="forbid", str_max_length=1_000_000)

    trace_id: str = Field(min_length=1, max_length=256, pattern=r"^[^\s]+$")
    input: str = Field(default="", description="The user's request (or the final prompt).")
    output: str = Field(description="The application's answer that is evaluated.")
    contexts: list[str] = Field(default_factory=list, description="Retrieved documents (RAG).")
    retrieval: bool = Field(
        default=False,
        description="The app is a RAG flow: an answer without contexts is then flagged.",
    )
    reference: str | None = Field(default=None, description="A known-good answer, if any.")
    model: str | None = None
    prompt_version: str | None = None
    app_version: str | None = None
    tenant: str | None = Field(default=None, max_length=128)
    feature: str | None = Field(default=None, max_length=128)
    latency_ms: float | None = Field(default=None, ge=0)
    finish_reason: str | None = Field(
        default=None, description="stop, length, content_filter, tool_calls, ..."
    )
    error: str | None = Field(default=None, description="Set when the app call failed.")
    tokens: TokenUsage | None = None
    cost_usd: float | None = Field(default=None, ge=0)
    user_feedback: Literal["positive", "negative"] | None = None
    output_format: Literal["text", "json"] = "text"
    output_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema the output must satisfy (implies JSON output)."
    )
    span_id: str | None = Field(default=None, description="The answer's span/observation id.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @model_validator(mode="after")
    def _times_in_order(self) -> Trace:
        if self.started_at and self.ended_at and self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        return self

    @property
    def expects_json(self) -> bool:
        return self.output_format == "json" or self.output_schema is not None


class ScoreStatus(StrEnum):
    OK = "ok"
    ERROR = "error"


class ScoreType(StrEnum):
    NUMERIC = "numeric"
    BOOLEAN = "boolean"
    CATEGORICAL = "categorical"


class Severity(StrEnum):
    """How urgently a failure needs a human: decides whether and how early it is reviewed."""

    LOW = "low"
    HIGH = "high"
    CRITICAL = "critical"


class Score(BaseModel):
    """One evaluation result for one trace. ``id`` is deterministic, so sinks can upsert."""

    id: str
    trace_id: str
    evaluator: str
    evaluator_version: str
    name: str
    data_type: ScoreType = ScoreType.BOOLEAN
    value: float | None = None
    label: str | None = None
    passed: bool | None = None
    severity: Severity = Severity.LOW
    status: ScoreStatus = ScoreStatus.OK
    reason: str = ""
    created_at: datetime = Field(default_factory=_now)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def for_trace(
        cls, trace_id: str, evaluator: str, evaluator_version: str, name: str, **fields: Any
    ) -> Score:
        """Build a Score whose id is derived from (trace, evaluator, version, name)."""
        score_id = stable_id(trace_id, evaluator, evaluator_version, name)
        return cls(
            id=score_id,
            trace_id=trace_id,
            evaluator=evaluator,
            evaluator_version=evaluator_version,
            name=name,
            **fields,
        )

    @property
    def failed(self) -> bool:
        return self.status is ScoreStatus.OK and self.passed is False


class SampleDecision(BaseModel):
    """The sampler's verdict for one trace: heuristics always; judges when ``judge`` is set."""

    judge: bool
    reasons: list[str] = Field(default_factory=list)
    stratum: str = "control"
    rate: float = Field(ge=0, le=1, description="The stratum's rate: P(trace sampled).")
    judges: list[str] = Field(default_factory=list, description="Judges that apply to the trace.")
    inclusion: dict[str, float] = Field(
        default_factory=dict, description="Per judge: P(this judge ran on the trace)."
    )
    sampled_out: list[str] = Field(
        default_factory=list,
        description="Judges not run by sampling: every judge of an unsampled trace, or thinned "
        "out by a judge's budget.",
    )
    filtered: dict[str, str] = Field(
        default_factory=dict, description="Judges whose applies_when ruled the trace out, and why."
    )


class ReviewStatus(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    LABELLED = "labelled"


class Verdict(StrEnum):
    """A human's verdict on the evaluator's question: the answer is fine (pass) or not (fail)."""

    PASS = "pass"
    FAIL = "fail"


class ReviewLabel(BaseModel):
    """A human label: what golden datasets are made of and judges are calibrated against."""

    id: str = Field(description="The review item's id (or a deterministic id for imports).")
    trace_id: str
    evaluator: str = Field(description="The judge (or check) whose question the label answers.")
    evaluator_version: str | None = Field(
        default=None, description="The version that flagged the trace, when it came from review."
    )
    reviewer: str
    verdict: Verdict
    field_scores: dict[str, float | str | bool] = Field(default_factory=dict)
    note: str = ""
    labelled_at: datetime = Field(default_factory=_now)
    source: str = "review"
    trace: Trace


class ReviewItem(BaseModel):
    """A trace sent to human review because of one evaluator's failing scores."""

    id: str
    trace_id: str
    evaluator: str
    evaluator_version: str
    priority: int = Field(default=0, description="Higher is reviewed first.")
    reasons: list[str]
    score_ids: list[str]
    tenant: str | None = None
    feature: str | None = None
    status: ReviewStatus = ReviewStatus.PENDING
    created_at: datetime = Field(default_factory=_now)
    trace: Trace

    @classmethod
    def for_scores(cls, trace: Trace, failing: list[Score], priority: int) -> ReviewItem:
        first = failing[0]
        return cls(
            id=stable_id(trace.trace_id, first.evaluator, first.evaluator_version, "review"),
            trace_id=trace.trace_id,
            evaluator=first.evaluator,
            evaluator_version=first.evaluator_version,
            priority=priority,
            reasons=[f"{s.name}: {s.reason}" for s in failing],
            score_ids=[s.id for s in failing],
            tenant=trace.tenant,
            feature=trace.feature,
            trace=trace,
        )
