"""Wire and domain models: what apps publish (Trace) and what evaluators produce (Score)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import to_json


def _now() -> datetime:
    return datetime.now(UTC)


def stable_id(*parts: str) -> str:
    """A deterministic 32-hex-digit id; the same parts always give the same id."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:32]


def sample_point(key: str, salt: str = "") -> float:
    """A uniform number in [0, 1) derived from ``key`` (a trace id, a session's digest and
    version): the same key always lands the same, so sampling is deterministic everywhere."""
    digest = hashlib.blake2b(f"{salt}{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def display_name(evaluator: str, score_name: str) -> str:
    """A score's name outside Evalfleet: the score name, prefixed by its evaluator when a judge
    returns several fields (``correctness.completeness``)."""
    return score_name if score_name == evaluator else f"{evaluator}.{score_name}"


# An escaped UTF-16 surrogate in JSON text: valid only as a high + low pair.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# A check's message that starts by naming a field: ``error: must not contain ...``.
_NAMED_FIELD = re.compile(r"([A-Za-z_][\w.]*): ")
# pydantic's wording for some error types, said the way the published schema puts it.
_MESSAGES = {
    "finite_number": "must be a finite number (not NaN or Infinity)",
}


def describe_validation_error(exc: ValidationError, payload: bytes | str | None = None) -> str:
    """A one-line, human-readable summary of what is wrong with a payload (at most 1,000
    characters: it goes into dead-letter entries and logs)."""
    parts = []
    for error in exc.errors(include_url=False)[:5]:
        # A model-level check of ours names its field in the message itself.
        where = ".".join(str(p) for p in error["loc"]) or (
            "" if error["type"] == "value_error" else "payload"
        )
        message = _MESSAGES.get(error["type"], error["msg"])
        if error["type"] == "value_error":
            message = message.removeprefix("Value error, ")
            # A nested model's check (``steps.2``) naming its own field: one path, steps.2.error.
            named = _NAMED_FIELD.match(message) if where else None
            if named:
                where, message = f"{where}.{named.group(1)}", message[named.end() :]
        elif error["type"] == "json_invalid" and payload is not None:
            message = _json_problem(message, payload)
        parts.append(f"{where}: {message}" if where else message)
    more = exc.error_count() - len(parts)
    return ("; ".join(parts) + (f" (+{more} more)" if more > 0 else ""))[:1000]


def _json_problem(message: str, payload: bytes | str) -> str:
    """The JSON parser's message, made specific where its own words mislead."""
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    if "hex escape" in message and _SURROGATE_ESCAPE.search(raw):
        # The parser reports a lone surrogate (\ud800) as a truncated escape.
        where = message.rsplit(" at ", 1)[-1] if " at " in message else "somewhere"
        return (
            f"Invalid JSON: a string holds an unpaired UTF-16 surrogate escape (such as "
            f"\\ud800) at {where}; it is not valid Unicode"
        )
    return message


def _unstorable_path(value: Any, path: str = "", depth: int = 0) -> tuple[str, str] | None:
    """Where free-form JSON holds what no store keeps — a NaN or infinite number (JSON and
    PostgreSQL's json have none) or a NUL character (PostgreSQL text cannot hold one) — and
    what it is. Depth is bounded (the JSON parser's own limit is about as deep) so that a trace
    built in Python cannot exhaust the stack here or in a store's serializer."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path or "value", _NON_FINITE)
    if isinstance(value, str):
        return (path or "value", _NUL) if "\x00" in value else None
    if depth > _MAX_FREE_FORM_DEPTH:
        return path, f"nests deeper than {_MAX_FREE_FORM_DEPTH} levels"
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\x00" in key:
            return where, _NUL
        found = _unstorable_path(item, where, depth + 1)
        if found:
            return found
    return None


_MAX_FREE_FORM_DEPTH = 200
_NON_FINITE = "must be a finite number (not NaN or Infinity)"
_NUL = "must not contain a NUL character (\\u0000)"


# The subject the fleet names a completed session by: ``session:<digest>`` (a Trace built by
# ``sessions.conversation``, and its scores). Apps may not publish trace ids in it.
SESSION_SUBJECT_PREFIX = "session:"


def is_session_subject(trace_id: str) -> bool:
    return trace_id.startswith(SESSION_SUBJECT_PREFIX)


class TokenUsage(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    input: int = Field(default=0, ge=0)
    output: int = Field(default=0, ge=0)

    @property
    def total(self) -> int:
        return self.input + self.output


def _utc(value: datetime | None) -> datetime | None:
    # Python apps send naive datetime.now() / utcnow(): one rule, so times always compare.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# A time as the wire has it: ISO 8601, naive taken as UTC.
_Time = Annotated[datetime, AfterValidator(_utc)]


def _nul_in(model: BaseModel, names: tuple[str, ...]) -> None:
    """Refuse a NUL in the named ``str | None`` fields (PostgreSQL text cannot hold one)."""
    values = model.__dict__  # what getattr reads, without its cost per field
    for name in names:
        value = values[name]
        if value is not None and "\x00" in value:
            raise ValueError(f"{name}: {_NUL}")


# Caps that keep a hostile agent trace as cheap to parse, store and show as an ordinary one (the
# payload as a whole is also bounded by EVALFLEET_MAX_TRACE_BYTES).
MAX_MESSAGES = 1_000
MAX_STEPS = 1_000
MAX_CONTENT_PARTS = 100
MAX_TOOL_CALLS = 128
# A step's arguments or result, counted in characters of its JSON text: longer is cut to this and
# marked (``arguments_truncated`` / ``result_truncated``) rather than refused — a tool that
# returned a whole web page is still a trajectory worth evaluating.
MAX_STEP_VALUE_CHARS = 16 * 1024
MAX_STEP_ERROR_CHARS = 16 * 1024


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=1_000_000)

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=1_000_000)

    name: str = Field(min_length=1, max_length=256)
    arguments: str = Field(default="", description="As the model wrote them: JSON text.")


class ToolCall(BaseModel):
    """A tool call an assistant message asks for (OpenAI chat format)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One chat message in OpenAI chat format: what the app sent the model, or its reply."""

    model_config = ConfigDict(extra="forbid", str_max_length=1_000_000)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    # The bound is on the list of parts only: on the union it would cap a text at 100 characters.
    content: str | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)] | None = Field(
        default=None,
        description="Text, or a list of at most 100 text parts. May be null only for an "
        "assistant message.",
    )
    name: str | None = Field(default=None, max_length=256)
    refusal: str | None = Field(default=None, description="An assistant's refusal, if any.")
    tool_calls: list[ToolCall] | None = Field(
        default=None, max_length=MAX_TOOL_CALLS, description="Assistant messages only."
    )
    tool_call_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Tool messages only (and required there): the id of the assistant's tool call "
        "this message answers, which an earlier message must hold.",
    )

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content or ""

    @model_validator(mode="after")
    def _consistent(self) -> Message:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"tool_calls: a {self.role} message makes no tool calls")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("tool_call_id: a tool message must name the tool call it answers")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError(f"tool_call_id: a {self.role} message answers no tool call")
        if self.content is None and self.role != "assistant":
            raise ValueError(f"content: a {self.role} message must have content")
        _nul_in(self, ("name", "refusal", "tool_call_id"))
        if isinstance(self.content, str):
            if "\x00" in self.content:
                raise ValueError(f"content: {_NUL}")
        elif self.content:
            for index, part in enumerate(self.content):
                if "\x00" in part.text:
                    raise ValueError(f"content.{index}.text: {_NUL}")
        for index, call in enumerate(self.tool_calls or ()):
            for name, value in (("id", call.id), ("function.name", call.function.name)):
                if "\x00" in value:
                    raise ValueError(f"tool_calls.{index}.{name}: {_NUL}")
            if "\x00" in call.function.arguments:
                raise ValueError(f"tool_calls.{index}.function.arguments: {_NUL}")
        return self


StepKind = Literal["llm", "tool", "retrieval", "embedding", "agent", "chain", "guardrail", "other"]
_STEP_STRINGS = ("id", "name", "parent_id", "tool_call_id", "model", "error")


class Step(BaseModel):
    """One step of an agent's trajectory: an LLM call, a tool call, a retrieval, an agent (or
    workflow) invocation, a chain, a guardrail. Steps are listed in the order they started, a
    parent before its children; each retry of a failed step is a step of its own."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: str = Field(min_length=1, max_length=256, description="Unique within the trace.")
    kind: StepKind = Field(
        description="llm (a model call), tool, retrieval, embedding, agent (an agent or workflow "
        "invocation), chain (a framework's orchestration step), guardrail, other."
    )
    name: str = Field(
        default="", max_length=256, description="The tool's, agent's, retriever's or model's name."
    )
    parent_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The step this one ran in: the id of an earlier step.",
    )
    attempt: int = Field(
        default=1, ge=1, le=1000, description="1, or 2, 3, ... for the retries of a failed step."
    )
    tool_call_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="A tool step's call id: the assistant tool call (in messages) it executes.",
    )
    model: str | None = Field(default=None, max_length=256, description="An llm step's model.")
    arguments: Any = Field(
        default=None,
        description="What the step was called with: any JSON (an object for a tool call) or a "
        "string. Over 16,384 characters of JSON it is cut to that, as a string, and "
        "arguments_truncated is set.",
    )
    result: Any = Field(
        default=None,
        description="What the step returned (a tool's output, an llm step's answer): any JSON or "
        "a string, cut like arguments (result_truncated).",
    )
    arguments_truncated: bool = False
    result_truncated: bool = False
    error: str | None = Field(
        default=None, max_length=MAX_STEP_ERROR_CHARS, description="Set when the step failed."
    )
    latency_ms: float | None = Field(default=None, ge=0)
    tokens: TokenUsage | None = None
    started_at: _Time | None = Field(
        default=None, description="ISO 8601; a time without a zone offset is taken as UTC."
    )
    ended_at: _Time | None = Field(
        default=None, description="ISO 8601; a time without a zone offset is taken as UTC."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Step:
        if self.started_at and self.ended_at and self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        _nul_in(self, _STEP_STRINGS)
        for name in ("arguments", "result"):
            value = getattr(self, name)
            if value is None:
                continue
            found = _unstorable_path(value, name)
            if found:
                raise ValueError(f"{found[0]}: {found[1]}")
            if isinstance(value, str):
                text: str | None = value
            elif isinstance(value, dict | list) and (
                # Measured in C first: its UTF-8 is at least as long as the text in characters.
                len(to_json(value, fallback=str)) > MAX_STEP_VALUE_CHARS
            ):
                text = json.dumps(value, ensure_ascii=False, default=str)
            else:
                text = None
            if text is not None and len(text) > MAX_STEP_VALUE_CHARS:
                setattr(self, name, text[:MAX_STEP_VALUE_CHARS])
                setattr(self, f"{name}_truncated", True)
        return self


class Trace(BaseModel):
    """One completed interaction of an LLM application, as published to ``evalfleet:traces``.

    Only ``trace_id`` and ``output`` are required. Unknown top-level fields are rejected so that a
    typo (``ouput``) is a clear dead-letter reason rather than silently missing data; put anything
    app-specific into ``metadata``. On the wire (``parse_trace``) types are strict, as the
    published JSON Schema says: ``"812"`` is not a number, ``3.0`` not an integer, ``"yes"`` not
    a boolean. Numbers must be finite, anywhere in the trace. A time without a zone is UTC.

    A chat turn or an agent run is still one Trace, evaluated on ``output`` (required, as for a
    single question): the turn's final answer. ``session_id`` links the turns of a conversation;
    ``messages`` is the turn's conversation as the app sent it to the model (OpenAI chat format),
    optionally ending with the reply; without ``input``, the last user message's text is taken as
    ``input``. ``steps`` is the agent's trajectory. A trace without them means what it always did.
    """

    model_config = ConfigDict(extra="forbid", str_max_length=1_000_000, allow_inf_nan=False)

    trace_id: str = Field(min_length=1, max_length=256, pattern=r"^[^\s]+$")
    input: str = Field(
        default="",
        description="The user's request (or the final prompt). Empty with messages: the text of "
        "the last user message.",
    )
    output: str = Field(description="The application's answer that is evaluated.")
    contexts: list[str] = Field(default_factory=list, description="Retrieved documents (RAG).")
    retrieval: bool = Field(
        default=False,
        description="The app is a RAG flow: an answer without contexts is then flagged.",
    )
    reference: str | None = Field(default=None, description="A known-good answer, if any.")
    # Lengths as the store's columns hold them: a longer value is refused here, with a reason,
    # not by the database.
    model: str | None = Field(default=None, max_length=256)
    prompt_version: str | None = Field(default=None, max_length=128)
    app_version: str | None = Field(default=None, max_length=128)
    tenant: str | None = Field(default=None, max_length=128)
    feature: str | None = Field(default=None, max_length=128)
    latency_ms: float | None = Field(default=None, ge=0)
    finish_reason: str | None = Field(
        default=None, max_length=64, description="stop, length, content_filter, tool_calls, ..."
    )
    error: str | None = Field(default=None, description="Set when the app call failed.")
    tokens: TokenUsage | None = None
    cost_usd: float | None = Field(default=None, ge=0)
    user_feedback: Literal["positive", "negative"] | None = None
    output_format: Literal["text", "json"] = "text"
    output_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema the output must satisfy (implies JSON output)."
    )
    span_id: str | None = Field(
        default=None, max_length=256, description="The answer's span/observation id."
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    started_at: _Time | None = Field(
        default=None, description="ISO 8601; a time without a zone offset is taken as UTC."
    )
    ended_at: _Time | None = Field(
        default=None, description="ISO 8601; a time without a zone offset is taken as UTC."
    )
    session_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="The conversation (chat session, agent thread) the trace is a turn of: every "
        "turn of it carries the same id.",
    )
    messages: list[Message] | None = Field(
        default=None,
        max_length=MAX_MESSAGES,
        description="The turn's messages as the app sent them to the model (OpenAI chat format: "
        "system/developer/user/assistant/tool), optionally ending with the reply. A tool "
        "message's tool_call_id must be a tool call of an earlier assistant message.",
    )
    steps: list[Step] | None = Field(
        default=None,
        max_length=MAX_STEPS,
        description="The agent's trajectory: its LLM calls, tool calls, retrievals and agent "
        "invocations in the order they started, a parent before its children.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Trace:
        if self.started_at and self.ended_at and self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        values = self.__dict__  # what getattr reads, without its cost per field
        for name in _FREE_FORM_FIELDS:
            value = values[name]
            if isinstance(value, str):  # the common case, checked without the walk
                found = (name, _NUL) if "\x00" in value else None
            else:
                found = _unstorable_path(value, name) if value else None
            if found:
                raise ValueError(f"{found[0]}: {found[1]}")
        if self.messages is not None:
            _check_messages(self.messages)
            if not self.input:
                user = next((m for m in reversed(self.messages) if m.role == "user"), None)
                self.input = user.text if user else ""
        if self.steps is not None:
            _check_steps(self.steps)
        return self

    @property
    def expects_json(self) -> bool:
        return self.output_format == "json" or self.output_schema is not None


def _check_messages(messages: list[Message]) -> None:
    """Every tool message answers a tool call an earlier assistant message made."""
    calls: set[str] = set()
    for index, message in enumerate(messages):
        if message.tool_calls:
            calls.update(call.id for call in message.tool_calls)
        elif message.tool_call_id is not None and message.tool_call_id not in calls:
            raise ValueError(
                f"messages.{index}.tool_call_id: {message.tool_call_id!r} is not the id of a tool "
                "call of an earlier assistant message"
            )


def _check_steps(steps: list[Step]) -> None:
    """Step ids are unique and a parent comes before its children: the trajectory is a tree that
    a reader walks in one pass."""
    seen: set[str] = set()
    for index, step in enumerate(steps):
        if step.id in seen:
            raise ValueError(f"steps.{index}.id: {step.id!r} is already the id of an earlier step")
        if step.parent_id is not None and step.parent_id not in seen:
            raise ValueError(
                f"steps.{index}.parent_id: {step.parent_id!r} is not the id of an earlier step"
            )
        seen.add(step.id)


# Trace fields checked for unstorable values (NaN/Infinity, NUL) after validation: the typed
# float fields reject non-finite numbers themselves, but NUL fits any string. Messages and steps
# check their own fields (so a reason names the message or step).
_FREE_FORM_FIELDS = tuple(
    name
    for name in Trace.model_fields
    if name
    not in (
        "tokens",
        "latency_ms",
        "cost_usd",
        "retrieval",
        "started_at",
        "ended_at",
        "messages",
        "steps",
    )
)


def oversized(size: int, max_bytes: int) -> str:
    return f"payload is {size} bytes, over the limit of {max_bytes} (EVALFLEET_MAX_TRACE_BYTES)"


def parse_trace(payload: bytes | str, max_bytes: int) -> Trace | str:
    """The Trace a wire payload holds, or a one-line reason why not. Never raises: whatever the
    bytes, the caller gets a verdict it can dead-letter (types strict, as the schema says)."""
    if len(payload) > max_bytes:
        return oversized(len(payload), max_bytes)
    try:
        if isinstance(payload, bytes):
            payload.decode("utf-8")
        return Trace.model_validate_json(payload, strict=True)
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.start + 1].hex()
        return f"payload is not valid UTF-8 (byte 0x{bad} at offset {exc.start})"
    except ValidationError as exc:
        return describe_validation_error(exc, payload)
    except Exception as exc:  # a validator bug must not stop the caller's loop
        return f"payload could not be validated: {type(exc).__name__}: {exc}"[:1000]


