"""The judges' error classifier: one verdict per kind of endpoint error, which the retry policy
acts on (the policy itself is exercised against the OpenAI-protocol server in test_judges.py)."""

from __future__ import annotations

import httpx
import openai
import pytest

from evaluator.judging.client import (
    Permanent,
    RetryAfter,
    SchemaUnsupported,
    Transient,
    Verdict,
    classify,
)

REQUEST = httpx.Request("POST", "http://judge.test/v1/chat/completions")


def status_error(code: int, message: str = "nope", **headers: str) -> openai.APIStatusError:
    response = httpx.Response(code, request=REQUEST, headers=headers)
    # The SDK's own mapping from a status to its exception class.
    client = openai.OpenAI(api_key="unset", base_url="http://judge.test/v1", max_retries=0)
    error = client._make_status_error(message, body=None, response=response)
    assert isinstance(error, openai.APIStatusError)
    return error


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (status_error(429, **{"retry-after": "2"}), RetryAfter(2.0)),
        (status_error(429, **{"retry-after-ms": "250"}), RetryAfter(0.25)),
        (status_error(429), RetryAfter(None)),
        (status_error(429, **{"retry-after": "Wed, 21 Oct 2015"}), RetryAfter(None)),
        (status_error(401, "bad key"), Permanent("judge request failed: 401 bad key")),
        (status_error(404, "no such model"), Permanent("judge request failed: 404 no such model")),
        (status_error(400, "bad"), Permanent("judge request rejected: 400 bad")),
        (
            status_error(400, "response_format json_schema is not supported"),
            SchemaUnsupported(
                "judge request rejected: 400 response_format json_schema is not supported"
            ),
        ),
    ],
)
def test_status_errors(error: openai.APIStatusError, verdict: Verdict) -> None:
    assert classify(error) == verdict


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_server_errors_are_transient(code: int) -> None:
    verdict = classify(status_error(code, "down"))
    assert isinstance(verdict, Transient) and verdict.reason == "InternalServerError: down"


def test_a_validation_error_about_response_format_is_no_outage() -> None:
    # llama-cpp-python's answer to json_schema: its request validation wrapped in a 500.
    refused = "1 validation error: ('body', 'response_format', 'type') literal_error"
    for code in (500, 422):
        verdict = classify(status_error(code, refused))
        assert isinstance(verdict, SchemaUnsupported), (code, verdict)
    # A 500 that only mentions response_format in passing is still an outage.
    verdict = classify(status_error(500, "upstream failed while applying response_format"))
    assert isinstance(verdict, Transient)


def test_transport_errors_are_transient() -> None:
    timeout = classify(openai.APITimeoutError(request=REQUEST))
    refused = classify(openai.APIConnectionError(message="refused", request=REQUEST))
    assert timeout == Transient("APITimeoutError: Request timed out.")
    assert refused == Transient("APIConnectionError: refused")


def test_reasons_are_bounded() -> None:
    verdict = classify(status_error(403, "x" * 5000))
    assert isinstance(verdict, Permanent) and len(verdict.reason) == 500
