"""Judges as evaluators: a judge file (``LLMJudge``: render it for a trace, call any
OpenAI-compatible endpoint, parse the structured output into Scores) or RAGAS (``RagasJudge``),
behind one protocol (``JudgeEvaluator``) and one transport (``judging/client.py``).

Failures come back as data, never as an exception loop:
* 429 / 5xx / timeouts / connection errors: retried with full jitter (no in-flight slot held
  while waiting), honouring ``Retry-After`` fleet-wide, at most ``judge_max_attempts`` calls;
  then the evaluation is *deferred* (re-queued by the caller), because the endpoint may come
  back.
* the fleet-wide breaker is open: deferred at once, without a call (half-open: a few probes go
  out fleet-wide and the rest wait briefly for their answers).
* output that fails its schema: one repair request; then a ``status=error`` Score with the reason.
* other 4xx (bad key, unknown model): a ``status=error`` Score.

The transport — clients, limiter, breaker, the retry policy and its error classifier per
provider — is ``judging/client.py`` and ``judging/providers.py``; this module holds the
evaluators, the Scores and cost records (``JudgeCall``) they produce, and the event loops that
run them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import redis.asyncio as aioredis

from evaluator.judging.client import JudgeClient
from evaluator.judging.files import Judge, JudgeSpec, render_messages
from evaluator.judging.limits import BACKFILL, BreakerPolicy, CircuitBreaker, RateLimiter
from evaluator.judging.outcome import POLICED, CallOutcome, Policed
from evaluator.judging.ragas import RagasRunner, RagasSpec, ragas_scores
from evaluator.models import (
    JudgeCall,
    Score,
    ScoreStatus,
    ScoreType,
    Severity,
    Trace,
    stable_id,
)
from evaluator.ops import logs
from evaluator.settings import JudgeSettings, Settings


@dataclass
class JudgeResult:
    """One judge's evaluation of one trace: its scores (none when deferred) and what it cost."""

    scores: list[Score]
    call: JudgeCall
    deferred: bool = False
    defer_s: float = 0.0
    defer_reason: str = ""


class JudgeEvaluator(Protocol):
    """An evaluator whose verdicts come from a model: an LLM judge file, RAGAS. Like the
    heuristics (``evaluators.base.Evaluator``) it turns a trace into scores and never raises for
    the endpoint's errors; unlike them it is asynchronous, reports its cost, and may be
    *deferred* when the endpoint is unavailable. ``transport`` is the event loop's
    ``JudgeClient`` (limiter, breaker, retry policy); ``slot`` the in-flight limit."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    async def evaluate(
        self, trace: Trace, transport: JudgeClient, slot: asyncio.Semaphore | None
    ) -> JudgeResult: ...


class _NamedBySpec:
    """An evaluator whose name and version are its spec's."""

    spec: JudgeSpec | RagasSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version


@dataclass(frozen=True)
class LLMJudge(_NamedBySpec):
    """A judge file as an evaluator: render it for the trace, one structured call, one Score
    per output field."""

    spec: JudgeSpec

    async def evaluate(
        self, trace: Trace, transport: JudgeClient, slot: asyncio.Semaphore | None
    ) -> JudgeResult:
        settings = transport.settings
        messages = render_messages(
            self.spec, trace, settings.judge_redact_pii, settings.golden_dir,
            settings.judge_transcript_chars,
        )  # fmt: skip
        outcome = await transport.call(self.spec, messages, slot)
        call = judge_call(self.spec, trace.trace_id, outcome, settings)
        return JudgeResult(
            scores=[] if outcome.deferred else judge_scores(self.spec, trace, outcome, call),
            call=call,
            deferred=outcome.deferred,
            defer_s=outcome.defer_s,
            defer_reason=outcome.defer_reason,
        )


def judge_call(
    spec: JudgeSpec | RagasSpec, trace_id: str, outcome: CallOutcome, settings: JudgeSettings
) -> JudgeCall:
    """The cost record of one evaluation (every request of it, the repair round too)."""
    return JudgeCall(
        id=stable_id(trace_id, spec.name, spec.version, "call"),
        trace_id=trace_id,
        judge=spec.name,
        judge_version=spec.version,
        model=spec.model,
        input_tokens=outcome.input_tokens,
        output_tokens=outcome.output_tokens,
        cached_tokens=outcome.cached_tokens,
        cost_usd=settings.cost_usd(
            spec.model, outcome.input_tokens, outcome.output_tokens, outcome.cached_tokens
        ),
        latency_ms=outcome.latency_ms,
        attempts=outcome.attempts,
        mode=outcome.mode,
        status="deferred" if outcome.deferred else ("error" if outcome.error else "ok"),
        error=outcome.error,
        created_at=datetime.now(UTC),
    )