def parse_published_trace(payload: bytes | str, max_bytes: int) -> Trace | str:
    """``parse_trace`` for what apps publish: also refuses a trace id in the fleet's own
    namespace (``session:``), which would mix an app's trace with a session's scores."""
    parsed = parse_trace(payload, max_bytes)
    if isinstance(parsed, Trace) and is_session_subject(parsed.trace_id):
        return (
            f"trace_id: must not start with {SESSION_SUBJECT_PREFIX!r} "
            "(reserved for the sessions the fleet evaluates)"
        )
    return parsed


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


class Level(StrEnum):
    """What a score is about: one turn (a trace), one agent run's trajectory (the steps of a
    trace), or a whole session (``trace_id`` is then ``session:<digest>``)."""

    TURN = "turn"
    TRAJECTORY = "trajectory"
    SESSION = "session"


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
    level: Level = Level.TURN
    created_at: datetime = Field(default_factory=_now)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _session_subject_is_a_session_score(self) -> Score:
        # The one place of the rule every sink relies on: a score on a session's subject is a
        # session score, whichever evaluator made it and whatever level it was given.
        if is_session_subject(self.trace_id):
            self.level = Level.SESSION
        return self

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


class JudgeCall(BaseModel):
    """What one judge evaluation cost: its requests (every attempt, the repair round too),
    tokens, price and latency; one ``judge_calls`` row per (trace, judge, version)."""

    id: str
    trace_id: str
    judge: str
    judge_version: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = Field(default=0, description="Of input_tokens, served from cache.")
    cost_usd: float | None = None
    latency_ms: float = 0.0
    attempts: int = 0
    mode: str = ""
    status: Literal["ok", "error", "deferred"] = "ok"
    error: str | None = None
    created_at: datetime = Field(default_factory=_now)

    def row(self) -> dict[str, Any]:
        """The ``judge_calls`` row."""
        return self.model_dump()


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
    """A human label: what golden datasets are made of and judges are calibrated against. A
    label on a session item carries the session's Trace (``trace_id`` ``session:<digest>``, the
    whole conversation in ``messages``, every turn's steps), so the golden example it becomes is
    the session a session judge is calibrated on."""

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


