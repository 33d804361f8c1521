"""The judges' transport: OpenAI-compatible clients for one event loop, the fleet-wide limiter
and breaker, and one retry policy driven by one error classifier.

``classify(exc)`` says what an endpoint's error means — ``RetryAfter`` (429: wait, as the server
asks, without counting against the endpoint), ``Transient`` (5xx, timeouts, connection errors:
count against the breaker, back off with full jitter), ``Permanent`` (other 4xx: the evaluation
fails with the reason) or ``SchemaUnsupported`` (a 400 about ``response_format``: the endpoint
does not do JSON schemas; switch to JSON mode once per endpoint). ``JudgeClient.call`` makes at
most ``judge_max_attempts`` requests and one repair round; when every attempt failed transiently,
or the breaker is open, the outcome is *deferred* (the caller re-queues it).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError

from evaluator.judges import JudgeSpec
from evaluator.models import describe_validation_error
from evaluator.ratelimit import CircuitBreaker, RateLimiter, endpoint_key
from evaluator.settings import Settings


@dataclass(frozen=True)
class RetryAfter:
    """Rate limited: wait ``seconds`` (the server's Retry-After), or back off when it said none."""

    seconds: float | None


@dataclass(frozen=True)
class Transient:
    """The endpoint failed (5xx, timeout, connection): it may recover; ``reason`` is kept as the
    call's error while retrying."""

    reason: str | None
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Permanent:
    """The request itself was refused (bad key, unknown model, invalid request)."""

    reason: str


@dataclass(frozen=True)
class SchemaUnsupported:
    """A 400 about ``response_format``: the endpoint takes no JSON schema (``reason`` when the
    request was already in JSON mode)."""

    reason: str


Verdict = RetryAfter | Transient | Permanent | SchemaUnsupported


def classify(exc: openai.APIError) -> Verdict:
    """What an OpenAI-protocol error means for the retry policy (see the module docstring)."""
    if isinstance(exc, openai.BadRequestError):
        reason = f"judge request rejected: {exc.status_code} {exc.message}"[:500]
        return SchemaUnsupported(reason) if _unsupported_json_schema(exc) else Permanent(reason)
    if isinstance(exc, openai.RateLimitError):
        return RetryAfter(_retry_after(exc))
    if isinstance(
        exc, openai.APITimeoutError | openai.APIConnectionError | openai.InternalServerError
    ):
        return Transient(f"{type(exc).__name__}: {exc}"[:300])
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500:
            return Transient(None, _retry_after(exc))
        return Permanent(f"judge request failed: {exc.status_code} {exc.message}"[:500])
    return Transient(f"{type(exc).__name__}: {exc}"[:300])


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
class JudgeClient:
    """Clients, limiter and breaker for one event loop (AsyncOpenAI must not outlive its loop),
    and the one retry policy: ``call`` returns an outcome, never raises for the endpoint's
    errors (``classify`` decides what each means)."""

    settings: Settings
    limiter: RateLimiter
    breaker: CircuitBreaker
    _clients: dict[tuple[str | None, str, int], AsyncOpenAI] = field(default_factory=dict)
    _no_json_schema: set[str] = field(default_factory=set)
    _calls: int = 0

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

    def _api_key(self, env_name: str | None) -> str:
        if env_name:
            return os.environ.get(env_name, "")
        if self.settings.judge_api_key is not None:
            return self.settings.judge_api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY", "")

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
            except openai.APIError as exc:
                verdict = classify(exc)
                if isinstance(verdict, SchemaUnsupported) and outcome.mode == "json_schema":
                    self._no_json_schema.add(endpoint)
                    outcome.mode = "json_object"
                    attempts_here -= 1  # a mode switch is not a failure
                    continue
                if isinstance(verdict, RetryAfter):
                    await asyncio.sleep(verdict.seconds or self._backoff(attempts_here))
                    continue
                if isinstance(verdict, Transient):
                    await self.breaker.failure(endpoint)
                    if verdict.reason is not None:
                        outcome.error = verdict.reason
                    await asyncio.sleep(verdict.retry_after_s or self._backoff(attempts_here))
                    continue
                outcome.error = verdict.reason
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
