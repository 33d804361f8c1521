"""Calibration: how well a judge agrees with the humans of its golden set, and the CI gate.

``calibrate`` runs the judge over every example (concurrently, through the fleet's rate limiter)
and compares its verdict — fail when any thresholded score fails, as in review routing — with
the human verdict: accuracy, precision / recall / F1 of the fail class, Cohen's kappa, Spearman
between the judge's and the humans' numeric field scores, the confusion matrix, and every
disagreement with the judge's reasoning. Judge calls that end in error are counted and left out
of the agreement figures (an outage must not read as a bad judge).
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evaluator.evaluators.judge import run_judgements
from evaluator.golden import GoldenExample, golden_path, read_examples
from evaluator.judges import JudgeSpec, load_judge
from evaluator.models import Score, ScoreStatus, Verdict
from evaluator.settings import Settings

PASS, FAIL = Verdict.PASS, Verdict.FAIL


@dataclass
class Agreement:
    n: int
    accuracy: float
    precision_fail: float | None
    recall_fail: float | None
    f1_fail: float | None
    kappa: float | None
    # confusion[human][judge] = count
    confusion: dict[str, dict[str, int]]


def agreement(
    pairs: Sequence[tuple[Verdict, Verdict]], weights: Sequence[float] | None = None
) -> Agreement:
    """Agreement of (human, judge) verdict pairs; the fail class is the positive one. With
    ``weights`` (1 / inclusion probability) every rate is a population estimate; ``n`` and the
    confusion matrix stay counts of examples."""
    counts = {h.value: {j.value: 0 for j in (PASS, FAIL)} for h in (PASS, FAIL)}
    weighted = {h.value: {j.value: 0.0 for j in (PASS, FAIL)} for h in (PASS, FAIL)}
    for (human, judge), w in zip(pairs, weights or [1.0] * len(pairs), strict=True):
        counts[human.value][judge.value] += 1
        weighted[human.value][judge.value] += w
    tp, fn = weighted["fail"]["fail"], weighted["fail"]["pass"]
    fp, tn = weighted["pass"]["fail"], weighted["pass"]["pass"]
    total = tp + fn + fp + tn
    result = _rates(tp, fn, fp, tn, total)
    return Agreement(len(pairs), *result, counts)


def _rates(
    tp: float, fn: float, fp: float, tn: float, n: float
) -> tuple[float, float | None, float | None, float | None, float | None]:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall
        else None
    )
    observed = (tp + tn) / n if n else 0.0
    # Chance agreement from each rater's own marginals (Cohen, 1960).
    expected = ((tp + fn) * (tp + fp) + (tn + fp) * (tn + fn)) / (n * n) if n else 0.0
    kappa = (observed - expected) / (1 - expected) if n and expected < 1 else None
    return observed, precision, recall, f1, kappa


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson on average ranks); None when undefined (n < 2, a constant)."""
    if len(xs) != len(ys) or len(xs) < 2:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else None


def judge_verdict(scores: Sequence[Score]) -> Verdict | None:
    """The judge's verdict: fail when any thresholded score failed; None for an error."""
    if not scores or any(s.status is ScoreStatus.ERROR for s in scores):
        return None
    return FAIL if any(s.passed is False for s in scores) else PASS


@dataclass
class Disagreement:
    trace_id: str
    human: str
    judge: str
    reasoning: str
    note: str


@dataclass
class CalibrationReport:
    judge: str
    version: str
    model: str
    examples: int
    errors: int
    agreement: Agreement
    spearman: dict[str, float | None]
    disagreements: list[Disagreement] = field(default_factory=list)
    # The same agreement with each example weighted by 1 / its inclusion probability (when the
    # golden set carries them): what the judge's agreement is on production traffic.
    weighted: Agreement | None = None
    min_kappa: float = 0.6
    min_agreement: float = 0.75

    @property
    def passed(self) -> bool:
        kappa = self.agreement.kappa
        return (
            self.agreement.n > 0
            and kappa is not None
            and kappa >= self.min_kappa
            and self.agreement.accuracy >= self.min_agreement
        )

    def failures(self) -> list[str]:
        problems = []
        if self.agreement.n == 0:
            problems.append("no example could be judged")
        kappa = self.agreement.kappa
        if kappa is None or kappa < self.min_kappa:
            shown = "undefined" if kappa is None else f"{kappa:.3f}"
            problems.append(f"kappa {shown} < {self.min_kappa}")
        if self.agreement.accuracy < self.min_agreement:
            problems.append(f"agreement {self.agreement.accuracy:.1%} < {self.min_agreement:.0%}")
        return problems

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def report_for(
    spec: JudgeSpec, examples: Sequence[GoldenExample], results: Sequence[list[Score]]
) -> CalibrationReport:
    pairs: list[tuple[Verdict, Verdict]] = []
    weights: list[float] = []
    numeric: dict[str, tuple[list[float], list[float]]] = {}
    disagreements = []
    errors = 0
    for example, scores in zip(examples, results, strict=True):
        verdict = judge_verdict(scores)
        if verdict is None:
            errors += 1
            continue
        pairs.append((example.verdict, verdict))
        weights.append(1.0 / (example.inclusion_probability or 1.0))
        for score in scores:
            human = example.field_scores.get(score.name)
            if score.value is not None and isinstance(human, int | float):
                xs, ys = numeric.setdefault(score.name, ([], []))
                xs.append(float(human))
                ys.append(score.value)
        if verdict is not example.verdict:
            reasoning = scores[0].reason if scores else ""
            disagreements.append(
                Disagreement(
                    example.trace.trace_id,
                    example.verdict.value,
                    verdict.value,
                    reasoning,
                    example.note,
                )
            )
    return CalibrationReport(
        judge=spec.name,
        version=spec.version,
        model=spec.model,
        examples=len(examples),
        errors=errors,
        agreement=agreement(pairs),
        spearman={name: spearman(xs, ys) for name, (xs, ys) in sorted(numeric.items())},
        disagreements=disagreements,
        min_kappa=spec.calibration.min_kappa,
        min_agreement=spec.calibration.min_agreement,
        weighted=agreement(pairs, weights) if any(w != 1.0 for w in weights) else None,
    )


