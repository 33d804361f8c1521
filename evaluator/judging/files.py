"""Judge files (``judges/*.yaml``): load, validate, render prompts, and check the lock file.

A judge file is the unit of review and versioning: prompt templates, model settings and the
output schema. Trace text is untrusted data: templates must pass it through the ``fence``
filter, which wraps it in markers the instructions point at and neutralises look-alike markers
inside the text, so an answer cannot close the fence and speak as the instructions.

A judge has a level (``level:``): ``turn`` (each trace, the default), ``trajectory`` (traces
with agent steps) or ``session`` (completed sessions, ``session:<digest>`` traces); its
``applies_when`` keeps it to those, and turn and trajectory judges never see a session.
Templates may print ``{{ messages }}`` and ``{{ steps }}``, the conversation and the trajectory
as compact text within ``EVALFLEET_JUDGE_TRANSCRIPT_CHARS`` (``judging.transcript`` has the
format and the truncation rule), fenced like every trace text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    model_validator,
)

from evaluator.evaluators.pii import redact_pii
from evaluator.judging.ragas import RAGAS, RagasSpec, ragas_installed
from evaluator.judging.transcript import DEFAULT_TRANSCRIPT_CHARS, render_transcript
from evaluator.models import (
    SESSION_SUBJECT_PREFIX,
    Level,
    Message,
    Severity,
    Step,
    Trace,
    describe_validation_error,
    is_session_subject,
)
from evaluator.resources import resource
from evaluator.settings import Settings
from evaluator.trust.golden import default_golden_dir, few_shot_examples

log = logging.getLogger(__name__)

LOCK_FILE = "judges.lock"
FENCE_OPEN = '<untrusted-data name="{label}">'
FENCE_CLOSE = "</untrusted-data>"
_MARKER_LOOKALIKE = re.compile(r"<(\s*/?\s*)(untrusted-data)", re.IGNORECASE)


class JudgeFileError(ValueError):
    """A judge file that does not parse, validate or render; the message names the file."""


def default_judges_dir() -> Path:
    """The repository's judges/ in a source checkout, else the copy packaged into the wheel."""
    return resource("judges", "judges")


