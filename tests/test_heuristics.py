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
from evaluator.evaluators.pii import detect_pii, find_pii, luhn_valid, redact_pii
from evaluator.models import Score, ScoreStatus, Severity, Trace
from evaluator.review.routing import ReviewRouter
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
        ("My training data ends in 2023.", False),
        ("I\u2019m an AI assistant.", False),
        ("Sure. As an AI language model, it is not ethical to do that.", False),
        # "as an AI ..." without a first-person word in its sentence is about something else
        ("Tools such as an AI assistant can draft replies. I recommend one.", True),
        ("It works as a language model for your search index.", True),
    ],
)
def test_ai_self_reference(output: str, passed: bool) -> None:
    assert one(AISelfReference().evaluate(make_trace(1, output=output))).passed is passed


def test_ai_self_reference_never_routes_by_itself() -> None:
    score = one(AISelfReference().evaluate(make_trace(1, output="As an AI, I can't say.")))
    assert score.passed is False
    assert score.severity is Severity.LOW
    assert ReviewRouter().failing(score) is None


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


def test_unsupported_urls_needs_sources_to_check_against() -> None:
    # Without retrieval or contexts a real link (a CDN, git-scm.com) cannot be told from a
    # fabricated one: the check does not apply.
    real = make_trace(
        1, retrieval=False, contexts=[], output="Get it at https://git-scm.com/download/win."
    )
    assert UnsupportedURLs().evaluate(real) == []
    # A RAG flow whose retrieval returned nothing: its links are unsupported.
    empty_rag = make_trace(2, retrieval=True, contexts=[], output="See https://made-up.example/x")
    assert one(UnsupportedURLs().evaluate(empty_rag)).passed is False


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
    text = "mail bob@fjordlab.dk, call +1 415 555 2671, card 4539148803436467"
    assert sorted(k for k, _ in find_pii(text)) == ["card", "email", "phone"]
    assert find_pii("order 1234 5678 9012 3456 shipped in 2026") == []  # fails Luhn, not a phone
    # Documentation placeholders are found but are not personal data.
    placeholders = "mail bob@corp.example, call +1 415 555 0132, card 4111111111111111"
    assert sorted(m.kind for m in detect_pii(placeholders)) == ["card", "email", "phone"]
    assert find_pii(placeholders) == []


def test_redact_pii() -> None:
    text = "Mail bob@corp.example or call +1 415 555 0132; card 4111 1111 1111 1111, order 12345."
    assert redact_pii(text) == "Mail [EMAIL] or call [PHONE]; card [CARD], order 12345."
    assert redact_pii("Audioslave (2001-2007)") == "Audioslave (2001-2007)"


def test_pii_leak_flags_pii_from_contexts_without_echoing_values() -> None:
    trace = make_trace(
        1,
        contexts=["Customer maria@fjordlab.dk paid with 4539 1488 0343 6467"],
        output="Ask maria@fjordlab.dk, she paid with 4539 1488 0343 6467.",
    )
    score = one(PIILeak().evaluate(trace))
    assert score.passed is False
    assert score.reason == "PII in answer: card x1, email x1"
    assert "maria" not in score.reason and "4539" not in score.reason


def test_pii_leak_allows_users_own_data_echoed() -> None:
    trace = make_trace(
        1, input="My email is me@fjordlab.dk", output="We'll write to me@fjordlab.dk."
    )
    assert one(PIILeak().evaluate(trace)).passed is True


def test_pii_leak_ignores_documentation_placeholders() -> None:
    trace = make_trace(1, output='email = "user@example.com"  # or call 555-0100, (415) 555-0199')
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