def calibrate(
    spec: JudgeSpec,
    examples: Sequence[GoldenExample],
    settings: Settings,
    on_done: Callable[[], None] | None = None,
) -> CalibrationReport:
    """Run the judge over the examples and compare with the human labels."""
    work = [(spec, example.trace) for example in examples]
    results = asyncio.run(run_judgements(settings, list(work), on_done))
    return report_for(spec, examples, [r.scores if not r.deferred else [] for r in results])


@dataclass
class GateResult:
    judge: str
    old: CalibrationReport | None
    new: CalibrationReport
    tolerance: float

    @property
    def reasons(self) -> list[str]:
        """Why the new version may not ship (empty: it may)."""
        if self.old is None:  # a new judge: it must meet its own thresholds
            return [f"new judge: {p}" for p in self.new.failures()]
        problems = []
        old_kappa, new_kappa = self.old.agreement.kappa, self.new.agreement.kappa
        if new_kappa is None or (old_kappa is not None and new_kappa < old_kappa - self.tolerance):
            problems.append(
                f"kappa fell from {_fmt(old_kappa)} to {_fmt(new_kappa)} "
                f"(tolerance {self.tolerance})"
            )
        if self.new.agreement.accuracy < self.old.agreement.accuracy - self.tolerance:
            problems.append(
                f"agreement fell from {self.old.agreement.accuracy:.1%} to "
                f"{self.new.agreement.accuracy:.1%} (tolerance {self.tolerance})"
            )
        return problems


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


class GateError(RuntimeError):
    """The gate could not run (not a git checkout, unknown revision, ...)."""


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise GateError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def changed_judges(base: str, judges_dir: Path) -> list[tuple[str, JudgeSpec | None, JudgeSpec]]:
    """(name, the version at ``base`` or None when new, the version now) per changed judge file,
    comparing ``base`` with the working tree."""
    root = Path(_git(judges_dir, "rev-parse", "--show-toplevel").strip())
    relative = judges_dir.resolve().relative_to(root.resolve())
    changed = []
    for line in _git(root, "diff", "--name-only", base, "--", str(relative)).splitlines():
        path = root / line
        if path.suffix != ".yaml" or not path.exists():
            continue  # deleted judges and the lock file are not gated
        try:
            old_text: str | None = _git(root, "show", f"{base}:{line}")
        except GateError:
            old_text = None  # the judge is new
        old = None
        if old_text is not None:
            with tempfile.TemporaryDirectory() as tmp:
                old_path = Path(tmp) / path.name
                old_path.write_text(old_text, encoding="utf-8")
                old = load_judge(old_path)
        changed.append((path.stem, old, load_judge(path)))
    return changed


def gate(
    base: str,
    settings: Settings,
    judges_dir: Path,
    golden_dir: Path,
    tolerance: float = 0.05,
    on_done: Callable[[], None] | None = None,
) -> list[GateResult]:
    """Old and new version of every changed judge over its golden set."""
    results = []
    for name, old, new in changed_judges(base, judges_dir):
        examples = read_examples(golden_path(name, golden_dir))
        if not examples:
            raise GateError(f"judge {name} changed but {golden_path(name, golden_dir)} is empty")
        old_report = calibrate(old, examples, settings, on_done) if old is not None else None
        results.append(
            GateResult(name, old_report, calibrate(new, examples, settings, on_done), tolerance)
        )
    return results
