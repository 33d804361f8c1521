"""Every knob of the fleet, read from the environment (prefix ``EVALFLEET_``), in slices by
concern that the rooms are handed (see ``Settings``)."""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# USD per 1M input / output / cached input tokens (public list prices; override with
# EVALFLEET_MODEL_PRICES; a price without a cached rate bills cached tokens as input).
DEFAULT_PRICES: dict[str, tuple[float, float] | tuple[float, float, float]] = {
    "gpt-4o-mini": (0.15, 0.60, 0.075),
    "gpt-4o": (2.50, 10.00, 1.25),
    "gpt-4.1-mini": (0.40, 1.60, 0.10),
    "gpt-4.1-nano": (0.10, 0.40, 0.025),
    "gpt-4.1": (2.00, 8.00, 0.50),
}


class ReviewerAccess(BaseModel):
    """One reviewer token's holder and the tenants they may review ("*": every tenant)."""

    reviewer: str = Field(min_length=1, max_length=128)
    tenants: list[str] = Field(default_factory=lambda: ["*"])

    @property
    def tenant_scope(self) -> frozenset[str] | None:
        return None if "*" in self.tenants else frozenset(self.tenants)


class _FromEnvironment(BaseSettings):
    """Every slice reads the same ``EVALFLEET_`` variables as the whole."""

    model_config = SettingsConfigDict(env_prefix="EVALFLEET_", extra="ignore")


