"""LLM-as-judge: render a judge file for a trace, call any OpenAI-compatible endpoint, parse the
structured output into Scores.

Failures come back as data, never as an exception loop:
* 429 / 5xx / timeouts / connection errors: retried with full jitter (no in-flight slot held
  while waiting), honouring ``Retry-After`` fleet-wide, at most ``judge_max_attempts`` calls;
  then the evaluation is *deferred* (re-queued by the caller), because the endpoint may come
  back.
* the fleet-wide breaker is open: deferred at once, without a call (half-open: a few probes go
  out fleet-wide and the rest wait briefly for their answers).
* output that fails its schema: one repair request; then a ``status=error`` Score with the reason.
* other 4xx (bad key, unknown model): a ``status=error`` Score.

The transport — clients, limiter, breaker, the retry policy and its error classifier — is
``judging/client.py``; this module renders, judges and builds Scores and call rows.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from evaluator.judging.client import CallOutcome, JudgeClient
from evaluator.judging.files import Judge, JudgeSpec, render_messages
from evaluator.judging.limits import BACKFILL, BreakerPolicy, CircuitBreaker, RateLimiter
from evaluator.judging.ragas import RagasRunner, RagasSpec
from evaluator.models import (
    Score,
    ScoreStatus,
    ScoreType,
    Severity,
    Trace,
    stable_id,
)
from evaluator.ops import logs
from evaluator.settings import Settings


@dataclass
class JudgeResult:
    scores: list[Score]
    call: dict[str, Any]
    deferred: bool = False
    defer_s: float = 0.0
    defer_reason: str = ""


@dataclass
class JudgeRuntime(JudgeClient):
    """The judges of one event loop: the transport (``JudgeClient``) and RAGAS on the same
    limiter; ``judge`` renders a judge file for a trace and turns the outcome into Scores."""

    _ragas: RagasRunner | None = None

    async def close(self) -> None:
        await super().close()
        if self._ragas is not None:
            await self._ragas.close()

    async def judge_ragas(self, spec: RagasSpec, trace: Trace) -> JudgeResult:
        if self._ragas is None:
            self._ragas = RagasRunner(
                spec, self.settings, self.settings.judge_base_url, self._api_key(None), self.limiter
            )
        scores, call = await self._ragas.evaluate(trace)
        return JudgeResult(scores=scores, call=call)

    async def judge(
        self, spec: JudgeSpec, trace: Trace, slot: asyncio.Semaphore | None = None
    ) -> JudgeResult:
        """``slot``: the in-flight limit, held while a request is out (not while backing off)."""
        messages = render_messages(
            spec, trace, self.settings.judge_redact_pii, self.settings.golden_dir
        )
        outcome = await self.call(spec, messages, slot)
        call = call_row(spec, trace, outcome, self.settings)
        return JudgeResult(
            scores=[] if outcome.deferred else judge_scores(spec, trace, outcome, call),
            call=call,
            deferred=outcome.deferred,
            defer_s=outcome.defer_s,
            defer_reason=outcome.defer_reason,
        )


def call_row(
    spec: JudgeSpec, trace: Trace, outcome: CallOutcome, settings: Settings
) -> dict[str, Any]:
    return {
        "id": stable_id(trace.trace_id, spec.name, spec.version, "call"),
        "trace_id": trace.trace_id,
        "judge": spec.name,
        "judge_version": spec.version,
        "model": spec.model,
        "input_tokens": outcome.input_tokens,
        "output_tokens": outcome.output_tokens,
        "cost_usd": settings.cost_usd(spec.model, outcome.input_tokens, outcome.output_tokens),
        "latency_ms": outcome.latency_ms,
        "attempts": outcome.attempts,
        "mode": outcome.mode,
        "status": "deferred" if outcome.deferred else ("error" if outcome.error else "ok"),
        "error": outcome.error,
        "created_at": datetime.now(UTC),
    }


def judge_scores(
    spec: JudgeSpec, trace: Trace, outcome: CallOutcome, call: dict[str, Any]
) -> list[Score]:
    """One Score per output field (an error Score for the judge when there is no output).

    Each carries the call's tokens and cost from ``call`` (the judge_calls row)."""
    details = {
        "judge": spec.name,
        "judge_version": spec.version,
        "model": spec.model,
        "call_input_tokens": call["input_tokens"],
        "call_output_tokens": call["output_tokens"],
        "call_cost_usd": call["cost_usd"],
        "latency_ms": round(outcome.latency_ms, 1),
        "attempts": outcome.attempts,
        "mode": outcome.mode,
    }
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
            )
        )
    return scores


def breaker_policy(settings: Settings) -> BreakerPolicy:
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
        if isinstance(spec, RagasSpec):
            async with in_flight:  # RAGAS retries inside the SDK: its slot is held throughout
                result = await runtime.judge_ragas(spec, trace)
        else:
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
