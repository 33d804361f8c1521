"""Evaluators: plain code that turns a Trace into Scores. Adding one is a file plus a line here."""

from __future__ import annotations

from evaluator.evaluators.base import CheckEvaluator, Evaluator, run_evaluator, run_evaluators
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
from evaluator.evaluators.schema_guard import SchemaLimits
from evaluator.evaluators.trajectory import TRAJECTORY_HEURISTICS
from evaluator.models import Score, Trace
from evaluator.settings import HeuristicsSettings


def heuristic_evaluators(settings: HeuristicsSettings) -> list[Evaluator]:
    """The heuristics that run on every trace, configured from settings."""
    return [
        LengthBounds(min_chars=settings.min_output_chars, max_chars=settings.max_output_chars),
        AISelfReference(),
        UnsupportedURLs(),
        Refusal(),
        FinishReason(),
        JSONValidity(
            limits=SchemaLimits(
                max_bytes=settings.json_schema_max_bytes,
                max_depth=settings.json_schema_max_depth,
                max_nodes=settings.json_schema_max_nodes,
                max_output_depth=settings.json_max_output_depth,
                max_regex_cost=settings.json_regex_max_cost,
            )
        ),
        PIILeak(),
        ForbiddenPhrases(phrases=settings.forbidden_phrases),
        RAGNoContext(),
        *(check() for check in TRAJECTORY_HEURISTICS),  # silent on traces without steps
    ]


def evaluate_all(
    evaluators: list[Evaluator], trace: Trace, budget_s: float | None = None
) -> list[Score]:
    """Every evaluator's scores for ``trace``; each runs within its time budget (default
    ``EVALFLEET_EVALUATOR_BUDGET_S``) and a failing one becomes an error score."""
    return run_evaluators(evaluators, trace, budget_s)


__all__ = [
    "CheckEvaluator",
    "Evaluator",
    "evaluate_all",
    "heuristic_evaluators",
    "run_evaluator",
    "run_evaluators",
]