class ConnectionSettings(_FromEnvironment):
    """Where Redis, the Celery broker and the database are."""

    # Connections
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = Field(
        default=None, description="Celery broker; defaults to redis_url."
    )
    database_url: str = "sqlite:///evalfleet.db"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg (v3) driver chosen for plain Postgres URLs."""
        url = self.database_url
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url


class IngestSettings(_FromEnvironment):
    """Publishing, validating and dead-lettering traces (ingest/, streams)."""

    # Publishing
    stream_maxlen: int = Field(
        default=1_000_000, ge=1000, description="Approximate MAXLEN of the traces stream."
    )

    # Validation
    max_trace_bytes: int = Field(default=256 * 1024, ge=1024)

    # Dead letters
    dead_stream_maxlen: int = Field(
        default=100_000, ge=100, description="Approximate MAXLEN of the dead-letter stream."
    )
    dead_letter_payload_bytes: int = Field(
        default=16 * 1024,
        ge=256,
        description="A dead letter keeps this much of its payload, with the size and sha256.",
    )


class OtlpSettings(_FromEnvironment):
    """The OTLP receiver and in-process exporter: when is a trace complete? (ingest/)."""

    # OTLP receiver / in-process exporter: when is a trace complete?
    otlp_grace_s: float = Field(
        default=5.0, gt=0, description="After the root span, wait this long for late spans."
    )
    otlp_max_wait_s: float = Field(
        default=300.0, gt=0, description="Publish as partial when the root never ends."
    )
    otlp_max_spans_per_trace: int = Field(default=2000, ge=1)
    otlp_max_pending_traces: int = Field(
        default=100_000, ge=1, description="Above this the receiver answers 503 (back-pressure)."
    )
    otlp_max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    otlp_token: SecretStr | None = Field(
        default=None, description="When set, OTLP requests need 'Authorization: Bearer <token>'."
    )


class WorkerSettings(_FromEnvironment):
    """Celery workers: hard limits per task, concurrency, redelivery (worker, celery_app)."""

    # Hard limits per task: a child over its limit is killed by the worker's parent process
    # (the only thing that stops code holding the GIL). A batch over its limit is split into
    # one task per trace; a trace over its own limit ``max_trace_stalls`` times is dead-lettered.
    heuristics_time_limit_s: float = Field(default=120.0, gt=0)
    judges_time_limit_s: float = Field(default=1800.0, gt=0)
    trace_time_limit_s: float = Field(
        default=30.0, gt=0, description="The hard limit of a one-trace task (after a split)."
    )
    max_trace_stalls: int = Field(default=2, ge=1)

    # Celery
    worker_concurrency: int = Field(default=2, ge=1)
    broker_visibility_timeout_s: int | None = Field(
        default=None,
        ge=1,
        description="Unacked tasks of a vanished worker are redelivered after this; default: "
        "twice the time limit of the worker's tasks (4 min for heuristics-only workers).",
    )

    def visibility_timeout_s(self, heuristics_only: bool) -> int:
        """How long a task taken by a vanished worker stays invisible: longer than any task of
        the worker can run (twice its hard time limit), so a running task is never handed out
        twice. Heuristics-only workers get theirs back in minutes; judge workers wait longer."""
        if self.broker_visibility_timeout_s is not None:
            return self.broker_visibility_timeout_s
        limit = self.heuristics_time_limit_s if heuristics_only else self.judges_time_limit_s
        return max(10, math.ceil(2 * limit))


class SamplerSettings(_FromEnvironment):
    """The sampler loop, its consumers, back-pressure, the sampling policy and judge spend
    (sampling/)."""

    # Sampler loop
    sampler_batch_size: int = Field(default=500, ge=1)
    sampler_block_ms: int = Field(default=1000, ge=1)
    sampler_consumer: str | None = Field(
        default=None,
        description="The sampler's consumer name; unset: the first free <hostname>-<slot>.",
    )
    claim_idle_ms: int = Field(
        default=60_000, ge=100, description="Pending entries idle this long are reclaimed."
    )
    claim_interval_s: float = Field(default=5.0, gt=0)
    max_deliveries: int = Field(
        default=5, ge=1, description="An entry delivered more often is dead-lettered (poison)."
    )
    heuristics_batch_size: int = Field(default=250, ge=1)
    max_heuristics_queue_depth: int = Field(
        default=200, ge=1, description="Back-pressure: pause reading above this many batches."
    )
    max_judge_queue_depth: int = Field(default=10_000, ge=1)
    backpressure_sleep_s: float = Field(default=0.2, gt=0)

    # Sampling policy
    judge_sample_rate: float = Field(default=0.1, ge=0, le=1)
    sample_rate_overrides: dict[str, float] = Field(
        default_factory=dict,
        description='Rates by "tenant:NAME" or "feature:NAME"; feature wins over tenant.',
    )
    always_evaluate_latency_ms: float = Field(
        default=20_000, description="Traces slower than this are in the high_latency stratum."
    )
    always_evaluate_short_output_chars: int = 20
    stratum_rates: dict[str, float] = Field(
        default_factory=dict,
        description='Rates of the outcome strata, e.g. {"canary": 0.5, "high_cost": 0.3}; '
        "control is EVALFLEET_JUDGE_SAMPLE_RATE.",
    )
    high_cost_usd: float = Field(
        default=0.05, ge=0, description="A trace whose own LLM cost exceeds this is high_cost."
    )
    canary_window_s: float = Field(
        default=24 * 3600, gt=0, description="A prompt version or model first seen this recently."
    )

    # Judge spend: a daily budget per judge and fleet-wide (USD, UTC days). The sampler lowers
    # stratum rates to stay inside it; workers treat it as a hard cap (work over it is over_budget).
    judge_daily_budget_usd: float | None = Field(default=None, gt=0)
    judge_budgets_usd: dict[str, float] = Field(default_factory=dict)
    budget_shed_order: list[str] = Field(
        default_factory=lambda: [
            "control",
            "short_output",
            "canary",
            "high_latency",
            "high_cost",
            "truncated",
            "negative_feedback",
            "error",
        ],
        description="Strata whose rates go down first when projected spend exceeds a budget.",
    )
    budget_rate_floor: float = Field(
        default=0.01,
        gt=0,
        le=1,
        description="No stratum or judge rate goes below this (estimates stay unbiased).",
    )
    budget_refresh_s: float = Field(default=30.0, gt=0)
    sampling_salt: str = Field(
        default="", description="Changes which traces a rate selects, still deterministically."
    )

    @field_validator("sample_rate_overrides")
    @classmethod
    def _rates_in_range(cls, rates: dict[str, float]) -> dict[str, float]:
        for key, rate in rates.items():
            if not 0 <= rate <= 1:
                raise ValueError(f"sample rate for {key!r} must be within [0, 1], got {rate}")
            if not key.startswith(("tenant:", "feature:")):
                raise ValueError(f"override key {key!r} must start with 'tenant:' or 'feature:'")
        return rates

    # sampler consumers (issue 18)
    sampler_consumer_lease_s: float = Field(
        default=30.0,
        ge=1,
        description="A sampler holds its consumer name with a Redis lease its loop renews; one "
        "killed on another host (or in another container) frees its name after this.",
    )
    sampler_consumer_slots: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="Without --consumer / EVALFLEET_SAMPLER_CONSUMER a sampler is named "
        "'<hostname>-<slot>', the first slot from 0 that no live sampler holds, so a restart "
        "takes its old name (and its pending entries) back.",
    )
    sampler_consumer_prune_idle_ms: int | None = Field(
        default=None,
        ge=1000,
        description="Consumers of the group with nothing pending, idle this long and without "
        "a live lease are removed by a fleet chore; default 10 x claim_idle_ms.",
    )


class LedgerSettings(_FromEnvironment):
    """The evaluation ledger, its reaper and retention (ledger/, evaluation/)."""

    # The evaluation ledger and its reaper (run by the sampler).
    ledger_queued_deadline_s: float = Field(
        default=3600, gt=0, description="A queued or retrying judge evaluation is reaped after."
    )
    ledger_running_deadline_s: float = Field(
        default=900, gt=0, description="A running judge evaluation is reaped after this."
    )
    ledger_max_dispatches: int = Field(
        default=5, ge=1, description="After this many dispatches a stuck evaluation fails."
    )
    reaper_interval_s: float = Field(default=30.0, gt=0)
    trace_retention_s: int = Field(
        default=14 * 24 * 3600,
        ge=0,
        description="Trace payloads are kept this long (re-dispatch, reeval); 0 keeps none.",
    )
    ledger_retention_s: int = Field(
        default=30 * 24 * 3600, ge=3600, description="Settled ledger rows are kept this long."
    )


class HeuristicsSettings(_FromEnvironment):
    """The heuristic evaluators and their bounds (evaluators/)."""

    # Heuristics
    min_output_chars: int = 1
    max_output_chars: int = 8_000
    forbidden_phrases: list[str] = Field(default_factory=list)
    evaluator_budget_s: float = Field(
        default=2.0, gt=0, description="Per evaluator and trace; overrun: an error score."
    )
    # A trace's own output_schema is untrusted (its regexes run on RE2): bounds on it.
    json_schema_max_bytes: int = Field(default=64 * 1024, ge=1024)
    json_schema_max_depth: int = Field(default=32, ge=2, description="Object/array nesting.")
    json_schema_max_nodes: int = Field(
        default=5_000, ge=10, description="JSON values: subschemas, keywords, enum members."
    )
    json_max_output_depth: int = Field(
        default=64, ge=1, description="Nesting of an answer validated against a schema."
    )
    json_regex_max_cost: int = Field(
        default=100_000_000,
        ge=1000,
        description="Per validation: sum of bytes matched x RE2 program size (~1 s worst).",
    )


class ReviewSettings(_FromEnvironment):
    """Routing to human review, the queue's leases and the review API (review/)."""

    # Review routing
    review_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Numeric score name -> threshold; a score below it is routed to review.",
    )
    review_routed_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)

    review_lease_s: float = Field(
        default=900, gt=0, description="A claimed review item returns to the queue after this."
    )
    reviewer_tokens: dict[str, ReviewerAccess] = Field(
        default_factory=dict,
        repr=False,  # the keys are secrets
        description='Bearer tokens of the review API, e.g. {"tok-…": {"reviewer": "ana", '
        '"tenants": ["acme"]}}.',
    )

    # review API limits (issue 18)
    review_max_body_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest review API request body; larger: 413."
    )
    review_session_s: int = Field(
        default=12 * 3600, ge=60, description="How long the review page's sign-in cookie lasts."
    )
    review_max_failures: int = Field(
        default=10,
        ge=1,
        description="Wrong reviewer tokens from one client address within the failure window "
        "before it gets 429.",
    )
    review_failure_window_s: float = Field(
        default=60.0, gt=0, description="The window the wrong tokens are counted in (seconds)."
    )


