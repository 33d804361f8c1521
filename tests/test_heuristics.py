"""Each heuristic: one case that must pass, one that must fail, and when it does not apply."""

from __future__ import annotations

import json

import pytest
from helpers import make_trace

from evaluator.evaluators import evaluate_all, heuristic_evaluators, run_evaluator
from evaluator.evaluators.heuristics import (
    AISelfReference,
    FinishReason,
    ForbiddenPhrases,
    JSONValidity,
    LengthBounds,
    PIILeak,
    RAGNoContext,
    Refusal,
    UnsupportedURLs,
)
from evaluator.models import Score, ScoreStatus, Trace
from evaluator.pii import find_pii, luhn_valid, redact_pii
from evaluator.settings import Settings


def one(scores: list[Score]) -> Score:
    assert len(scores) == 1, scores
    return scores[0]


@pytest.mark.parametrize(
    ("output", "passed"),
    [("Fine answer.", True), ("", False), ("   ", False), ("x" * 101, False)],
)
def test_length_bounds(output: str, passed: bool) -> None:
    score = one(LengthBounds(min_chars=1, max_chars=100).evaluate(make_trace(1, output=output)))
    assert score.passed is passed
    assert score.value == (1.0 if passed else 0.0)


@pytest.mark.parametrize(
    ("output", "passed"),
    [
        ("As an AI language model, I cannot browse.", False),
        ("I'm just an AI, but here is the answer.", False),
        ("As   a large language model I think so.", False),
        ("Our AI features are on the Pro plan.", True),
        ("Rotate the key in Settings.", True),
    ],
)
def test_ai_self_reference(output: str, passed: bool) -> None:
    assert one(AISelfReference().evaluate(make_trace(1, output=output))).passed is passed


def test_unsupported_urls_flags_only_urls_missing_from_sources() -> None:
    trace = make_trace(
        1,
        input="see https://example.com/question",
        contexts=["Docs: https://docs.example.com/keys."],
        output="Read https://docs.example.com/keys/ and https://example.com/question, "
        "then https://made-up.example/page.",
    )
    score = one(UnsupportedURLs().evaluate(trace))
    assert score.passed is False
    assert "made-up.example/page" in score.reason
    assert "docs.example.com" not in score.reason


def test_unsupported_urls_passes_without_urls_or_with_known_ones() -> None:
    assert one(UnsupportedURLs().evaluate(make_trace(1))).passed is True
    grounded = make_trace(
        2, contexts=["See https://a.example/x"], output="See https://a.example/x."
    )
    assert one(UnsupportedURLs().evaluate(grounded)).passed is True


@pytest.mark.parametrize(
    ("output", "passed"),
    [
        ("I'm sorry, but I can't help with that.", False),
        ("I can\u2019t assist with bypassing the license check.", False),
        ("Unfortunately, I am unable to share that.", False),
        ("I must decline to answer.", False),
        ("Sorry for the wait! Here is how to rotate the key.", True),
        ("You can't rotate keys on the free plan; upgrade first.", True),
    ],
)
def test_refusal(output: str, passed: bool) -> None:
    assert one(Refusal().evaluate(make_trace(1, output=output))).passed is passed


@pytest.mark.parametrize(
    ("finish", "passed"),
    [("stop", True), ("tool_calls", True), ("length", False), ("content_filter", False)],
)
def test_finish_reason(finish: str, passed: bool) -> None:
    score = one(FinishReason().evaluate(make_trace(1, finish_reason=finish)))
    assert score.passed is passed
    assert score.label == finish


def test_finish_reason_absent_is_not_applicable() -> None:
    assert FinishReason().evaluate(make_trace(1, finish_reason=None)) == []


SCHEMA = {
    "type": "object",
    "required": ["seats"],
    "properties": {"seats": {"type": "integer"}},
}


