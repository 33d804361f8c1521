"""The judges' transport: OpenAI-compatible clients for one event loop, the fleet-wide limiter
and breaker, and one retry policy driven by one error classifier.

``classify(exc)`` says what an endpoint's error means — ``RetryAfter`` (429: wait, as the server
asks, without counting against the endpoint), ``Transient`` (5xx, timeouts, connection errors:
count against the breaker, back off with full jitter), ``Permanent`` (other 4xx: the evaluation
fails with the reason) or ``SchemaUnsupported`` (the endpoint refuses the ``response_format``:
step down to the next structured-output mode, ``MODES``, once per endpoint).
``JudgeClient.call`` makes at most ``judge_max_attempts`` requests and one repair round, holding
an in-flight slot only while a request is out (never while it sleeps); when every attempt failed
transiently, the breaker is open, or the wait before the next attempt is longer than
``INLINE_WAIT_MAX_S``, the outcome is *deferred* (the caller re-queues it). A 429's Retry-After
pauses the model fleet-wide (``RateLimiter.pause``); a 429 is not a breaker failure (see
``_request``).
"""

from __future__ import annotations

import asyncio
import contextlib
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

from evaluator.judging.files import JudgeSpec
from evaluator.judging.limits import Admission, CircuitBreaker, RateLimiter, endpoint_key
from evaluator.models import describe_validation_error
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
    if isinstance(exc, openai.APIStatusError) and _rejects_response_format(exc):
        # Some servers refuse an unknown response_format with a 422, or with a 500 wrapping
        # their request validation (llama-cpp-python): still a "no schema here", not an outage.
        reason = f"judge request rejected: {exc.status_code} {exc.message}"[:500]
        return SchemaUnsupported(reason)
    if isinstance(
        exc, openai.APITimeoutError | openai.APIConnectionError | openai.InternalServerError
    ):
        return Transient(f"{type(exc).__name__}: {exc}"[:300])
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500:
            return Transient(None, _retry_after(exc))
        return Permanent(f"judge request failed: {exc.status_code} {exc.message}"[:500])
    return Transient(f"{type(exc).__name__}: {exc}"[:300])


# Structured-output modes, tried in this order per endpoint until one is accepted (remembered):
# strict json_schema (OpenAI and most servers); JSON mode carrying the schema (servers that take
# it there, e.g. llama-cpp-python, which refuses json_schema); plain JSON mode (the schema in the
# prompt only). Each name fits judge_calls.mode (16 characters).
JSON_SCHEMA, SCHEMA_IN_OBJECT, JSON_OBJECT = "json_schema", "schema_in_object", "json_object"
MODES = (JSON_SCHEMA, SCHEMA_IN_OBJECT, JSON_OBJECT)

CONNECTIONS_PER_CLIENT = 16
# Waits longer than this (a long Retry-After, a late backoff) are not slept inside the batch: the
# evaluation is deferred (re-queued with that delay) and its batch-mates are stored without it.
INLINE_WAIT_MAX_S = 2.0
# Why an outcome was deferred (a metric label), and its error when no failure said more.
DEFER_OPEN = "breaker_open"
DEFER_RATE_LIMITED = "rate_limited"
DEFER_FAILED = "backing_off"
DEFER_ATTEMPTS_USED_UP = "attempts_used_up"
_DEFER_ERRORS = {
    DEFER_OPEN: "judge endpoint unavailable: circuit breaker open",
    DEFER_RATE_LIMITED: "judge endpoint rate limited (429)",
    DEFER_FAILED: "judge endpoint failing",
    DEFER_ATTEMPTS_USED_UP: "judge endpoint failed every attempt",
}
_REPAIR = (
    "Your reply did not match the required JSON schema: {error}. "
    "Reply again with only the JSON object, matching the schema exactly."
)


@dataclass
class CallOutcome:
    output: BaseModel | None = None
    error: str | None = None
    deferred: bool = False  # transient: worth trying again later
    defer_s: float = 0.0  # how long to wait first; 0 with DEFER_ATTEMPTS_USED_UP: caller's pick
    defer_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    attempts: int = 0
    mode: str = JSON_SCHEMA


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


