"""The judges' error classifier: one verdict per kind of endpoint error, with each provider's
own rules, which the retry policy acts on (the policy itself is exercised against the
OpenAI-protocol server in test_judges.py and test_ragas.py)."""

from __future__ import annotations

import httpx
import openai
import pytest

from evaluator.judging.providers import (
    AZURE,
    GENERIC,
    GROQ,
    LLAMA_CPP,
    OPENAI,
    VLLM,
    Permanent,
    RetryAfter,
    SchemaUnsupported,
    Transient,
    Verdict,
    classify,
    provider_for,
)
from evaluator.judging.providers import status_error as error_from_response

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


def body_error(code: int, error_code: str, message: str = "nope") -> openai.APIStatusError:
    response = httpx.Response(code, request=REQUEST)
    body = {"message": message, "type": "invalid_request_error", "code": error_code}
    client = openai.OpenAI(api_key="unset", base_url="http://judge.test/v1", max_retries=0)
    error = client._make_status_error(message, body=body, response=response)
    assert isinstance(error, openai.APIStatusError)
    return error


def test_each_provider_adds_its_own_rules() -> None:
    quota = body_error(429, "insufficient_quota", "You exceeded your current quota")
    assert isinstance(classify(quota, OPENAI), Permanent)  # billing does not pass by waiting
    assert classify(quota, GENERIC) == RetryAfter(None)  # no such rule off OpenAI
    filtered = body_error(400, "content_filter", "The prompt was filtered")
    verdict = classify(filtered, AZURE)
    assert isinstance(verdict, Permanent) and "content_filter" in verdict.reason
    sampled = body_error(400, "json_validate_failed", "Failed to generate JSON")
    assert isinstance(classify(sampled, GROQ), Transient)
    assert isinstance(classify(sampled, GENERIC), Permanent)
    guided = status_error(400, "guided_json is not supported by this backend")
    assert isinstance(classify(guided, VLLM), SchemaUnsupported)
    # OpenAI's own 500s are outages even when they mention response_format.
    wrapped = status_error(500, "1 validation error: ('body', 'response_format') literal_error")
    assert isinstance(classify(wrapped, OPENAI), Transient)
    assert isinstance(classify(wrapped, VLLM), Transient)
    assert isinstance(classify(wrapped, GENERIC), SchemaUnsupported)


@pytest.mark.parametrize(
    ("base_url", "name", "expected"),
    [
        (None, None, "openai"),
        ("https://api.openai.com/v1", "auto", "openai"),
        ("https://my-res.openai.azure.com/openai/deployments/x", None, "azure"),
        ("https://api.groq.com/openai/v1", None, "groq"),
        ("http://127.0.0.1:8080/v1", None, "generic"),
        ("http://127.0.0.1:8080/v1", "llama_cpp", "llama_cpp"),
        ("https://evil-api.openai.com.example.org/v1", None, "generic"),
    ],
)
def test_provider_by_name_or_host(base_url: str | None, name: str | None, expected: str) -> None:
    assert provider_for(base_url, name).name == expected


def test_llama_cpp_starts_with_the_schema_in_json_mode_and_unknown_names_are_refused() -> None:
    assert LLAMA_CPP.first_mode == "schema_in_object" and OPENAI.first_mode == "json_schema"
    with pytest.raises(ValueError, match="unknown judge provider 'nope'; known: openai"):
        provider_for(None, "nope")


def test_an_error_read_below_the_sdk_is_classified_alike() -> None:
    for code, expected in [(429, RetryAfter), (503, Transient), (401, Permanent)]:
        response = httpx.Response(code, request=REQUEST, json={"error": {"message": "m"}})
        response.read()
        assert isinstance(classify(error_from_response(response)), expected), code
