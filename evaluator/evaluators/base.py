"""What every evaluator is, and the one place that turns its failures into data."""

from __future__ import annotations

from typing import ClassVar, Protocol

from evaluator.models import Score, ScoreStatus, ScoreType, Severity, Trace


class Evaluator(Protocol):
    """Turns a Trace into Scores. Returns [] when the check does not apply to the trace."""

    name: ClassVar[str]
    version: ClassVar[str]

    def evaluate(self, trace: Trace) -> list[Score]:
        """The scores for ``trace`` (deterministic ids via ``Score.for_trace``)."""


class CheckEvaluator:
    """Base for pass/fail checks that emit one boolean score named after the evaluator."""

    name: ClassVar[str]
    version: ClassVar[str]
    severity: ClassVar[Severity] = Severity.LOW

    def result(self, trace: Trace, passed: bool, reason: str, label: str | None = None) -> Score:
        return Score.for_trace(
            trace.trace_id,
            self.name,
            self.version,
            self.name,
            data_type=ScoreType.BOOLEAN,
            value=1.0 if passed else 0.0,
            passed=passed,
            label=label,
            severity=self.severity,
            reason=reason,
        )


def run_evaluator(evaluator: Evaluator, trace: Trace) -> list[Score]:
    """Run one evaluator; an exception becomes an error score instead of failing the batch."""
    try:
        return evaluator.evaluate(trace)
    except Exception as exc:
        return [
            Score.for_trace(
                trace.trace_id,
                evaluator.name,
                evaluator.version,
                evaluator.name,
                status=ScoreStatus.ERROR,
                reason=f"{type(exc).__name__}: {exc}"[:500],
            )
        ]
