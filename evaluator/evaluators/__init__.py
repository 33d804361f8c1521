"""Evaluators: plain code that turns a Trace into Scores. Adding one is a file plus a line here."""

from __future__ import annotations

from evaluator.evaluators.base import CheckEvaluator, Evaluator, run_evaluator
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
from evaluator.models import Score, Trace
from evaluator.settings import Settings


def heuristic_evaluators(settings: Settings) -> list[Evaluator]:
    """The heuristics that run on every trace, configured from settings."""
    return [
        LengthBounds(min_chars=settings.min_output_chars, max_chars=settings.max_output_chars),
        AISelfReference(),
        UnsupportedURLs(),
        Refusal(),
        FinishReason(),
        JSONValidity(),
        PIILeak(),
        ForbiddenPhrases(phrases=settings.forbidden_phrases),
        RAGNoContext(),
    ]


def evaluate_all(evaluators: list[Evaluator], trace: Trace) -> list[Score]:
    return [score for e in evaluators for score in run_evaluator(e, trace)]


__all__ = [
    "CheckEvaluator",
    "Evaluator",
    "evaluate_all",
    "heuristic_evaluators",
    "run_evaluator",
]