class OutputField(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["number", "integer", "boolean", "string", "enum"]
    description: str
    minimum: float | None = None
    maximum: float | None = None
    values: list[str] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> OutputField:
        if self.type == "enum" and not self.values:
            raise ValueError("an enum field needs 'values'")
        if self.type not in ("number", "integer") and (
            self.minimum is not None or self.maximum is not None
        ):
            raise ValueError("minimum/maximum only apply to number and integer fields")
        return self

    def json_schema(self) -> dict[str, Any]:
        if self.type == "enum":
            return {"type": "string", "enum": self.values, "description": self.description}
        schema: dict[str, Any] = {"type": self.type, "description": self.description}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema

    def python_field(self) -> tuple[Any, Any]:
        types: dict[str, Any] = {"number": float, "integer": int, "boolean": bool, "string": str}
        annotation = Literal[tuple(self.values or ())] if self.type == "enum" else types[self.type]
        return annotation, Field(ge=self.minimum, le=self.maximum, description=self.description)


class AppliesWhen(BaseModel):
    """Which traces a judge is meant for; a judge that does not apply is not called."""

    model_config = ConfigDict(extra="forbid")

    has_contexts: bool | None = None
    has_reference: bool | None = None
    has_input: bool | None = None
    features: list[str] | None = None
    # Metadata keys the trace must carry, e.g. [response_b] for the pairwise judge.
    has_metadata: list[str] | None = None

    # The judge's level (JudgeSpec.level), set by its JudgeSpec: every caller of why_not
    # (sampler, re-evaluation, calibration) then keeps each level to its own subjects.
    _level: Level = PrivateAttr(default=Level.TURN)

    def why_not(self, trace: Trace) -> str | None:
        """None when the judge applies to ``trace``, else the reason it does not."""
        if (wrong_level := level_mismatch(self._level, trace)) is not None:
            return wrong_level
        checks = [
            (self.has_contexts, bool(trace.contexts), "retrieved contexts"),
            (self.has_reference, trace.reference is not None, "a reference answer"),
            (self.has_input, bool(trace.input.strip()), "an input"),
        ]
        for wanted, present, what in checks:
            if wanted is not None and wanted != present:
                return f"needs {what}" if wanted else f"only for traces without {what}"
        if self.features is not None and trace.feature not in self.features:
            return f"feature {trace.feature!r} not in {self.features}"
        missing = [key for key in self.has_metadata or () if key not in trace.metadata]
        if missing:
            return f"needs metadata {', '.join(missing)}"
        return None


class CalibrationPolicy(BaseModel):
    """How closely the judge must agree with the humans of its golden set."""

    model_config = ConfigDict(extra="forbid")

    min_kappa: float = Field(default=0.6, ge=-1, le=1)
    min_agreement: float = Field(default=0.75, ge=0, le=1)


class JudgeSpec(BaseModel):
    """One judge file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$", description="semver; bump on every change")
    description: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=512, ge=16, le=16_384)
    severity: Severity = Severity.HIGH
    level: Level = Field(
        default=Level.TURN,
        description="turn: each trace; trajectory: traces with agent steps; session: completed "
        "sessions (their templates use {{ messages }} and {{ steps }}).",
    )
    applies_when: AppliesWhen = AppliesWhen()
    system: str
    user: str
    output: dict[str, OutputField]
    review_thresholds: dict[str, float] = Field(default_factory=dict)
    calibration: CalibrationPolicy = CalibrationPolicy()
    few_shot: int = Field(
        default=0,
        ge=0,
        le=10,
        description="Labelled examples from the golden set in the prompt (disagreements first); "
        "the user template prints them with {{ examples | fence_each('example') }}.",
    )

    @model_validator(mode="after")
    def _bind_level(self) -> JudgeSpec:
        self.applies_when = self.applies_when.model_copy()
        self.applies_when._level = self.level
        return self

    @model_validator(mode="after")
    def _schema_rules(self) -> JudgeSpec:
        fields = list(self.output)
        if not fields or fields[0] != "reasoning" or self.output["reasoning"].type != "string":
            raise ValueError("the output schema must start with a 'reasoning' string field")
        numeric = {n for n, f in self.output.items() if f.type in ("number", "integer", "boolean")}
        for name in self.review_thresholds:
            if name not in numeric:
                raise ValueError(f"review threshold {name!r} is not a number/boolean output field")
        return self

    @property
    def score_fields(self) -> dict[str, OutputField]:
        return {n: f for n, f in self.output.items() if n != "reasoning"}

    def json_schema(self) -> dict[str, Any]:
        """The strict JSON Schema sent as ``response_format`` (all fields required, no extras)."""
        return {
            "type": "object",
            "properties": {name: f.json_schema() for name, f in self.output.items()},
            "required": list(self.output),
            "additionalProperties": False,
        }

    def response_format(self) -> dict[str, Any]:
        """The ``response_format`` for servers with structured output (strict json_schema)."""
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": self.json_schema(), "strict": True},
        }

    @property
    def output_model(self) -> type[BaseModel]:
        return _output_model(
            self.name, json.dumps(self.model_dump(include={"output"}), sort_keys=True)
        )


@cache
def _output_model(name: str, output_json: str) -> type[BaseModel]:
    fields = {
        n: OutputField(**f).python_field() for n, f in json.loads(output_json)["output"].items()
    }
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        f"{name.title().replace('_', '')}Output", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


# -- loading ----------------------------------------------------------------------------------


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_judge(path: Path) -> JudgeSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = JudgeSpec.model_validate(data)
    except yaml.YAMLError as exc:
        raise JudgeFileError(f"{path.name}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise JudgeFileError(f"{path.name}: {describe_validation_error(exc)}") from exc
    if spec.name != path.stem:
        raise JudgeFileError(f"{path.name}: name {spec.name!r} must match the file name")
    return spec


def load_judges(directory: Path) -> dict[str, JudgeSpec]:
    """Every ``*.yaml`` judge in ``directory`` by name."""
    return {spec.name: spec for spec in (load_judge(p) for p in sorted(directory.glob("*.yaml")))}


def judges_dir(settings: Settings) -> Path:
    return settings.judges_dir or default_judges_dir()


Judge = JudgeSpec | RagasSpec


def judge_registry(settings: Settings) -> dict[str, Judge]:
    """The judge files, plus ``ragas`` when the optional extra is installed."""
    registry: dict[str, Judge] = dict(load_judges(judges_dir(settings)))
    if ragas_installed():
        registry[RAGAS] = RagasSpec()
    return registry


def enabled_judges(settings: Settings) -> dict[str, Judge]:
    """The judges named in ``EVALFLEET_ENABLED_JUDGES``; an unknown name is an error.

    None when no judge endpoint is configured: sampled traces are then recorded as sampled,
    with that reason, instead of piling up calls that cannot succeed.
    """
    available = judge_registry(settings)
    unknown = [name for name in settings.enabled_judges if name not in available]
    if RAGAS in unknown:
        raise JudgeFileError("ragas is enabled but not installed: pip install 'evalfleet[ragas]'")
    if unknown:
        raise JudgeFileError(
            f"unknown judge(s) in EVALFLEET_ENABLED_JUDGES: {', '.join(unknown)} "
            f"(available: {', '.join(sorted(available))})"
        )
    if not settings.judge_endpoint_configured:
        log.warning(
            "no judge endpoint configured (EVALFLEET_JUDGE_BASE_URL, EVALFLEET_JUDGE_API_KEY or "
            "OPENAI_API_KEY): judges are off, sampling decisions are still recorded"
        )
        return {}
    return {name: available[name] for name in settings.enabled_judges}


# -- rendering --------------------------------------------------------------------------------


class Untrusted(str):
    """Trace text inside a template: it may only be printed through ``fence``."""


def neutralise(text: str) -> str:
    """Break anything in trace text that looks like a fence marker (``<untrusted-data``)."""
    return _MARKER_LOOKALIKE.sub(lambda m: "\u2039" + m.group(1) + m.group(2), text)


def fence(text: Any, label: str) -> str:
    return f"{FENCE_OPEN.format(label=label)}\n{neutralise(str(text))}\n{FENCE_CLOSE}"


def fence_each(items: Any, label: str) -> str:
    return "\n".join(fence(item, f"{label} {i}") for i, item in enumerate(items, start=1))


def _refuse_unfenced(value: Any) -> Any:
    if isinstance(value, Untrusted):
        raise TemplateError(
            "trace text must be printed through the fence filter: {{ output | fence('answer') }}"
        )
    return value


_ENV = SandboxedEnvironment(
    undefined=StrictUndefined, finalize=_refuse_unfenced, keep_trailing_newline=True
)
_ENV.filters["fence"] = fence
_ENV.filters["fence_each"] = fence_each


@cache
def _template(source: str) -> Template:
    """Compiled once per template text: compiling costs more than rendering."""
    return _ENV.from_string(source)


def _template_variables(trace: Trace, redact: bool, examples: list[str]) -> dict[str, Any]:
    def clean(text: str) -> Untrusted:
        return Untrusted(redact_pii(text) if redact else text)

    return {
        "input": clean(trace.input),
        "output": clean(trace.output),
        "contexts": [clean(c) for c in trace.contexts],
        "reference": clean(trace.reference) if trace.reference is not None else None,
        "metadata": {k: clean(json.dumps(v)) for k, v in trace.metadata.items()},
        "examples": [clean(e) for e in examples],
        # The other answer of a pairwise comparison, as text (``metadata`` holds it as JSON).
        "response_b": clean(_response_b(trace)) if "response_b" in trace.metadata else None,
    }


def _response_b(trace: Trace) -> str:
    value = trace.metadata["response_b"]
    return value if isinstance(value, str) else json.dumps(value)


def render_messages(
    spec: JudgeSpec,
    trace: Trace,
    redact: bool = False,
    golden_dir: Path | None = None,
    transcript_chars: int = DEFAULT_TRANSCRIPT_CHARS,
) -> list[dict[str, str]]:
    """Chat messages for ``trace``: the static system prompt first (prefix caching), then data
    (with ``few_shot`` labelled examples from ``golden_dir`` when the judge asks for them).
    ``transcript_chars``: the budget of ``{{ messages }}`` and of ``{{ steps }}`` each."""
    examples = few_shot_examples(
        spec.name, spec.few_shot, trace.trace_id, golden_dir or default_golden_dir()
    )
    try:
        system = _template(spec.system).render()
        variables = _template_variables(trace, redact, examples)
        if _uses_transcript(spec.user):
            variables.update(_transcript_variables(trace, redact, transcript_chars))
        user = _template(spec.user).render(**variables)
    except TemplateError as exc:
        raise JudgeFileError(f"{spec.name}.yaml: template error: {exc}") from exc
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# -- levels: trajectories and sessions ----------------------------------------------------------


def is_session_trace(trace: Trace) -> bool:
    """A completed session as one Trace (``evaluator.sessions.conversation.session_trace``)."""
    return is_session_subject(trace.trace_id)


def level_mismatch(level: Level, trace: Trace) -> str | None:
    """Why a judge of ``level`` does not apply to ``trace``, or None: a trajectory judge needs
    steps, a session judge a session trace, and only session judges see session traces."""
    session = is_session_trace(trace)
    if level is Level.SESSION:
        return None if session else "a session judge: only for completed sessions"
    if session:
        return f"a {level.value} judge: not for sessions"
    if level is Level.TRAJECTORY and not trace.steps:
        return "a trajectory judge: needs agent steps"
    return None


def judge_level(spec: Judge) -> Level:
    return spec.level if isinstance(spec, JudgeSpec) else Level.TURN


def evaluation_spec(spec: Judge, trace: Trace) -> Judge:
    """The judge as it evaluates ``trace``: for a session trace, its version is the judge's
    version and the session's (``<judge version>/<session version>``), the rule the session
    heuristics' ledger rows follow. A session re-opened by a late turn holds other turns, so a
    new version: new score ids, a new ledger row, a new judge call row, a new evaluation beside
    the first; a repeated hand-off of the same version lands on the same ids (upserts, and a
    ledger row that only moves forward), so it duplicates nothing."""
    version = trace.metadata.get("session_version") if is_session_trace(trace) else None
    if not isinstance(spec, JudgeSpec) or not isinstance(version, str):
        return spec
    return spec.model_copy(update={"version": f"{spec.version}/{version}"})


def _uses_transcript(template: str) -> bool:
    return "messages" in template or "steps" in template


def _transcript_variables(trace: Trace, redact: bool, budget: int) -> dict[str, Any]:
    """``messages`` and ``steps`` as compact, truncated text (``judging.transcript``), each
    printed through ``fence`` like the rest of the trace."""
    messages, steps = render_transcript(trace, budget, redact_pii if redact else None)
    return {"messages": Untrusted(messages), "steps": Untrusted(steps)}


# -- validation and the lock file -------------------------------------------------------------

_CANARY = "CANARY-7f3a"
_SAMPLE = Trace(
    trace_id="validate",
    input=f"question {_CANARY}",
    output=f"answer {_CANARY}",
    contexts=[f"context one {_CANARY}", f"context two {_CANARY}"],
    reference=f"reference {_CANARY}",
    metadata={"response_b": f"answer b {_CANARY}"},
)
_LEVEL_SAMPLE = _SAMPLE.model_copy(
    update={
        "messages": [
            Message(role="user", content=f"question {_CANARY}"),
            Message(role="assistant", content=f"answer {_CANARY}"),
        ],
        "steps": [Step(id="s1", kind="tool", name="search", arguments={"q": _CANARY})],
    }
)
_SESSION_SAMPLE = _LEVEL_SAMPLE.model_copy(
    update={
        "trace_id": f"{SESSION_SUBJECT_PREFIX}validate",
        "metadata": {**_SAMPLE.metadata, "session_version": "v"},
    }
)
_FENCED_BLOCK = re.compile(r'<untrusted-data name="[^"]*">\n.*?\n</untrusted-data>', re.DOTALL)


def validate_judge(spec: JudgeSpec) -> list[str]:
    """Problems that parsing alone does not catch: templates, fencing, the output schema."""
    problems = []
    try:
        sample = {Level.SESSION: _SESSION_SAMPLE, Level.TRAJECTORY: _LEVEL_SAMPLE}
        messages = render_messages(spec, sample.get(spec.level, _SAMPLE))
    except JudgeFileError as exc:
        return [str(exc)]
    if _CANARY in _FENCED_BLOCK.sub("", messages[1]["content"]):
        problems.append(f"{spec.name}: trace text reaches the prompt outside a fence")
    if _CANARY not in messages[1]["content"]:
        problems.append(f"{spec.name}: the user template shows no trace text")
    if spec.few_shot and "examples" not in spec.user:
        problems.append(
            f"{spec.name}: few_shot is {spec.few_shot} but the user template never prints "
            "{{ examples | fence_each('example') }}"
        )
    try:
        spec.output_model.model_json_schema()
    except Exception as exc:
        problems.append(f"{spec.name}: output schema: {exc}")
    return problems


def read_lock(directory: Path) -> dict[str, dict[str, str]]:
    path = directory / LOCK_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_lock(directory: Path) -> dict[str, dict[str, str]]:
    """Record every judge's version and content hash (run after bumping versions)."""
    lock = {
        path.stem: {"version": load_judge(path).version, "sha256": file_hash(path)}
        for path in sorted(directory.glob("*.yaml"))
    }
    (directory / LOCK_FILE).write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    return lock


class LockProblemKind(StrEnum):
    NOT_LOCKED = "not_locked"  # a judge file the lock does not know
    UNBUMPED = "unbumped"  # content changed, version did not: `judges lock` refuses
    STALE = "stale"  # version bumped, lock not rewritten yet
    GONE = "gone"  # in the lock, file removed


@dataclass(frozen=True)
class LockProblem:
    judge: str
    kind: LockProblemKind
    message: str


def lock_problems(directory: Path) -> list[LockProblem]:
    """Judges whose content changed without a version bump, or that the lock does not match."""
    lock = read_lock(directory)
    relock = "run `evalfleet judges lock`"
    problems = []
    for path in sorted(directory.glob("*.yaml")):
        spec = load_judge(path)
        entry = lock.get(spec.name)
        if entry is None:
            kind, message = LockProblemKind.NOT_LOCKED, f"not in {LOCK_FILE}; {relock}"
        elif entry["sha256"] == file_hash(path):
            continue
        elif entry["version"] == spec.version:
            kind = LockProblemKind.UNBUMPED
            message = f"content changed but version is still {spec.version}; bump it"
        else:
            kind, message = LockProblemKind.STALE, f"{LOCK_FILE} is out of date; {relock}"
        problems.append(LockProblem(spec.name, kind, f"{spec.name}: {message}"))
    for name in sorted(set(lock) - {p.stem for p in directory.glob("*.yaml")}):
        message = f"{name}: in {LOCK_FILE} but the file is gone; {relock}"
        problems.append(LockProblem(name, LockProblemKind.GONE, message))
    return problems


def check_lock(directory: Path) -> list[str]:
    """``lock_problems`` as one line each."""
    return [problem.message for problem in lock_problems(directory)]
