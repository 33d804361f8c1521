"""High-severity heuristics must not cry wolf on real, good answers.

The shipped corpus (``tests/data/false_alarm_sample.jsonl``, see its README for sources and
licences) holds the hard cases among the public labelled sets' good answers: digit runs, years,
addresses, URLs, self-reference phrases, and Wikipedia contexts with year ranges. When the full
sets are beside the checkout (``../shared/data``), ``bench/false_alarms.py`` runs on them too and
every high-severity check must fire on fewer than 0.5 % of the good answers.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from evaluator.evaluators import heuristic_evaluators, run_evaluator
from evaluator.evaluators.pii import redact_pii
from evaluator.models import Severity, Trace
from evaluator.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "false_alarm_sample.jsonl"
SHARED_DATA = ROOT.parent / "shared" / "data"
TARGET = 0.005


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "false_alarms", ROOT / "bench" / "false_alarms.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("false_alarms", module)
    spec.loader.exec_module(module)
    return module


def _rows() -> list[dict[str, object]]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line]


def _trace(row: dict[str, object]) -> Trace:
    contexts = [str(c) for c in row["contexts"]]  # type: ignore[attr-defined]
    return Trace(
        trace_id=str(row["id"]),
        input=str(row["question"]),
        output=str(row["response"]),
        contexts=contexts,
        retrieval=bool(contexts),
    )


def test_no_high_severity_check_fires_on_the_hard_good_answers() -> None:
    rows = [r for r in _rows() if r["label"] == 1]
    assert len(rows) >= 300
    evaluators = heuristic_evaluators(Settings())
    fired: dict[str, list[str]] = {}
    for row in rows:
        for evaluator in evaluators:
            for score in run_evaluator(evaluator, _trace(row)):
                high = score.severity in (Severity.HIGH, Severity.CRITICAL)
                if high and score.passed is False:
                    fired.setdefault(score.name, []).append(f"{row['id']}: {score.reason}")
    assert fired == {}


def test_redaction_leaves_real_text_without_pii_unchanged() -> None:
    # Wikipedia paragraphs with year ranges ("Audioslave (2001-2007)"), answers full of numbers.
    texts = [str(c) for r in _rows() for c in r["contexts"]]  # type: ignore[attr-defined]
    texts += [str(r["response"]) for r in _rows() if r["label"] == 1]
    changed = [t[:80] for t in texts if redact_pii(t) != t and "@" not in t]
    assert changed == []


def test_the_benchmark_runs_and_counts_per_file_and_label() -> None:
    bench = _bench()
    counts, checks, severities, _ = bench.run([SAMPLE], show=None)
    assert "pii_leak" in checks and severities["pii_leak"] == "high"
    assert sum(counts.answers.values()) == len(_rows())
    for check in checks:
        if severities[check] == "high":
            assert bench.pooled(counts, 1, check).fired == 0, check


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no labelled sets at {SHARED_DATA}")
def test_high_severity_checks_fire_on_under_half_a_percent_of_good_answers() -> None:
    bench = _bench()
    files = sorted(SHARED_DATA.glob("*.jsonl"))
    counts, checks, severities, _ = bench.run(files, show=None)
    rates = {
        check: bench.pooled(counts, 1, check).rate
        for check in checks
        if severities[check] in ("high", "critical")
    }
    assert rates and all(rate < TARGET for rate in rates.values()), rates
