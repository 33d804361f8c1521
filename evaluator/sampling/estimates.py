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


@dataclass(frozen=True)
class Sums:
    """What an estimate needs, summable in SQL: n, Σw, Σwy, Σw², Σw²y, Σw²y² (w = 1/π)."""

    n: int
    w: float
    wy: float
    w2: float
    w2y: float
    w2y2: float


def hajek_from_sums(sums: Sums, z: float = Z_95) -> Estimate:
    """Σwy / Σw with the linearised variance n/(n-1) · Σw²(y - ŷ)² / (Σw)², the residual sum
    expanded so it can be summed in the database."""
    if sums.n == 0 or sums.w <= 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0.0)
    mean = sums.wy / sums.w
    residual = max(0.0, sums.w2y2 - 2 * mean * sums.w2y + mean * mean * sums.w2)
    variance = residual / sums.w**2 * (sums.n / (sums.n - 1) if sums.n > 1 else 1.0)
    half = z * math.sqrt(variance)
    return Estimate(mean, mean - half, mean + half, sums.n, sums.w)


def hajek(values: Sequence[float], probabilities: Sequence[float], z: float = Z_95) -> Estimate:
    """Weighted mean of ``values`` (pass = 1.0 for rates) with a ``z`` confidence interval."""
    if len(values) != len(probabilities):
        raise ValueError("one inclusion probability per value")
    if any(not 0 < p <= 1 for p in probabilities):
        raise ValueError("inclusion probabilities must be in (0, 1]")
    weights = [1.0 / p for p in probabilities]
    pairs = list(zip(weights, values, strict=True))
    return hajek_from_sums(
        Sums(
            n=len(values),
            w=sum(weights),
            wy=sum(w * y for w, y in pairs),
            w2=sum(w * w for w in weights),
            w2y=sum(w * w * y for w, y in pairs),
            w2y2=sum(w * w * y * y for w, y in pairs),
        ),
        z,
    )


def unweighted(values: Sequence[float], z: float = Z_95) -> Estimate:
    return hajek(values, [1.0] * len(values), z)


@dataclass(frozen=True)
class ScoreEstimate:
    evaluator: str
    name: str
    statistic: str  # "pass_rate" or "mean"
    weighted: Estimate
    plain: Estimate


# (evaluator, score name, statistic, sums weighted by 1/π, the same sums with every w = 1)
ScoreSums = tuple[str, str, str, Sums, Sums]


def score_estimates(rows: Sequence[ScoreSums]) -> list[ScoreEstimate]:
    """Per (evaluator, score, statistic): the weighted and the plain estimate."""
    return [
        ScoreEstimate(evaluator, name, statistic, hajek_from_sums(w), hajek_from_sums(plain))
        for evaluator, name, statistic, w, plain in sorted(rows, key=lambda r: r[:3])
    ]