def call_details(spec: JudgeSpec | RagasSpec, call: JudgeCall) -> dict[str, Any]:
    """What each score of a judge evaluation says about the call that produced it."""
    return {
        "judge": spec.name,
        "judge_version": spec.version,
        "model": spec.model,
        "call_input_tokens": call.input_tokens,
        "call_output_tokens": call.output_tokens,
        "call_cached_tokens": call.cached_tokens,
        "call_cost_usd": call.cost_usd,
        "latency_ms": round(call.latency_ms, 1),
        "attempts": call.attempts,
        "mode": call.mode,
    }


def judge_scores(
    spec: JudgeSpec, trace: Trace, outcome: CallOutcome, call: JudgeCall
) -> list[Score]:
    """One Score per output field (an error Score for the judge when there is no output).

    Each carries the call's tokens and cost (``call_details``), and a session's version (which
    turns it held) when the trace is a session."""
    details = call_details(spec, call)
    if "session_version" in trace.metadata:
        details["session_version"] = trace.metadata["session_version"]
    if outcome.output is None:
        return [
            Score.for_trace(
                trace.trace_id,
                spec.name,
                spec.version,
                spec.name,
                status=ScoreStatus.ERROR,
                reason=outcome.error or "no output",
                metadata=details,
                level=spec.level,
            )
        ]
    values = outcome.output.model_dump()
    reasoning = str(values.get("reasoning", ""))[:2000]
    scores = []
    for name, spec_field in spec.score_fields.items():
        value = values[name]
        threshold = spec.review_thresholds.get(name)
        numeric = None if spec_field.type == "enum" else float(value)
        scores.append(
            Score.for_trace(
                trace.trace_id,
                spec.name,
                spec.version,
                name,
                data_type={"boolean": ScoreType.BOOLEAN, "enum": ScoreType.CATEGORICAL}.get(
                    spec_field.type, ScoreType.NUMERIC
                ),
                value=numeric,
                label=str(value) if spec_field.type == "enum" else None,
                passed=None if threshold is None or numeric is None else numeric >= threshold,
                severity=spec.severity if threshold is not None else Severity.LOW,
                reason=reasoning,
                metadata=details,
                level=spec.level,
            )
        )
    return scores


@dataclass
class RagasJudge(_NamedBySpec):
    """RAGAS as an evaluator: its metrics, their requests made through the transport's retry
    policy (``JudgeClient.policed_http_client``), holding the in-flight slot only while a
    request is out. One per event loop (its SDK client belongs to the loop)."""

    spec: RagasSpec
    _runner: RagasRunner | None = None

    async def evaluate(
        self, trace: Trace, transport: JudgeClient, slot: asyncio.Semaphore | None
    ) -> JudgeResult:
        if self._runner is None:
            self._runner = RagasRunner(
                self.spec,
                transport.base_url(),
                transport.api_key(None),
                transport.policed_http_client(self.spec.model),
                transport.settings.judge_timeout_s,
            )
        outcome = CallOutcome(mode="ragas")
        token = POLICED.set(Policed(outcome, slot))
        try:
            results = await self._runner.evaluate(trace)
        finally:
            POLICED.reset(token)
        call = judge_call(self.spec, trace.trace_id, outcome, transport.settings)
        if outcome.deferred:
            return JudgeResult([], call, True, outcome.defer_s, outcome.defer_reason)
        errors = [error for _, error in results.values() if error]
        if errors and call.status == "ok":
            call = call.model_copy(update={"status": "error", "error": errors[0]})
        return JudgeResult(
            ragas_scores(self.spec, trace, results, call_details(self.spec, call)), call
        )

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.close()


def judge_for(spec: Judge) -> JudgeEvaluator:
    """The evaluator for a registered judge (a judge file, or RAGAS)."""
    return RagasJudge(spec) if isinstance(spec, RagasSpec) else LLMJudge(spec)