class JudgeSettings(_FromEnvironment):
    """Judge files, the judge endpoint, retries, breaker, limits and prices (judging/)."""

    judge_backfill_rate_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Re-evaluation may use this share of a model's requests/tokens per minute; "
        "live judge work keeps the rest.",
    )
    judge_backfill_batch_size: int = Field(
        default=8, ge=1, description="Traces per re-evaluation task (small: live work overtakes)."
    )

    # Judges (LLM-as-judge)
    judges_dir: Path | None = Field(
        default=None, description="Judge files; default ./judges of the repo."
    )
    enabled_judges: list[str] = Field(
        default_factory=lambda: ["groundedness", "answer_relevance", "correctness", "safety"],
        description="Judges run on sampled traces (each only where its applies_when holds).",
    )
    golden_dir: Path | None = Field(
        default=None, description="Golden datasets; default ./datasets/golden of the repo."
    )
    judge_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint; a judge file's base_url wins."
    )
    judge_api_key: SecretStr | None = Field(
        default=None, description="Falls back to OPENAI_API_KEY; a judge's api_key_env wins."
    )
    judge_provider: Literal["auto", "openai", "azure", "groq", "vllm", "llama_cpp", "generic"] = (
        Field(
            default="auto",
            description="Whose error rules and first structured-output mode apply to "
            "judge_base_url (judging/providers.py); auto: by its host, generic when unknown.",
        )
    )
    judge_timeout_s: float = Field(default=30.0, gt=0)
    judge_max_attempts: int = Field(
        default=5, ge=1, description="Calls per evaluation on 429/5xx/timeouts."
    )
    judge_backoff_base_s: float = Field(default=0.5, gt=0)
    judge_backoff_max_s: float = Field(default=30.0, gt=0)
    judge_max_in_flight: int = Field(
        default=64, ge=1, description="Concurrent judge calls per process."
    )
    judge_batch_size: int = Field(default=32, ge=1, description="Traces per judge task.")
    judge_redact_pii: bool = False
    judge_requests_per_minute: dict[str, int] = Field(
        default_factory=dict, description='Fleet-wide limit per model, e.g. {"gpt-4o-mini": 5000}.'
    )
    judge_tokens_per_minute: dict[str, int] = Field(default_factory=dict)
    judge_give_up_after_s: float = Field(
        default=6 * 3600, gt=0, description="Deferred evaluations older than this become errors."
    )
    model_prices: dict[str, tuple[float, float] | tuple[float, float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="USD per 1M (input, output[, cached input]) tokens by model name or name "
        "prefix.",
    )

    @property
    def judge_endpoint_configured(self) -> bool:
        """A judge endpoint was named: a base URL or an API key (then OpenAI itself)."""
        return bool(self.judge_base_url or self.judge_api_key or os.environ.get("OPENAI_API_KEY"))

    def price_for(self, model: str) -> tuple[float, float] | tuple[float, float, float] | None:
        """(input, output) USD per 1M tokens: exact name, else the longest matching prefix."""
        if model in self.model_prices:
            return self.model_prices[model]
        prefixes = [p for p in self.model_prices if model.startswith(p)]
        return self.model_prices[max(prefixes, key=len)] if prefixes else None

    def cost_usd(
        self, model: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0
    ) -> float | None:
        """The price of a call, or None for a model missing from the price table.
        ``cached_tokens`` (part of ``input_tokens``) are billed at the cached rate."""
        price = self.price_for(model)
        if price is None:
            return None
        cached = min(cached_tokens, input_tokens)
        cached_rate = price[2] if len(price) == 3 else price[0]
        billed = (input_tokens - cached) * price[0] + cached * cached_rate
        return (billed + output_tokens * price[1]) / 1_000_000

    # judge breaker (issue 16): fleet-wide, per endpoint, on the failure *rate* over a window
    # (it replaced a breaker on a count of failures in a row).
    judge_breaker_window_s: float = Field(
        default=20.0, gt=0, description="The breaker's sliding window of judge call outcomes."
    )
    judge_breaker_min_calls: int = Field(
        default=20, ge=1, description="Answered calls in the window before it may open."
    )
    judge_breaker_failure_rate: float = Field(
        default=0.5, gt=0, le=1, description="Share of failed calls in the window that opens it."
    )
    judge_breaker_open_s: float = Field(
        default=5.0, gt=0, description="Cool-down while open, before the half-open probes."
    )
    judge_breaker_probes: int = Field(
        default=3, ge=1, description="Probe calls let through fleet-wide when half-open."
    )
    judge_transcript_chars: int = Field(
        default=24_000,
        ge=1_000,
        description="Character budget of {{ messages }} and of {{ steps }} each in a judge "
        "prompt; longer ones lose their middle (judging/transcript.py).",
    )


class SessionSettings(_FromEnvironment):
    """Conversations: when a session is complete, and how often its judges see it (sessions/)."""

    # sessions (issue 15): a conversation is evaluated as a whole once it goes quiet
    session_quiet_s: float = Field(
        default=1800.0, gt=0, description="A session is complete after this long without a turn."
    )
    session_max_age_s: float = Field(
        default=86_400.0, gt=0, description="Or this long after its window opened, whatever."
    )
    session_retention_s: float = Field(
        default=86_400.0, gt=0, description="A completed session is remembered for late turns."
    )
    session_max_turns: int = Field(default=1000, ge=1, description="Turns kept per session.")
    session_patience_s: float = Field(
        default=300.0,
        ge=0,
        description="A completed session waits this long after its last turn for turns not yet "
        "stored (their heuristics batch still on its way), then is evaluated without them.",
    )
    session_check_interval_s: float = Field(
        default=5.0, gt=0, description="How often the sampler looks for completed sessions."
    )

    # session and trajectory judges (issue 15, part 3: helper B)
    session_judge_sample_rate: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Share of completed sessions (control stratum) the session judges see; a "
        "session with an error or negative feedback in any turn is always judged.",
    )


