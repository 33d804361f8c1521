"""The judges' transport: OpenAI-compatible clients for one event loop, the fleet-wide limiter
and breaker, and one retry policy (``JudgeClient.with_retries``) driven by one error classifier
keyed per provider (``judging/providers.py``: ``RetryAfter``, ``Transient``, ``Permanent``,
``SchemaUnsupported``). Judge calls use it through ``call``; RAGAS, which makes its own
requests, through ``policed_http_client``: the same limiter, breaker, retries and slot.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import openai
from openai import AsyncOpenAI, DefaultAsyncHttpxClient
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError

from evaluator.judging.files import JudgeSpec
from evaluator.judging.limits import Admission, CircuitBreaker, RateLimiter, endpoint_key
from evaluator.judging.outcome import POLICED, CallOutcome, Policed, PolicyStopped
from evaluator.judging.providers import (
    JSON_SCHEMA,
    MODES,
    SCHEMA_IN_OBJECT,
    Permanent,
    Provider,
    RetryAfter,
    SchemaUnsupported,
    Transient,
    Verdict,
    classify,
    provider_for,
    status_error,
)
from evaluator.models import describe_validation_error
from evaluator.settings import JudgeSettings

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


def _parse(spec: JudgeSpec, content: str | None) -> tuple[BaseModel | None, str | None]:
    try:
        return spec.output_model.model_validate_json(content or ""), None
    except ValidationError as exc:
        return None, describe_validation_error(exc)


Result = TypeVar("Result")
# One request as the retry policy sees it: its result, or the classifier's verdict on its error.
Send = Callable[[], Awaitable[tuple[Result | None, Verdict | None]]]


@dataclass
class JudgeClient:
    """Clients, limiter and breaker for one event loop (AsyncOpenAI must not outlive its loop),
    and the one retry policy (``with_retries``): judge calls (``call``) and every request RAGAS
    makes (``policed_http_client``) go through it, and never raise for an endpoint's errors
    (``providers.classify`` decides what each means)."""

    settings: JudgeSettings
    limiter: RateLimiter
    breaker: CircuitBreaker
    _clients: dict[tuple[str | None, str, int], AsyncOpenAI] = field(default_factory=dict)
    # Per endpoint, the structured-output mode it takes (see MODES); absent: its provider's first.
    _modes: dict[str, str] = field(default_factory=dict)
    _calls: int = 0

    def base_url(self, spec_base_url: str | None = None) -> str | None:
        return spec_base_url or self.settings.judge_base_url

    def provider(self, spec_base_url: str | None = None) -> Provider:
        """The fleet's configured provider for its endpoint; a judge file's own endpoint is
        recognised by its host."""
        if spec_base_url:
            return provider_for(spec_base_url)
        return provider_for(self.settings.judge_base_url, self.settings.judge_provider)

    def client_for(self, spec: JudgeSpec) -> AsyncOpenAI:
        base_url = self.base_url(spec.base_url)
        api_key = self.api_key(spec.api_key_env)
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

    def api_key(self, env_name: str | None) -> str:
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
        provider = self.provider(spec.base_url)
        endpoint = endpoint_key(self.base_url(spec.base_url), spec.model)
        outcome.mode = self._modes.get(endpoint, provider.first_mode)
        client = self.client_for(spec)
        conversation = list(messages)
        estimate = sum(len(m["content"]) for m in messages) // 4 + spec.max_tokens

        def step_down() -> bool:
            if outcome.mode == MODES[-1]:
                return False
            outcome.mode = self._modes[endpoint] = MODES[MODES.index(outcome.mode) + 1]
            return True

        async def send() -> tuple[ChatCompletion | None, Verdict | None]:
            try:
                # The SDK's low-level post: same transport, errors and response model as
                # chat.completions.create, without its recursive re-typing of the request
                # body, a third of the client's CPU per call at 200 calls/s.
                body = self._request_args(spec, conversation, outcome.mode)
                return await client.post(
                    "/chat/completions", body=body, cast_to=ChatCompletion
                ), None
            except openai.APIError as exc:
                return None, classify(exc, provider)

        for repair in (False, True):
            response = await self.with_retries(
                endpoint, spec.model, estimate, send, outcome, slot, step_down
            )
            if response is None:
                return outcome
            _add_usage(outcome, response.usage)
            content = response.choices[0].message.content if response.choices else None
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

    async def with_retries(
        self,
        endpoint: str,
        model: str,
        estimate: int,
        send: Send[Result],
        outcome: CallOutcome,
        slot: asyncio.Semaphore | None,
        step_down: Callable[[], bool] | None = None,
    ) -> Result | None:
        """``send``'s result, after at most ``judge_max_attempts`` requests; None when the
        outcome ended as an error or deferred (``outcome`` says which, and why). ``step_down``:
        switch to the next structured-output mode after a ``SchemaUnsupported`` (False: none
        left)."""
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
                paused_s = await self.limiter.paused_for(model)
                if paused_s <= 0:
                    admission = await self.breaker.admit(endpoint)
                if paused_s <= 0 and admission.wait_s <= 0:
                    attempts_here += 1
                    outcome.attempts += 1
                    await self.limiter.acquire(model, estimate)
                    started = time.perf_counter()
                    result, verdict = await send()
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
                return result
            if isinstance(verdict, Transient):
                await self.breaker.record(endpoint, ok=False, probe=admission.probe)
            elif admission.probe:
                # The endpoint answered (a refusal or a rate limit): it is up, which is all a
                # probe asks.
                await self.breaker.record(endpoint, ok=True, probe=True)
            # 429s are not breaker failures: they are the provider's rate signal, answered by the
            # fleet-wide pause below; counting them would open the breaker because of our own
            # pace and stop the fleet for a cool-down on top of the pause the provider asked for.
            if isinstance(verdict, SchemaUnsupported) and step_down is not None and step_down():
                attempts_here -= 1  # a mode switch is not a failure
                continue
            if isinstance(verdict, Permanent | SchemaUnsupported):
                outcome.error = verdict.reason
                return None
            if isinstance(verdict, RetryAfter):
                wait_s, why = verdict.seconds or self._backoff(attempts_here), DEFER_RATE_LIMITED
                if verdict.seconds:
                    await self.limiter.pause(model, verdict.seconds)
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

    def policed_http_client(self, default_model: str) -> httpx.AsyncClient:
        """An httpx client for an SDK that makes its own requests (RAGAS): every request goes
        through ``with_retries`` — the limiter, the breaker, Retry-After, backoff, the in-flight
        slot — on the outcome and slot of the evaluation it belongs to (``POLICED``). A request
        the policy gives up on raises ``PolicyStopped`` (the SDK wraps it in its connection
        error), which the evaluation reads back as deferred or failed."""
        return DefaultAsyncHttpxClient(
            transport=_PolicedTransport(self, httpx.AsyncHTTPTransport(), default_model)
        )


class _PolicedTransport(httpx.AsyncBaseTransport):
    def __init__(self, client: JudgeClient, inner: httpx.AsyncBaseTransport, model: str) -> None:
        self.client, self.inner, self.model = client, inner, model

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        policed = POLICED.get() or Policed(CallOutcome(), None)
        outcome = policed.outcome
        if outcome.deferred:  # an SDK retrying on its own: the evaluation already waits
            raise PolicyStopped(outcome)
        content = await request.aread()
        body = json.loads(content or b"{}")
        model = str(body.get("model") or self.model)
        endpoint = endpoint_key(self.client.base_url(), model)
        provider = self.client.provider()
        estimate = len(content) // 4 + int(body.get("max_tokens") or 0)

        async def send() -> tuple[httpx.Response | None, Verdict | None]:
            try:
                response = await self.inner.handle_async_request(request)
            except httpx.TimeoutException:
                return None, classify(openai.APITimeoutError(request=request), provider)
            except httpx.TransportError as exc:
                message = str(exc) or type(exc).__name__
                return None, classify(
                    openai.APIConnectionError(message=message, request=request), provider
                )
            response.request = request  # the SDK's error types read it
            await response.aread()
            if response.status_code >= 400:
                return None, classify(status_error(response), provider)
            return response, None

        response = await self.client.with_retries(
            endpoint, model, estimate, send, outcome, policed.slot
        )
        if response is None:
            raise PolicyStopped(outcome)
        usage = response.json().get("usage") if response.content else None
        if isinstance(usage, dict):
            _add_usage_dict(outcome, usage)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _add_usage(outcome: CallOutcome, usage: CompletionUsage | None) -> None:
    if usage is not None:
        _add_usage_dict(outcome, usage.model_dump())


def _add_usage_dict(outcome: CallOutcome, usage: dict[str, Any]) -> None:
    """Token counts from an OpenAI-protocol ``usage`` (chat or embeddings); the cached part of the
    prompt where the server reports it (``prompt_tokens_details.cached_tokens``)."""
    outcome.input_tokens += int(usage.get("prompt_tokens") or 0)
    outcome.output_tokens += int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        outcome.cached_tokens += int(details.get("cached_tokens") or 0)


def _defer(outcome: CallOutcome, wait_s: float, why: str) -> None:
    """Mark ``outcome`` deferred for ``wait_s``; its error is the last failure's reason, else
    ``why``'s. (The re-queue spreads the delays of a batch's deferred work, not this.)"""
    outcome.deferred, outcome.defer_s, outcome.defer_reason = True, wait_s, why
    outcome.error = outcome.error or _DEFER_ERRORS[why]