@dataclass
class JudgeRuntime(JudgeClient):
    """The judges of one event loop: the transport (``JudgeClient``) and one evaluator per
    judge, built on first use."""

    _evaluators: dict[tuple[str, str], JudgeEvaluator] = field(default_factory=dict)

    def evaluator(self, spec: Judge) -> JudgeEvaluator:
        key = (spec.name, spec.version)
        if key not in self._evaluators:
            self._evaluators[key] = judge_for(spec)
        return self._evaluators[key]

    async def judge(
        self, spec: Judge, trace: Trace, slot: asyncio.Semaphore | None = None
    ) -> JudgeResult:
        """``slot``: the in-flight limit, held while a request is out (not while backing off)."""
        return await self.evaluator(spec).evaluate(trace, self, slot)

    async def close(self) -> None:
        await super().close()
        for evaluator in self._evaluators.values():
            if isinstance(evaluator, RagasJudge):
                await evaluator.close()


def breaker_policy(settings: JudgeSettings) -> BreakerPolicy:
    return BreakerPolicy(
        window_s=settings.judge_breaker_window_s,
        min_calls=settings.judge_breaker_min_calls,
        failure_rate=settings.judge_breaker_failure_rate,
        open_s=settings.judge_breaker_open_s,
        probes=settings.judge_breaker_probes,
        # A probe that has not answered by its time-out (and a little) was lost with its process.
        probe_lease_s=settings.judge_timeout_s + 5.0,
    )


def _new_runtime(settings: Settings) -> tuple[JudgeRuntime, aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url)
    runtime = JudgeRuntime(
        settings,
        RateLimiter(
            client,
            settings.judge_requests_per_minute,
            settings.judge_tokens_per_minute,
            settings.judge_backfill_rate_share,
        ),
        CircuitBreaker(client, breaker_policy(settings)),
    )
    return runtime, client


async def _judge_all(
    runtime: JudgeRuntime,
    in_flight: asyncio.Semaphore,
    work: list[tuple[Judge, Trace]],
    on_done: Callable[[], None] | None = None,
) -> list[JudgeResult]:
    async def one(spec: Judge, trace: Trace) -> JudgeResult:
        result = await runtime.judge(spec, trace, in_flight)
        if on_done is not None:
            on_done()
        return result

    return list(await asyncio.gather(*(one(spec, trace) for spec, trace in work)))


async def run_judgements(
    settings: Settings,
    work: list[tuple[Judge, Trace]],
    on_done: Callable[[], None] | None = None,
    backfill: bool = False,
) -> list[JudgeResult]:
    """Judge every (judge, trace) pair, at most ``judge_max_in_flight`` calls at a time, with
    clients that live as long as this call; ``on_done`` is called after each (progress).
    ``backfill``: re-evaluation work, held to its share of the fleet's rate limits."""
    BACKFILL.set(backfill)
    runtime, client = _new_runtime(settings)
    try:
        semaphore = asyncio.Semaphore(settings.judge_max_in_flight)
        return await _judge_all(runtime, semaphore, work, on_done)
    finally:
        await runtime.close()
        await client.aclose()


class JudgeLoop:
    """One event loop per worker process, in a daemon thread, for every judge task it runs.

    HTTP connections, clients and the in-flight limit then outlive a single task: starting a
    loop and opening connections per task cost about half of a 128-evaluation batch.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The judge worker's HTTP clients log a line per request at INFO: thousands a minute.
        logs.quiet_http_clients()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="judges", daemon=True)
        self._thread.start()
        self._runtime: JudgeRuntime | None = None
        self._in_flight: asyncio.Semaphore | None = None

    async def _run(self, work: list[tuple[Judge, Trace]], backfill: bool) -> list[JudgeResult]:
        BACKFILL.set(backfill)  # this task's context (and its children's) only
        if self._runtime is None or self._in_flight is None:
            self._runtime, _ = _new_runtime(self.settings)
            self._in_flight = asyncio.Semaphore(self.settings.judge_max_in_flight)
        return await _judge_all(self._runtime, self._in_flight, work)

    def __call__(
        self, work: list[tuple[Judge, Trace]], backfill: bool = False
    ) -> list[JudgeResult]:
        return asyncio.run_coroutine_threadsafe(self._run(work, backfill), self._loop).result()