# What a score may name in its metadata as the part of the trace it is about: a step of the
# trajectory (``step_id`` / ``step_ids``, ids of ``trace.steps``) and, for a session, a turn
# (``turn_id`` / ``turn_ids``, trace ids of the session's turns).
_FOCUS_KEYS = {"step_ids": ("step_id", "step_ids"), "turn_ids": ("turn_id", "turn_ids")}
MAX_FOCUS_IDS = 50  # a reviewer reads a handful; a judge that names hundreds names nothing


class ReviewFocus(BaseModel):
    """The part of a review item's trace its failing scores are about: what a reviewer is shown
    highlighted. Empty when the scores name nothing (the whole answer is the subject)."""

    step_ids: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list,
        max_length=MAX_FOCUS_IDS,
        description="Ids of steps of trace.steps that the failing scores are about.",
    )
    turn_ids: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list,
        max_length=MAX_FOCUS_IDS,
        description="A session item's turns (their trace ids, as in trace.metadata.turn_ids) "
        "that the failing scores are about.",
    )

    @classmethod
    def of(cls, scores: list[Score]) -> ReviewFocus:
        """The steps and turns the scores' metadata name (strings only, each once, in order)."""
        found: dict[str, dict[str, None]] = {name: {} for name in _FOCUS_KEYS}
        for score in scores:
            for name, keys in _FOCUS_KEYS.items():
                for key in keys:
                    value = score.metadata.get(key)
                    for one in value if isinstance(value, list) else [value]:
                        if isinstance(one, str) and one and len(one) <= 256:
                            found[name][one] = None
        return cls(**{name: list(ids)[:MAX_FOCUS_IDS] for name, ids in found.items()})