class SinkSettings(_FromEnvironment):
    """Delivery from the SQL outbox to external sinks (sinks/)."""

    # External sinks (delivered by `evalfleet relay` from the SQL outbox). Langfuse is enabled by
    # the SDK's own LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY / LANGFUSE_HOST variables.
    # Langfuse's own knobs live with them in evaluator/sinks/langfuse.py (LangfuseSettings):
    # LANGFUSE_TRACING_ENVIRONMENT or EVALFLEET_LANGFUSE_ENVIRONMENT (scores' environment when
    # the trace names none), EVALFLEET_LANGFUSE_SCORE_CONFIGS (score configs for reviewers'
    # annotation scores), EVALFLEET_LANGFUSE_MAX_REQUEST_BYTES (request size cap, 1 MB).
    otel_sink: str = Field(
        default="",
        description='Emit evaluations over OTLP: "spans", "logs" or "spans,logs"; empty is off. '
        "Endpoint and headers from the standard OTEL_EXPORTER_OTLP_* variables.",
    )
    sink_batch_size: int = Field(default=200, ge=1, description="Outbox rows per delivery.")
    sink_backoff_max_s: float = Field(default=300.0, gt=0)
    sink_retention_s: int = Field(
        default=7 * 24 * 3600,
        ge=3600,
        description="Delivered outbox rows are kept this long (to recognise redeliveries).",
    )


