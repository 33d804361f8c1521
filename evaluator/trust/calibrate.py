"""Calibration: how well a judge agrees with the humans of its golden set, and the CI gate.

``calibrate`` runs the judge over every example (concurrently, through the fleet's rate limiter)
and compares its verdict — fail when any thresholded score fails, as in review routing — with
the human verdict: accuracy, precision / recall / F1 of the fail class, Cohen's kappa, Spearman
between the judge's and the humans' numeric field scores, the confusion matrix, and every
disagreement with the judge's reasoning. Judge calls that end in error are counted and left out
of the agreement figures (an outage must not read as a bad judge); examples the judge does not
apply to (its ``applies_when``) are not judged, as in production, and are counted.

Beside the judge the report fits trivial baselines on the same examples — the best single
threshold on answer length, and on word overlap between the answer and its contexts or
reference — with the same metrics and their ROC-AUC: public sets have shortcuts (on HaluEval-QA
length alone reaches AUC 0.975), and a judge that does not beat them has shown no skill there.

A pairwise judge (its examples carry ``metadata.response_b``) is calibrated on both orders of
every pair (``trust/pairwise.py``: ``both_orders`` adds an order the set lacks; ``subsample``
keeps pairs whole): the report's ``position`` says how often its verdict followed the position
rather than the answer, and its baselines include "prefer the longer answer".

A run against a protocol peer (a test model, ``not_judgements``) is labelled so in the report:
its figures test the plumbing, they say nothing of a judge.
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evaluator.judging.files import JudgeSpec, load_judge
from evaluator.judging.runtime import run_judgements
from evaluator.models import Score, ScoreStatus, Trace, Verdict
from evaluator.settings import Settings
from evaluator.trust.golden import GoldenExample, read_golden
from evaluator.trust.pairwise import (
    PositionBias,
    both_orders,
    is_pairwise,
    length_difference,
    pair_of,
    position_bias,
)

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


def auc(values: Sequence[float], fails: Sequence[bool]) -> float | None:
    """ROC-AUC of ``values`` for the fail class (P(a fail's value > a pass's), ties half:
    Mann-Whitney U from average ranks); None without both classes."""
    n_fail = sum(fails)
    n_pass = len(fails) - n_fail
    if len(values) != len(fails) or not n_fail or not n_pass:
        return None
    ranks = _ranks(values)
    rank_sum = sum(r for r, fail in zip(ranks, fails, strict=True) if fail)
    return (rank_sum - n_fail * (n_fail + 1) / 2) / (n_fail * n_pass)


@dataclass
class Baseline:
    """A one-feature rule fitted on the labels themselves: the bar a judge must clear."""

    feature: str
    rule: str  # e.g. "fail when answer length > 57.5"
    auc: float  # of the feature, either direction (>= 0.5): how well it separates the classes
    agreement: Agreement


_WORD = re.compile(r"\w+")


def _answer_length(trace: Trace) -> float:
    return float(len(trace.output))


def _overlap(trace: Trace) -> float:
    """Share of the answer's words that appear in its contexts or reference."""
    words = _WORD.findall(trace.output.lower())
    support = set(_WORD.findall(" ".join([*trace.contexts, trace.reference or ""]).lower()))
    return sum(w in support for w in words) / len(words) if words else 0.0


