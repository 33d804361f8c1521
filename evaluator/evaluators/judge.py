"""LLM-as-judge: render a judge file for a trace, call any OpenAI-compatible endpoint, parse the
structured output into Scores.

Failures come back as data, never as an exception loop:
* 429 / 5xx / timeouts / connection errors: retried with exponential backoff and full jitter,
  honouring ``Retry-After``, at most ``judge_max_attempts`` calls; then the evaluation is
  *deferred* (re-queued by the caller), because the endpoint may come back.
* the fleet-wide circuit is open: deferred at once, without a call.
* output that fails its schema: one repair request; then a ``status=error`` Score with the reason.
* other 4xx (bad key, unknown model): a ``status=error`` Score.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import openai
import redis.asyncio as aioredis
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError

from evaluator.evaluators.ragas import RagasRunner, RagasSpec
from evaluator.judges import Judge, JudgeSpec, render_messages
from evaluator.models import (
    Score,
    ScoreStatus,
    ScoreType,
    Severity,
    Trace,
    describe_validation_error,
    stable_id,
)
from evaluator.ratelimit import BACKFILL, CircuitBreaker, RateLimiter, endpoint_key
from evaluator.settings import Settings

CONNECTIONS_PER_CLIENT = 16
_REPAIR = (
    "Your reply did not match the required JSON schema: {error}. "
    "Reply again with only the JSON object, matching the schema exactly."
)


@dataclass
class CallOutcome:
    output: BaseModel | None = None
    error: str | None = None
    deferred: bool = False  # transient: worth trying again later
    defer_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    attempts: int = 0
    mode: str = "json_schema"


@dataclass
class JudgeResult:
    scores: list[Score]
    call: dict[str, Any]
    deferred: bool = False
    defer_s: float = 0.0


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                return None
    return None


def _unsupported_json_schema(exc: openai.BadRequestError) -> bool:
    text = str(exc).lower()
    return "response_format" in text or "json_schema" in text


def _parse(spec: JudgeSpec, content: str | None) -> tuple[BaseModel | None, str | None]:
    try:
        return spec.output_model.model_validate_json(content or ""), None
    except ValidationError as exc:
        return None, describe_validation_error(exc)


@dataclass
class JudgeRuntime:
    """Clients, limiter and breaker for one event loop (AsyncOpenAI must not outlive its loop)."""

    settings: Settings
    limiter: RateLimiter
    breaker: CircuitBreaker
    _clients: dict[tuple[str | None, str, int], AsyncOpenAI] = field(default_factory=dict)
    _no_json_schema: set[str] = field(default_factory=set)
    _calls: int = 0
    _ragas: RagasRunner | None = None

    def client_for(self, spec: JudgeSpec) -> AsyncOpenAI:
        base_url = spec.base_url or self.settings.judge_base_url
        api_key = self._api_key(spec.api_key_env)
        # Calls are spread over several clients: httpx's pool scans all of its connections for
        # every request, which made one pool of 64 connections CPU-bound at ~100 calls/s.
        shards = max(1, -(-self.settings.judge_max_in_flight // CONNECTIONS_PER_CLIENT))
        self._calls += 1
        key = (base_url, api_key, self._calls % shards)
        if key not in self._clients:
            # Retries are ours (fleet-wide limiter, breaker, Retry-After), not the SDK's.
            self._clients[key] = AsyncOpenAI(
                base_url=base_url,
                api_key=api_key or "unset",
                max_retries=0,
                timeout=self.settings.judge_timeout_s,
            )
        return self._clients[key]

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        if self._ragas is not None:
            await self._ragas.close()

    def _api_key(self, env_name: str | None) -> str:
        if env_name:
            return os.environ.get(env_name, "")
        if self.settings.judge_api_key is not None:
            return self.settings.judge_api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY", "")

    async def judge_ragas(self, spec: RagasSpec, trace: Trace) -> JudgeResult:
        if self._ragas is None:
            self._ragas = RagasRunner(
                spec, self.settings, self.settings.judge_base_url, self._api_key(None), self.limiter
            )
        scores, call = await self._ragas.evaluate(trace)
        return JudgeResult(scores=scores, call=call)

    def _backoff(self, attempt: int) -> float:
        cap = min(
            self.settings.judge_backoff_max_s, self.settings.judge_backoff_base_s * 2**attempt
        )
        return random.uniform(0, cap)  # full jitter: workers do not retry in lockstep

    async def call(self, spec: JudgeSpec, messages: list[dict[str, str]]) -> CallOutcome:
        """One judged output: the request, its retries, and at most one repair round."""
        outcome = CallOutcome()
        endpoint = endpoint_key(spec.base_url or self.settings.judge_base_url, spec.model)
        if endpoint in self._no_json_schema:
            outcome.mode = "json_object"
        conversation = list(messages)
        for repair in (False, True):
            content = await self._request(spec, conversation, outcome, endpoint)
            if outcome.error or outcome.deferred:
                return outcome
            parsed, problem = _parse(spec, content)
            if parsed is not None:
                outcome.output = parsed
                return outcome
            if repair:
                outcome.error = f"judge output failed its schema after one repair: {problem}"
                return outcome
            conversation += [
                {"role": "assistant", "content": content or ""},
                {"role": "user", "content": _REPAIR.format(error=problem)},
            ]
        return outcome

    def _request_args(
        self, spec: JudgeSpec, messages: list[dict[str, str]], mode: str
    ) -> dict[str, Any]:
        if mode == "json_schema":
            response_format = spec.response_format()
        else:
            # No server-side schema: state it in the (static) system prompt and validate after.
            schema = json.dumps(spec.json_schema(), separators=(",", ":"))
            system = f"{messages[0]['content']}\nThe JSON schema of your reply:\n{schema}"
            messages = [{"role": "system", "content": system}, *messages[1:]]
            response_format = {"type": "json_object"}
        return {
            "model": spec.model,
            "messages": messages,
            "temperature": spec.temperature,
            "max_tokens": spec.max_tokens,
            "response_format": response_format,
        }

    async def _request(
        self, spec: JudgeSpec, messages: list[dict[str, str]], outcome: CallOutcome, endpoint: str
    ) -> str | None:
        estimate = sum(len(m["content"]) for m in messages) // 4 + spec.max_tokens
        client = self.client_for(spec)
        attempts_here = 0
        while attempts_here < self.settings.judge_max_attempts:
            if (open_s := await self.breaker.open_for(endpoint)) > 0:
                outcome.deferred, outcome.defer_s = True, open_s
                outcome.error = None
                return None
            await self.limiter.acquire(spec.model, estimate)
            attempts_here += 1
            outcome.attempts += 1
            started = time.perf_counter()
            try:
                # The SDK's low-level post: same transport, errors and response model as
                # chat.completions.create, without its recursive re-typing of the request body,
                # which was a third of the client's CPU per call at 200 calls/s.
                response = await client.post(
                    "/chat/completions",
                    body=self._request_args(spec, messages, outcome.mode),
                    cast_to=ChatCompletion,
                )
            except openai.BadRequestError as exc:
                if outcome.mode == "json_schema" and _unsupported_json_schema(exc):
                    self._no_json_schema.add(endpoint)
                    outcome.mode = "json_object"
                    attempts_here -= 1  # a mode switch is not a failure
                    continue
                outcome.error = f"judge request rejected: {exc.status_code} {exc.message}"[:500]
                return None
            except openai.RateLimitError as exc:
                await asyncio.sleep(_retry_after(exc) or self._backoff(attempts_here))
                continue
            except (
                openai.APITimeoutError,
                openai.APIConnectionError,
                openai.InternalServerError,
            ) as exc:
                await self.breaker.failure(endpoint)
                outcome.error = f"{type(exc).__name__}: {exc}"[:300]
                await asyncio.sleep(self._backoff(attempts_here))
                continue
            except openai.APIStatusError as exc:
                if exc.status_code >= 500:
                    await self.breaker.failure(endpoint)
                    await asyncio.sleep(_retry_after(exc) or self._backoff(attempts_here))
                    continue
                outcome.error = f"judge request failed: {exc.status_code} {exc.message}"[:500]
                return None
            outcome.latency_ms += (time.perf_counter() - started) * 1000
            outcome.error = None
            await self.breaker.success(endpoint)
            if response.usage is not None:
                outcome.input_tokens += response.usage.prompt_tokens
                outcome.output_tokens += response.usage.completion_tokens
            return response.choices[0].message.content if response.choices else None
        # Transient failures on every attempt: the endpoint may recover; try again later.
        outcome.deferred = True
        outcome.defer_s = self.settings.judge_backoff_max_s
        return None

    async def judge(self, spec: JudgeSpec, trace: Trace) -> JudgeResult:
        messages = render_messages(
            spec, trace, self.settings.judge_redact_pii, self.settings.golden_dir
        )
        outcome = await self.call(spec, messages)
        call = call_row(spec, trace, outcome, self.settings)
        return JudgeResult(
            scores=[] if outcome.deferred else judge_scores(spec, trace, outcome, call),
            call=call,
            deferred=outcome.deferred,
            defer_s=outcome.defer_s,
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
        CircuitBreaker(client, settings.judge_circuit_failures, settings.judge_circuit_open_s),
    )
    return runtime, client


async def _judge_all(
    runtime: JudgeRuntime,
    in_flight: asyncio.Semaphore,
    work: list[tuple[Judge, Trace]],
    on_done: Callable[[], None] | None = None,
) -> list[JudgeResult]:
    async def one(spec: Judge, trace: Trace) -> JudgeResult:
        async with in_flight:
            if isinstance(spec, RagasSpec):
                result = await runtime.judge_ragas(spec, trace)
            else:
                result = await runtime.judge(spec, trace)
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
