"""Population estimates from a weighted sample: each judged trace counts 1 / its inclusion
probability, so strata sampled at 100 % (errors, negative feedback, ...) do not drown the
control stratum sampled at 10 %.

``hajek`` is the ratio estimator Σ y/π ÷ Σ 1/π (Horvitz-Thompson totals divided by the estimated
population size), with the usual linearised variance for Poisson sampling; ``unweighted`` is the
plain mean beside it, to show what ignoring the design would report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int  # sampled observations
    population: float  # Σ 1/π: the number of traces the sample stands for

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


def hajek(values: Sequence[float], probabilities: Sequence[float], z: float = Z_95) -> Estimate:
    """Weighted mean of ``values`` (pass = 1.0 for rates) with a ``z`` confidence interval."""
    if len(values) != len(probabilities):
        raise ValueError("one inclusion probability per value")
    if not values:
        return Estimate(math.nan, math.nan, math.nan, 0, 0.0)
    if any(not 0 < p <= 1 for p in probabilities):
        raise ValueError("inclusion probabilities must be in (0, 1]")
    weights = [1.0 / p for p in probabilities]
    total = sum(weights)
    mean = sum(w * y for w, y in zip(weights, values, strict=True)) / total
    n = len(values)
    # Linearisation: Var(ŷ) ≈ n/(n-1) Σ w²(y - ŷ)² / (Σw)²
    residual = sum(w * w * (y - mean) ** 2 for w, y in zip(weights, values, strict=True))
    variance = residual / total**2 * (n / (n - 1) if n > 1 else 1.0)
    half = z * math.sqrt(variance)
    return Estimate(mean, mean - half, mean + half, n, total)


def unweighted(values: Sequence[float], z: float = Z_95) -> Estimate:
    return hajek(values, [1.0] * len(values), z)


@dataclass(frozen=True)
class ScoreEstimate:
    evaluator: str
    name: str
    statistic: str  # "pass_rate" or "mean"
    weighted: Estimate
    plain: Estimate


def score_estimates(
    rows: Sequence[tuple[str, str, float | None, bool | None, float | None]],
) -> list[ScoreEstimate]:
    """Per (evaluator, score): weighted and plain pass rate and mean, from rows of (evaluator,
    name, value, passed, inclusion probability; None reads as 1)."""
    groups: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}
    for evaluator, name, value, passed, probability in rows:
        p = probability or 1.0
        for statistic, y in (("pass_rate", passed), ("mean", value)):
            if y is None:
                continue
            values, probabilities = groups.setdefault((evaluator, name, statistic), ([], []))
            values.append(float(y))
            probabilities.append(p)
    return [
        ScoreEstimate(evaluator, name, statistic, hajek(values, ps), unweighted(values))
        for (evaluator, name, statistic), (values, ps) in sorted(groups.items())
    ]