def _best_threshold(
    values: Sequence[float], humans: Sequence[Verdict]
) -> tuple[float, bool, list[Verdict]]:
    """(threshold, fail_above, verdicts) of the single threshold that agrees most with the
    humans: one pass over the values in order, counting the fails and passes below each cut."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    total_fail = sum(h is FAIL for h in humans)
    total_pass = len(humans) - total_fail
    # Cut below everything: all above (fail_above: every example fails, else every one passes).
    best = (max(total_fail, total_pass), -math.inf, total_fail >= total_pass)
    fail_below = pass_below = 0
    for position, index in enumerate(order):
        fail_below += humans[index] is FAIL
        pass_below += humans[index] is PASS
        following = order[position + 1] if position + 1 < len(order) else None
        if following is not None and values[following] == values[index]:
            continue  # a cut between equal values does not exist
        cut = values[index] if following is None else (values[index] + values[following]) / 2
        right_if_fail_above = pass_below + (total_fail - fail_below)  # fail when value > cut
        right_if_fail_below = fail_below + (total_pass - pass_below)  # fail when value <= cut
        for correct, fail_above in ((right_if_fail_above, True), (right_if_fail_below, False)):
            if correct > best[0]:
                best = (correct, cut, fail_above)
    _, cut, fail_above = best
    verdicts = [FAIL if (v > cut) == fail_above else PASS for v in values]
    return cut, fail_above, verdicts


def baselines(examples: Sequence[GoldenExample]) -> list[Baseline]:
    """The best single-threshold rule on answer length and, when the examples carry contexts
    or references, on word overlap with them; none without both human classes."""
    humans = [e.verdict for e in examples]
    fails = [h is FAIL for h in humans]
    features: list[tuple[str, str, Callable[[Trace], float]]] = [
        ("answer length", "answer length (characters)", _answer_length)
    ]
    if any(e.trace.contexts or e.trace.reference for e in examples):
        features.append(("overlap", "word overlap with contexts/reference", _overlap))
    if any(is_pairwise(e) for e in examples):
        features.append(("length A - B", "prefer the longer answer", length_difference))
    found = []
    for short, feature, measure in features:
        values = [measure(e.trace) for e in examples]
        separation = auc(values, fails)
        if separation is None:
            return []
        cut, fail_above, verdicts = _best_threshold(values, humans)
        if math.isinf(cut):
            rule = f"every example {'fails' if fail_above else 'passes'}"
        else:
            rule = f"fail when {short} {'>' if fail_above else '<='} {cut:.3g}"
        found.append(
            Baseline(
                feature,
                rule,
                max(separation, 1 - separation),
                agreement(list(zip(humans, verdicts, strict=True))),
            )
        )
    return found


def subsample(examples: Sequence[GoldenExample], limit: int) -> list[GoldenExample]:
    """At most ``limit`` examples, taken in turn from each (dataset, human verdict) group in
    file order, so every source and both classes stay represented (a quick or CI run). The
    two orders of a pair count as one choice and stay together."""
    orders: dict[str, list[GoldenExample]] = {}
    for example in examples:
        key = pair_of(example) if is_pairwise(example) else example.trace.trace_id
        orders.setdefault(key, []).append(example)
    groups: dict[tuple[str, str], list[list[GoldenExample]]] = {}
    for together in orders.values():
        first = together[0]
        groups.setdefault((first.dataset, first.verdict.value), []).append(together)
    queues = [groups[key] for key in sorted(groups)]
    chosen: list[GoldenExample] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(chosen) + len(queue[depth]) <= limit:
                chosen += queue[depth]
        depth += 1
    return chosen


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
    # Examples the judge does not apply to (not judged, as in production): reason -> count.
    not_applicable: dict[str, int] = field(default_factory=dict)
    baselines: list[Baseline] = field(default_factory=list)
    # ROC-AUC of each numeric judge score for the human verdict (a low score = fail).
    score_auc: dict[str, float | None] = field(default_factory=dict)
    # Agreement per source dataset (example.dataset), when the golden set mixes several, and
    # the best baseline fitted on that source alone: mixing sources hides a source's shortcut.
    by_source: dict[str, Agreement] = field(default_factory=dict)
    source_baselines: dict[str, Baseline] = field(default_factory=dict)
    position: PositionBias | None = None
    # Why these scores are not judgements (the endpoint is a protocol peer, e.g. a test model),
    # or None: a real judge model's run.
    not_judgements: str | None = None

    @property
    def best_baseline(self) -> Baseline | None:
        return max(self.baselines, key=_strength, default=None)

    @property
    def beats_baseline(self) -> bool | None:
        """Whether the judge agrees with the humans better than every trivial baseline (kappa,
        or accuracy where kappa is undefined), on the whole set and on each source; None
        without a baseline."""
        best = self.best_baseline
        if best is None:
            return None
        return _strength(self.agreement) > _strength(best) and all(
            _strength(self.by_source[name]) > _strength(b)
            for name, b in self.source_baselines.items()
        )

    def baseline_warnings(self) -> list[str]:
        """One line per set (the whole, then each source) where the judge does no better than
        a one-feature rule."""
        sets = [("this set", self.agreement, self.best_baseline)] + [
            (f"source {name}", self.by_source[name], b) for name, b in self.source_baselines.items()
        ]
        return [
            f"on {where} the judge does not beat a trivial baseline: {best.rule} ({best.feature},"
            f" fitted on these labels, ROC-AUC {best.auc:.3f}) agrees {best.agreement.accuracy:.1%}"
            f", kappa {_fmt(best.agreement.kappa)}, vs the judge's {judge.accuracy:.1%}, kappa "
            f"{_fmt(judge.kappa)}: it has shown no skill there beyond that rule"
            for where, judge, best in sets
            if best is not None and _strength(judge) <= _strength(best)
        ]

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
        data = {**asdict(self), "passed": self.passed, "beats_baseline": self.beats_baseline}
        if self.position is not None:
            data["position"]["follows_position"] = self.position.follows_position
        data["judgements"] = self.not_judgements is None
        return data


def _strength(result: Agreement | Baseline) -> tuple[float, float]:
    a = result.agreement if isinstance(result, Baseline) else result
    return (a.kappa if a.kappa is not None else -math.inf, a.accuracy)


def report_for(
    spec: JudgeSpec,
    examples: Sequence[GoldenExample],
    results: Sequence[list[Score]],
    not_applicable: Mapping[str, int] | None = None,
) -> CalibrationReport:
    pairs: list[tuple[Verdict, Verdict]] = []
    weights: list[float] = []
    numeric: dict[str, tuple[list[float], list[float]]] = {}
    judged: list[tuple[GoldenExample, Verdict]] = []
    by_score: dict[str, tuple[list[float], list[bool]]] = {}  # judge score -> (-value, fail)
    disagreements = []
    errors = 0
    for example, scores in zip(examples, results, strict=True):
        verdict = judge_verdict(scores)
        if verdict is None:
            errors += 1
            continue
        pairs.append((example.verdict, verdict))
        judged.append((example, verdict))
        weights.append(1.0 / (example.inclusion_probability or 1.0))
        for score in scores:
            if score.value is not None:
                values, fails = by_score.setdefault(score.name, ([], []))
                values.append(-score.value)  # a low score should mean fail
                fails.append(example.verdict is FAIL)
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
        not_applicable=dict(sorted((not_applicable or {}).items())),
        # Fitted on the examples the judge was scored on, so both face the same set.
        baselines=baselines([example for example, _ in judged]),
        score_auc={name: auc(values, fails) for name, (values, fails) in sorted(by_score.items())},
        **_by_source(judged),
        position=position_bias(judged),
    )


def _by_source(judged: Sequence[tuple[GoldenExample, Verdict]]) -> dict[str, Any]:
    """``by_source`` and ``source_baselines`` of the report (empty for a single source)."""
    groups: dict[str, list[tuple[GoldenExample, Verdict]]] = {}
    for example, verdict in judged:
        groups.setdefault(example.dataset, []).append((example, verdict))
    if len(groups) < 2:
        return {}
    by_source, source_baselines = {}, {}
    for name, group in sorted(groups.items()):
        by_source[name] = agreement([(e.verdict, v) for e, v in group])
        best = max(baselines([e for e, _ in group]), key=_strength, default=None)
        if best is not None:
            source_baselines[name] = best
    return {"by_source": by_source, "source_baselines": source_baselines}


def calibrate(
    spec: JudgeSpec,
    examples: Sequence[GoldenExample],
    settings: Settings,
    on_done: Callable[[], None] | None = None,
) -> CalibrationReport:
    """Run the judge over the examples it applies to and compare with the human labels (a
    pairwise judge's in both orders)."""
    applicable = []
    skipped: Counter[str] = Counter()
    for example in both_orders(examples):
        reason = spec.applies_when.why_not(example.trace)
        if reason is None:
            applicable.append(example)
        else:
            skipped[reason] += 1
    work = [(spec, example.trace) for example in applicable]
    results = asyncio.run(run_judgements(settings, list(work), on_done)) if work else []
    scores = [r.scores if not r.deferred else [] for r in results]
    return report_for(spec, applicable, scores, skipped)


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
        examples = read_golden(name, golden_dir)
        if not examples:
            raise GateError(f"judge {name} changed but it has no golden examples in {golden_dir}")
        old_report = calibrate(old, examples, settings, on_done) if old is not None else None
        results.append(
            GateResult(name, old_report, calibrate(new, examples, settings, on_done), tolerance)
        )
    return results
