"""What an endpoint's error means, per provider: the one classifier the judges' retry policy
(``judging/client.py``) acts on, for judge calls and for RAGAS's requests alike.

``classify(exc, provider)`` returns
* ``RetryAfter`` — 429: wait as the server asks (``Retry-After`` / ``retry-after-ms``), or back
  off when it says nothing; a rate signal, not a failure of the endpoint;
* ``Transient`` — 5xx, timeouts, connection errors: the endpoint may recover; counted by the
  breaker, retried with backoff, then deferred;
* ``Permanent`` — the request itself was refused (bad key, unknown model, a quota that is used
  up, a content filter): the evaluation gets an error score with the reason;
* ``SchemaUnsupported`` — the endpoint takes no ``response_format`` of this kind: the caller
  steps down to the next structured-output mode (``MODES``), once per endpoint.

Providers differ in how they say these things, so each ``Provider`` adds its rules to the
OpenAI protocol's (the status codes); ``provider_for(base_url, name)`` picks one by name
(``EVALFLEET_JUDGE_PROVIDER`` or a judge file's ``provider:``) or by the endpoint's host, and an
unknown host gets ``GENERIC``, which knows every server-side rule below but no account rule
(no quota or content-filter codes, which only their provider defines).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai


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
    """The endpoint takes no ``response_format`` of this kind (``reason`` for the last mode)."""

    reason: str


Verdict = RetryAfter | Transient | Permanent | SchemaUnsupported

# Structured-output modes, tried in this order per endpoint until one is accepted (remembered):
# strict json_schema (OpenAI and most servers); JSON mode carrying the schema (servers that take
# it there, e.g. llama-cpp-python, which refuses json_schema); plain JSON mode (the schema in the
# prompt only). Each name fits judge_calls.mode (16 characters).
JSON_SCHEMA, SCHEMA_IN_OBJECT, JSON_OBJECT = "json_schema", "schema_in_object", "json_object"
MODES = (JSON_SCHEMA, SCHEMA_IN_OBJECT, JSON_OBJECT)


@dataclass(frozen=True)
class Provider:
    """One provider's way of saying what its errors mean, on top of the protocol's codes."""

    name: str
    hosts: tuple[str, ...] = ()  # host suffixes that identify it
    first_mode: str = JSON_SCHEMA  # the structured-output mode to try first
    # Error codes (the body's ``error.code``) that make a 429 or 400 permanent: retrying an
    # exhausted quota or a filtered prompt only burns attempts and delays the error score.
    permanent_codes: frozenset[str] = frozenset()
    # Error codes of a 400 that are the model's bad luck, not the request's fault: retried.
    transient_codes: frozenset[str] = frozenset()
    # Texts of a 400 that mean "no such response_format here".
    schema_refusals: tuple[str, ...] = ("response_format", "json_schema")
    # Texts of a 422 / 500 that are request validation naming response_format (a server that
    # wraps its validation in a 500), not an outage.
    wrapped_schema_refusals: bool = True


OPENAI = Provider(
    "openai",
    hosts=("api.openai.com",),
    # A 429 "insufficient_quota" is billing, not a rate: it does not pass by waiting.
    permanent_codes=frozenset({"insufficient_quota", "billing_hard_limit_reached"}),
    wrapped_schema_refusals=False,
)
AZURE = Provider(
    "azure",
    hosts=(".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com"),
    # Azure's content filter answers 400 with this code: the prompt (a trace's text) was
    # refused, and will be again.
    permanent_codes=frozenset({"content_filter", "insufficient_quota"}),
    wrapped_schema_refusals=False,
)
GROQ = Provider(
    "groq",
    hosts=("api.groq.com",),
    # Groq validates JSON mode output itself and answers 400 when the sampled output was not
    # JSON: a new sample may well be.
    transient_codes=frozenset({"json_validate_failed"}),
)
# vLLM names its guided decoding in a refusal, and answers request validation with a 400: a 500
# from it is an outage, even one that mentions response_format.
VLLM = Provider(
    "vllm",
    schema_refusals=("response_format", "json_schema", "guided_"),
    wrapped_schema_refusals=False,
)
LLAMA_CPP = Provider(
    # llama-cpp-python's server refuses json_schema (a 500 wrapping its validation) and takes the
    # schema inside json_object: start there and save every worker a refused first call.
    "llama_cpp",
    first_mode=SCHEMA_IN_OBJECT,
)
GENERIC = Provider("generic", schema_refusals=("response_format", "json_schema", "guided_"))
PROVIDERS = {p.name: p for p in (OPENAI, AZURE, GROQ, VLLM, LLAMA_CPP, GENERIC)}


def provider_for(base_url: str | None, name: str | None = None) -> Provider:
    """The provider called ``name`` ("auto" or None: by the host of ``base_url``; no
    ``base_url`` is OpenAI's default endpoint)."""
    if name and name != "auto":
        if name not in PROVIDERS:
            raise ValueError(f"unknown judge provider {name!r}; known: {', '.join(PROVIDERS)}")
        return PROVIDERS[name]
    if base_url is None:
        return OPENAI
    host = (urlsplit(base_url).hostname or "").lower()
    for provider in PROVIDERS.values():
        if any(host == h.lstrip(".") or host.endswith(h) for h in provider.hosts):
            return provider
    return GENERIC


def classify(exc: openai.APIError, provider: Provider = GENERIC) -> Verdict:
    """What an OpenAI-protocol error means for the retry policy (see the module docstring)."""
    code = _error_code(exc)
    if code in provider.permanent_codes:
        status = exc.status_code if isinstance(exc, openai.APIStatusError) else ""
        return Permanent(f"judge request refused ({code}): {status} {exc.message}"[:500])
    if isinstance(exc, openai.BadRequestError):
        reason = f"judge request rejected: {exc.status_code} {exc.message}"[:500]
        if code in provider.transient_codes:
            return Transient(reason)
        text = str(exc).lower()
        if any(marker in text for marker in provider.schema_refusals):
            return SchemaUnsupported(reason)
        return Permanent(reason)
    if isinstance(exc, openai.RateLimitError):
        return RetryAfter(_retry_after(exc))
    if (
        isinstance(exc, openai.APIStatusError)
        and provider.wrapped_schema_refusals
        and _rejects_response_format(exc)
    ):
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


def _error_code(exc: openai.APIError) -> str | None:
    code = getattr(exc, "code", None)
    if code is None and isinstance(exc.body, dict):
        inner = exc.body.get("error", exc.body)
        code = inner.get("code") if isinstance(inner, dict) else None
    return str(code) if code is not None else None


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


def _rejects_response_format(exc: openai.APIStatusError) -> bool:
    """A 422, or a 500 that is a request validation error naming ``response_format``."""
    if exc.status_code not in (422, 500):
        return False
    text = str(exc).lower()
    return "response_format" in text and ("validation" in text or "literal" in text)


_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def status_error(response: httpx.Response) -> openai.APIStatusError:
    """The SDK's exception for an error response read below the SDK (RAGAS's requests), so that
    the one ``classify`` judges it. ``response`` must have been read."""
    body: Any = None
    message = response.text[:2000]
    with contextlib.suppress(ValueError):
        body = response.json()
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            message = inner["message"]
        body = inner
    status = response.status_code
    error_class = _STATUS_ERRORS.get(status) or (
        openai.InternalServerError if status >= 500 else openai.APIStatusError
    )
    return error_class(f"Error code: {status} - {message}", response=response, body=body)