def _rejects_response_format(exc: openai.APIStatusError) -> bool:
    """A 422, or a 500 that is a request validation error naming ``response_format``."""
    if exc.status_code not in (422, 500):
        return False
    text = str(exc).lower()
    return "response_format" in text and ("validation" in text or "literal" in text)


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
    # Per endpoint, the structured-output mode it takes (see MODES); absent: the first.
    _modes: dict[str, str] = field(default_factory=dict)
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
        await self.breaker.flush()
        for client in self._clients.values():
            await client.close()

    def _api_key(self, env_name: str | None) -> str:
        if env_name:
            return os.environ.get(env_name, "")
        if self.settings.judge_api_key is not None:
            return self.settings.judge_api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY", "")

    def _backoff(self, attempt: int, grow: bool = True) -> float:
        """Before attempt ``attempt + 1``: up to the base after the first failure, doubling
        with each further one when ``grow``, and never more than ``INLINE_WAIT_MAX_S``: the
        retries of one dispatch are quick; the longer waits are between dispatches (the
        caller's re-queue delay grows with each)."""
        exponent = max(0, attempt - 1) if grow else 0
        cap = min(
            self.settings.judge_backoff_max_s,
            self.settings.judge_backoff_base_s * 2**exponent,
            INLINE_WAIT_MAX_S,
        )
        return random.uniform(0, cap)  # full jitter: workers do not retry in lockstep

    async def call(
        self,
        spec: JudgeSpec,
        messages: list[dict[str, str]],
        slot: asyncio.Semaphore | None = None,
    ) -> CallOutcome:
        """One judged output: the request, its retries, and at most one repair round.
        ``slot``: the process's in-flight limit, held only while a request is out."""
        outcome = CallOutcome()
        endpoint = endpoint_key(spec.base_url or self.settings.judge_base_url, spec.model)
        outcome.mode = self._modes.get(endpoint, MODES[0])
        conversation = list(messages)
        for repair in (False, True):
            content = await self._request(spec, conversation, outcome, endpoint, slot)
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
        if mode == JSON_SCHEMA:
            response_format = spec.response_format()
        else:
            # No json_schema: state the schema in the (static) system prompt and validate after;
            # servers that constrain JSON mode by a schema (llama-cpp-python) get it there too.
            schema = json.dumps(spec.json_schema(), separators=(",", ":"))
            system = f"{messages[0]['content']}\nThe JSON schema of your reply:\n{schema}"
            messages = [{"role": "system", "content": system}, *messages[1:]]
            response_format = {"type": "json_object"}
            if mode == SCHEMA_IN_OBJECT:
                response_format["schema"] = spec.json_schema()
        return {
            "model": spec.model,
            "messages": messages,
            "temperature": spec.temperature,
            "max_tokens": spec.max_tokens,
            "response_format": response_format,
        }

    async def _request(
        self,
        spec: JudgeSpec,
        messages: list[dict[str, str]],
        outcome: CallOutcome,
        endpoint: str,
        slot: asyncio.Semaphore | None,
    ) -> str | None:
        estimate = sum(len(m["content"]) for m in messages) // 4 + spec.max_tokens
        client = self.client_for(spec)
        attempts_here = 0
        half_open_waited = 0.0
        while attempts_here < self.settings.judge_max_attempts:
            paused_s, admission = 0.0, Admission()
            verdict: Verdict | None = None
            async with slot or contextlib.nullcontext():
                # Asked once the slot is held: a call that queued behind others must meet the
                # pause and the breaker as they are when it can go, not as they were when it
                # began to wait (hundreds of calls went out after the breaker had opened).
                # The pause first, so no probe token is taken for a call that would not go out.
                paused_s = await self.limiter.paused_for(spec.model)
                if paused_s <= 0:
                    admission = await self.breaker.admit(endpoint)
                if paused_s <= 0 and admission.wait_s <= 0:
                    attempts_here += 1
                    outcome.attempts += 1
                    await self.limiter.acquire(spec.model, estimate)
                    started = time.perf_counter()
                    try:
                        # The SDK's low-level post: same transport, errors and response model
                        # as chat.completions.create, without its recursive re-typing of the
                        # request body, a third of the client's CPU per call at 200 calls/s.
                        response = await client.post(
                            "/chat/completions",
                            body=self._request_args(spec, messages, outcome.mode),
                            cast_to=ChatCompletion,
                        )
                    except openai.APIError as exc:
                        verdict = classify(exc)
            if paused_s > 0:
                # Another worker's 429: the whole fleet waits it out.
                if not await self._wait(outcome, paused_s, DEFER_RATE_LIMITED):
                    return None
                continue
            # Half-open and the probes are out: their answers come within a call's time; wait
            # for them here, a little at a time, rather than re-queue the work.
            probes_out = admission.half_open and admission.wait_s > 0
            if probes_out and half_open_waited + admission.wait_s <= INLINE_WAIT_MAX_S:
                half_open_waited += admission.wait_s
                await asyncio.sleep(admission.wait_s)
                continue
            if admission.wait_s > 0:
                _defer(outcome, admission.wait_s, DEFER_OPEN)
                return None
            # The slot is free again: a backoff below does not keep another call from going out.
            if verdict is None:
                outcome.latency_ms += (time.perf_counter() - started) * 1000
                outcome.error = None
                await self.breaker.record(endpoint, ok=True, probe=admission.probe)
                if response.usage is not None:
                    outcome.input_tokens += response.usage.prompt_tokens
                    outcome.output_tokens += response.usage.completion_tokens
                return response.choices[0].message.content if response.choices else None
            if isinstance(verdict, Transient):
                await self.breaker.record(endpoint, ok=False, probe=admission.probe)
            elif admission.probe:
                # The endpoint answered (a refusal or a rate limit): it is up, which is all a
                # probe asks.
                await self.breaker.record(endpoint, ok=True, probe=True)
            # 429s are not breaker failures: they are the provider's rate signal, answered by the
            # fleet-wide pause below; counting them would open the breaker because of our own
            # pace and stop the fleet for a cool-down on top of the pause the provider asked for.
            if isinstance(verdict, SchemaUnsupported) and outcome.mode != MODES[-1]:
                outcome.mode = MODES[MODES.index(outcome.mode) + 1]
                self._modes[endpoint] = outcome.mode
                attempts_here -= 1  # a mode switch is not a failure
                continue
            if isinstance(verdict, Permanent | SchemaUnsupported):
                outcome.error = verdict.reason
                return None
            if isinstance(verdict, RetryAfter):
                wait_s, why = verdict.seconds or self._backoff(attempts_here), DEFER_RATE_LIMITED
                if verdict.seconds:
                    await self.limiter.pause(spec.model, verdict.seconds)
                    wait_s = 0.0  # the pause at the top of the loop is this call's wait too
            else:
                if verdict.reason is not None:
                    outcome.error = verdict.reason
                # Backoff grows only while the endpoint is degraded fleet-wide: a failure among
                # mostly successes is bad luck, and waiting longer for it only delays the batch
                # (an endpoint in real trouble opens the breaker, which stops everyone).
                grow = self.breaker.degraded(endpoint)
                backoff = self._backoff(attempts_here, grow)
                wait_s, why = verdict.retry_after_s or backoff, DEFER_FAILED
            if attempts_here >= self.settings.judge_max_attempts:
                break  # no sleep before giving up: the caller re-queues it
            if wait_s > 0 and not await self._wait(outcome, wait_s, why):
                return None
        # Transient failures on every attempt: the endpoint may recover; try again later (the
        # caller picks the delay: it knows how often this evaluation was deferred before).
        _defer(outcome, 0.0, DEFER_ATTEMPTS_USED_UP)
        return None

    async def _wait(self, outcome: CallOutcome, wait_s: float, why: str) -> bool:
        """Sleep ``wait_s`` before the next attempt (holding no in-flight slot), or, when that
        is longer than ``INLINE_WAIT_MAX_S``, defer instead (False): the batch's other
        evaluations are not kept waiting for this one."""
        if wait_s > INLINE_WAIT_MAX_S:
            _defer(outcome, wait_s, why)
            return False
        await asyncio.sleep(wait_s)
        return True


def _defer(outcome: CallOutcome, wait_s: float, why: str) -> None:
    """Mark ``outcome`` deferred for ``wait_s``; its error is the last failure's reason, else
    ``why``'s. (The re-queue spreads the delays of a batch's deferred work, not this.)"""
    outcome.deferred, outcome.defer_s, outcome.defer_reason = True, wait_s, why
    outcome.error = outcome.error or _DEFER_ERRORS[why]