class OpsSettings(_FromEnvironment):
    """Logs, metrics and riding out outages (ops/)."""

    # Logs
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="'json': one JSON object per line from our code, Celery and uvicorn, "
        "with trace ids where a record concerns a trace.",
    )

    # Metrics
    metrics_port: int | None = Field(
        default=None, description="Serve /metrics and /healthz on this port (CLI --metrics-port)."
    )
    metrics_dir: Path | None = Field(
        default=None, description="prometheus-client multiprocess files of a prefork worker."
    )

    # Outages of Redis, the database or the broker: processes wait them out (evaluator.ops.health).
    outage_backoff_max_s: float = Field(
        default=10.0, gt=0, description="Longest wait between retries while a dependency is down."
    )
    health_probe_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the worker's main process and the HTTP servers check their "
        "dependencies (for /readyz and the outage log lines).",
    )


class Settings(
    OpsSettings,
    SinkSettings,
    SessionSettings,
    JudgeSettings,
    ReviewSettings,
    HeuristicsSettings,
    LedgerSettings,
    SamplerSettings,
    WorkerSettings,
    OtlpSettings,
    IngestSettings,
    ConnectionSettings,
):
    """Configuration for publishers, samplers, workers and the CLI: every slice at once.

    Each slice above is one concern's knobs (``JudgeSettings``, ``SamplerSettings``, ...); a room
    declares the slice it reads (``JudgeClient.settings: JudgeSettings``), so what it depends
    on is visible in its signature and checked by mypy, and a test can build just that slice.
    The whole is what processes read from the environment, and it is every slice: it is passed
    wherever a slice is asked for. Variables are flat and unchanged (``EVALFLEET_<FIELD>``).

    Complex values (lists, dicts) are given as JSON in the environment, e.g.
    ``EVALFLEET_SAMPLE_RATE_OVERRIDES='{"tenant:acme": 0.5}'``.
    """

    model_config = SettingsConfigDict(env_prefix="EVALFLEET_", extra="ignore")


@cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()


# -- Which environment variables are settings ------------------------------------------------------

# EVALFLEET_* variables read elsewhere than a settings class (the one list of them): the CLI warns
# about every other EVALFLEET_* variable that no settings class reads (a misspelling, usually).
OTHER_VARIABLES: dict[str, str] = {
    "EVALFLEET_DEBUG": "evaluator/cli/app.py: full tracebacks instead of one-line errors",
    "EVALFLEET_TEST_REDIS_URL": "tests/conftest.py: the Redis the tests use",
    "EVALFLEET_TEST_DATABASE_URL": "tests/conftest.py: the PostgreSQL the tests use",
    "EVALFLEET_TEST_ARTIFACTS": "tests/test_review_page.py: screenshots",
    "EVALFLEET_FUZZ_EXAMPLES": "tests/test_fuzz_entries.py, bench/fuzz.py: examples per test",
    # evaluator/sinks/langfuse.py (LangfuseSettings) reads these; listed here because importing
    # it at start-up would import prometheus_client before a worker chose its metrics directory.
    "EVALFLEET_LANGFUSE_ENVIRONMENT": "evaluator/sinks/langfuse.py",
    "EVALFLEET_LANGFUSE_SCORE_CONFIGS": "evaluator/sinks/langfuse.py",
    "EVALFLEET_LANGFUSE_MAX_REQUEST_BYTES": "evaluator/sinks/langfuse.py",
}
_PREFIX = "EVALFLEET_"


def field_variables(model: type[BaseSettings], name: str) -> list[str]:
    """The environment variables a settings field is read from, upper-case: its validation
    alias(es) when it has them, else the model's env_prefix + the field name."""
    field = model.model_fields[name]
    alias = field.validation_alias
    choices: list[object] = []
    if isinstance(alias, str):
        choices = [alias]
    elif isinstance(alias, AliasChoices):
        choices = list(alias.choices)
    names = [c.upper() for c in choices if isinstance(c, str)]
    if names:
        return names
    prefix = str(model.model_config.get("env_prefix", ""))
    return [(prefix + (field.alias or name)).upper()]


def settings_variables(model: type[BaseSettings] = Settings) -> dict[str, str]:
    """Every environment variable of a settings class -> the field it sets."""
    return {var: name for name in model.model_fields for var in field_variables(model, name)}


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """EVALFLEET_* variables nothing reads, each with the closest known name (or None). Names are
    matched case-insensitively, as the settings read them."""
    known = {*settings_variables(), *OTHER_VARIABLES}
    suffixes = {name[len(_PREFIX) :]: name for name in known if name.startswith(_PREFIX)}
    unknown = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(_PREFIX) or upper in known:
            continue
        close = difflib.get_close_matches(upper[len(_PREFIX) :], suffixes, n=1, cutoff=0.75)
        unknown.append((variable, suffixes[close[0]] if close else None))
    return unknown