_LEVEL_RANK = {Level.TURN: 0, Level.TRAJECTORY: 1, Level.SESSION: 2}


class ReviewItem(BaseModel):
    """A trace sent to human review because of one evaluator's failing scores.

    ``level`` says what is reviewed: one turn (the answer), one agent run's trajectory (the
    steps), or a whole session (``trace`` is then the session as one Trace: ``trace_id``
    ``session:<digest>``, the whole conversation in ``messages``, every turn's steps with ids
    ``t<n>:<step id>``). ``focus`` names the steps and turns the failing scores are about."""

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
    level: Level = Field(
        default=Level.TURN,
        description="turn (an answer), trajectory (an agent run's steps) or session (a whole "
        "conversation): the level of the failing scores.",
    )
    session_id: str | None = Field(
        default=None,
        max_length=256,
        description="The conversation the trace belongs to (for a session item: the session).",
    )
    focus: ReviewFocus = Field(
        default_factory=ReviewFocus, description="What the failing scores are about."
    )
    trace: Trace

    @field_validator("level", "focus", mode="before")
    @classmethod
    def _stored_before_levels(cls, value: Any, info: ValidationInfo) -> Any:
        # Rows and stream entries written before review items knew their level hold none.
        if value is None:
            return Level.TURN if info.field_name == "level" else ReviewFocus()
        return value

    @classmethod
    def for_scores(cls, trace: Trace, failing: list[Score], priority: int) -> ReviewItem:
        first = failing[0]
        level = max((s.level for s in failing), key=_LEVEL_RANK.__getitem__)
        id_parts = [trace.trace_id, first.evaluator, first.evaluator_version, "review"]
        version = trace.metadata.get("session_version") or first.metadata.get("session_version")
        if level is Level.SESSION and isinstance(version, str):
            # A session re-opened by a late turn is a new evaluation: reviewed again, not
            # deduplicated against the review of the turns it held before.
            id_parts.insert(1, version)
        session_id = trace.session_id or first.metadata.get("session_id")
        return cls(
            id=stable_id(*id_parts),
            trace_id=trace.trace_id,
            evaluator=first.evaluator,
            evaluator_version=first.evaluator_version,
            priority=priority,
            reasons=[f"{s.name}: {s.reason}" for s in failing],
            score_ids=[s.id for s in failing],
            tenant=trace.tenant,
            feature=trace.feature,
            level=level,
            session_id=session_id[:256] if isinstance(session_id, str) and session_id else None,
            focus=ReviewFocus.of(failing),
            trace=trace,
        )