@pytest.mark.parametrize(
    ("fields", "passed", "reason_part"),
    [
        ({"output_format": "json", "output": '{"a": 1}'}, True, "valid JSON"),
        ({"output_format": "json", "output": '{"a": 1'}, False, "not JSON"),
        ({"output_schema": SCHEMA, "output": '{"seats": 3}'}, True, "matching"),
        ({"output_schema": SCHEMA, "output": '{"seats": "3"}'}, False, "seats"),
        ({"output_schema": SCHEMA, "output": "{}"}, False, "required"),
        (
            {"output_schema": {"type": "nonsense"}, "output": "{}"},
            False,
            "output_schema is invalid",
        ),
    ],
)
def test_json_validity(fields: dict[str, object], passed: bool, reason_part: str) -> None:
    score = one(JSONValidity().evaluate(make_trace(1, **fields)))
    assert score.passed is passed
    assert reason_part in score.reason


def test_json_validity_not_applicable_to_text() -> None:
    assert JSONValidity().evaluate(make_trace(1, output="{not json")) == []


def test_luhn() -> None:
    assert luhn_valid("4111 1111 1111 1111")
    assert luhn_valid("4539-1488-0343-6467")
    assert not luhn_valid("4111 1111 1111 1112")
    assert not luhn_valid("1234")


def test_find_pii_kinds() -> None:
    kinds = sorted(
        k for k, _ in find_pii("mail bob@corp.example, call +1 415 555 0132, card 4111111111111111")
    )
    assert kinds == ["card", "email", "phone"]
    assert find_pii("order 1234 5678 9012 3456 shipped in 2026") == []  # fails Luhn, not a phone


def test_redact_pii() -> None:
    text = "Mail bob@corp.example or call +1 415 555 0132; card 4111 1111 1111 1111, order 12345."
    assert redact_pii(text) == "Mail [EMAIL] or call [PHONE]; card [CARD], order 12345."


def test_pii_leak_flags_pii_from_contexts_without_echoing_values() -> None:
    trace = make_trace(
        1,
        contexts=["Customer maria@fjord.example paid with 4539 1488 0343 6467"],
        output="Ask maria@fjord.example, she paid with 4539 1488 0343 6467.",
    )
    score = one(PIILeak().evaluate(trace))
    assert score.passed is False
    assert score.reason == "PII in answer: card x1, email x1"
    assert "maria" not in score.reason and "4539" not in score.reason


def test_pii_leak_allows_users_own_data_echoed() -> None:
    trace = make_trace(
        1, input="My email is me@home.example", output="We'll write to me@home.example."
    )
    assert one(PIILeak().evaluate(trace)).passed is True


def test_forbidden_phrases() -> None:
    evaluator = ForbiddenPhrases(phrases=["guaranteed refund", "CompetitorCo"])
    failing = one(
        evaluator.evaluate(
            make_trace(1, output="You get a Guaranteed  refund, unlike competitorco.")
        )
    )
    assert failing.passed is False
    assert failing.reason == "forbidden phrase(s): competitorco, guaranteed  refund"
    assert one(evaluator.evaluate(make_trace(2))).passed is True
    assert ForbiddenPhrases(phrases=[]).evaluate(make_trace(3)) == []


def test_rag_no_context() -> None:
    assert one(RAGNoContext().evaluate(make_trace(1, contexts=[]))).passed is False
    assert one(RAGNoContext().evaluate(make_trace(2))).passed is True
    assert RAGNoContext().evaluate(make_trace(3, retrieval=False, contexts=[])) == []


def test_score_ids_are_deterministic_and_distinct() -> None:
    evaluators = heuristic_evaluators(Settings(forbidden_phrases=["x-forbidden"]))
    first = evaluate_all(evaluators, make_trace(1))
    again = evaluate_all(evaluators, make_trace(1))
    other = evaluate_all(evaluators, make_trace(2))
    assert [s.id for s in first] == [s.id for s in again]
    assert len({s.id for s in first + other}) == len(first) + len(other)
    assert len(first) == 8  # JSON validity does not apply to a text trace


class Exploding:
    name = "exploding"
    version = "0.1.0"

    def evaluate(self, trace: Trace) -> list[Score]:
        raise RuntimeError("bug in evaluator")


def test_a_crashing_evaluator_becomes_an_error_score() -> None:
    score = one(run_evaluator(Exploding(), make_trace(1)))
    assert score.status is ScoreStatus.ERROR
    assert score.reason == "RuntimeError: bug in evaluator"
    assert score.passed is None
    assert json.loads(score.model_dump_json())["status"] == "error"
