"""Calibration metrics against hand-computed values; calibrate and the gate through the fake
OpenAI-compatible server, which plays a good or a worse judge version."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import fleet_env
from openai_server import OpenAIServer
from rich.console import Console

from evaluator.console.report import render_calibration
from evaluator.judging.files import default_judges_dir, load_judge
from evaluator.models import Score, ScoreStatus, Trace, Verdict
from evaluator.settings import Settings
from evaluator.trust.calibrate import (
    agreement,
    auc,
    baselines,
    calibrate,
    gate,
    position_bias,
    report_for,
    spearman,
    subsample,
)
from evaluator.trust.golden import GoldenExample, golden_path, read_examples, read_golden

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "datasets" / "golden"
P, F = Verdict.PASS, Verdict.FAIL


def test_agreement_on_a_known_confusion_matrix() -> None:
    # humans fail 10 (judge: 8 fail, 2 pass), humans pass 10 (judge: 1 fail, 9 pass)
    pairs = [(F, F)] * 8 + [(F, P)] * 2 + [(P, F)] * 1 + [(P, P)] * 9
    a = agreement(pairs)
    assert a.n == 20 and a.accuracy == pytest.approx(0.85)
    assert a.precision_fail == pytest.approx(8 / 9) and a.recall_fail == pytest.approx(0.8)
    assert a.f1_fail == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8))
    # p_o = 0.85, p_e = (10*9 + 10*11) / 400 = 0.5  ->  kappa = 0.35 / 0.5
    assert a.kappa == pytest.approx(0.7)
    assert a.confusion == {"pass": {"pass": 9, "fail": 1}, "fail": {"pass": 2, "fail": 8}}


def test_agreement_edge_cases() -> None:
    assert agreement([(P, P)] * 5).kappa is None  # one class only: chance agreement is 1
    opposite = agreement([(P, F)] * 5 + [(F, P)] * 5)
    assert opposite.accuracy == 0 and opposite.kappa == pytest.approx(-1.0)
    assert opposite.precision_fail == 0 and opposite.f1_fail is None
    assert agreement([]).accuracy == 0.0


def test_spearman_with_ties() -> None:
    # ranks x = 1..5, y = 1, 2, 3.5, 5, 3.5: cov 8, var 10 and 9.5
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / (10 * 9.5) ** 0.5)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 1, 1]) is None and spearman([1], [1]) is None


def judge_like(examples: list[Any], flip_every: int | None) -> Any:
    """A scorer that agrees with the humans (score 0.95 / 0.1), except every ``flip_every``-th
    example for the model named "judge-worse"."""
    index = {(e.trace.input, e.trace.output): (i, e.verdict) for i, e in enumerate(examples)}

    def scorer(body: dict[str, Any]) -> float | None:
        text = "\n".join(str(m["content"]) for m in body["messages"] if m["role"] == "user")
        for (question, output), (i, verdict) in index.items():
            if question in text and output in text:
                agree = 0.95 if verdict is Verdict.PASS else 0.1
                worse = body["model"] == "judge-worse" and flip_every and i % flip_every == 0
                return (1.05 - agree) if worse else agree
        return None

    return scorer


@pytest.fixture
def settings(server: OpenAIServer, redis_url: str, redis_client: redis.Redis) -> Settings:
    return Settings(redis_url=redis_url, judge_base_url=server.base_url, judge_api_key="sk-test")  # type: ignore[arg-type]


def test_calibrate_groundedness_over_its_golden_set(
    server: OpenAIServer, settings: Settings
) -> None:
    examples = read_examples(golden_path("groundedness", GOLDEN))
    assert len(examples) == 50 and sum(e.verdict is Verdict.FAIL for e in examples) == 25
    server.fake.scorer = judge_like(examples, None)
    spec = load_judge(default_judges_dir() / "groundedness.yaml")
    done: list[int] = []
    report = calibrate(spec, examples, settings, lambda: done.append(1))
    assert len(done) == 50 and report.errors == 0
    assert report.agreement.accuracy == 1.0 and report.agreement.kappa == pytest.approx(1.0)
    assert report.passed and report.disagreements == []
    assert report.spearman["groundedness"] is not None and report.spearman["groundedness"] > 0.8
    assert report.score_auc["groundedness"] == pytest.approx(1.0)
    # the hand-written set has no one-feature shortcut this judge fails to beat
    assert report.baselines and report.beats_baseline and report.baseline_warnings() == []

    worse = spec.model_copy(update={"model": "judge-worse"})
    server.fake.scorer = judge_like(examples, 3)  # 17 of 50 flipped
    bad = calibrate(worse, examples, settings)
    assert bad.agreement.accuracy == pytest.approx(33 / 50)
    assert not bad.passed and "agreement 66.0% < 75%" in "; ".join(bad.failures())
    assert len(bad.disagreements) == 17 and bad.disagreements[0].reasoning


def test_judge_errors_are_counted_not_scored(server: OpenAIServer, settings: Settings) -> None:
    examples = read_examples(golden_path("safety", GOLDEN))[:6]
    server.fake.malformed_for = examples[2].trace.output  # that example: bad JSON, repair too
    report = calibrate(load_judge(default_judges_dir() / "safety.yaml"), examples, settings)
    assert report.errors == 1 and report.agreement.n == 5


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_gate_fails_a_worse_judge_version(
    tmp_path: Path, server: OpenAIServer, settings: Settings
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(default_judges_dir(), repo / "judges")
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "x", "--allow-empty")
    git(repo, "add", ".")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "judges")
    examples = read_golden("groundedness", GOLDEN)  # the gate reads every golden file
    assert len(examples) == 250
    server.fake.scorer = judge_like(examples, 3)
    path = repo / "judges" / "groundedness.yaml"
    text = path.read_text()

    path.write_text(
        text.replace("version: 1.1.0", "version: 1.1.1").replace(
            "max_tokens: 400", "max_tokens: 500"
        )
    )
    [same] = gate("HEAD", settings, repo / "judges", GOLDEN)
    assert same.reasons == [] and same.old is not None and same.old.version == "1.1.0"

    path.write_text(
        text.replace("version: 1.1.0", "version: 1.2.0").replace(
            "model: gpt-4o-mini", "model: judge-worse"
        )
    )
    [worse] = gate("HEAD", settings, repo / "judges", GOLDEN)
    assert worse.new.version == "1.2.0" and worse.new.model == "judge-worse"
    assert any("kappa fell from 1.000" in reason for reason in worse.reasons)
    assert gate("HEAD", settings, repo / "judges", GOLDEN, tolerance=1.0)[0].reasons == []


def test_calibrate_command_writes_the_report(
    tmp_path: Path, server: OpenAIServer, redis_url: str, sqlite_url: str
) -> None:
    golden = tmp_path / "golden"
    shutil.copytree(GOLDEN, golden)
    env = fleet_env(
        redis_url,
        sqlite_url,
        judge_base_url=server.base_url,
        judge_api_key="sk-test",
        golden_dir=golden,
    )
    report = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "evaluator.cli",
        "calibrate",
        "--judge",
        "answer_relevance",
        "--report",
        str(report),
    ]
    examples = read_examples(golden_path("answer_relevance", GOLDEN))
    server.fake.scorer = judge_like(examples, None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "answer_relevance: PASS" in done.stdout and "Cohen's kappa" in done.stdout
    data = json.loads(report.read_text())
    recorded = json.loads((golden / "answer_relevance.disagreements.json").read_text())
    assert recorded == {"judge_version": "1.1.0", "trace_ids": []}
    assert data["passed"] and data["agreement"]["n"] == 50 and data["agreement"]["kappa"] == 1.0
    no_endpoint = {k: v for k, v in env.items() if not k.startswith("EVALFLEET_JUDGE")}
    refused = subprocess.run(
        command, env=no_endpoint, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert refused.returncode == 2 and "no judge endpoint" in refused.stdout

    # Every golden file of the judge by default; --limit spreads over sources and verdicts;
    # --model calls another model with the same prompt.
    server.fake.scorer = judge_like(read_golden("groundedness", GOLDEN), None)
    grounded = tmp_path / "grounded.json"
    done = subprocess.run(
        [*command[:5], "groundedness", "--report", str(grounded), "--limit", "40",
         "--model", "judge-under-test"],
        env={**env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "golden sets: groundedness.jsonl, groundedness.halueval_qa.jsonl (250" in out
    assert "Judge vs trivial baselines" in out and "answer length (characters)" in out
    assert "Agreement per source" in out and "halueval_qa" in out and "support_desk" in out
    data = json.loads(grounded.read_text())
    assert data["model"] == "judge-under-test" and data["agreement"]["n"] == 40
    assert {b["feature"] for b in data["baselines"]} == {
        "answer length (characters)",
        "word overlap with contexts/reference",
    }
    assert data["beats_baseline"] is True  # a judge that agrees on all 40 beats them here
    assert not (golden / "groundedness.disagreements.json").exists()  # only full runs record


def test_weighted_agreement_is_the_population_estimate() -> None:
    """Ten failing traces judged in full agree; twenty passing ones sampled at 10 % stand for
    200, and the judge wrongly fails 2 of those 20: 90 % agreement on the examples, 81.8 % on
    the traffic they stand for."""
    P, F = Verdict.PASS, Verdict.FAIL
    pairs = [(F, F)] * 10 + [(P, F)] * 2 + [(P, P)] * 18
    weights = [1.0] * 10 + [10.0] * 20
    plain, weighted = agreement(pairs), agreement(pairs, weights)
    assert plain.accuracy == pytest.approx(28 / 30)
    assert weighted.accuracy == pytest.approx((10 + 180) / 210)
    assert weighted.n == 30 and weighted.confusion == plain.confusion  # still counts
    assert weighted.kappa is not None and plain.kappa is not None
    assert weighted.kappa < plain.kappa


# -- trivial baselines, applicability, position bias ---------------------------------------------


def synthetic(
    n: int, fail_length: int, pass_length: int, dataset: str = "syn"
) -> list[GoldenExample]:
    """Half fail, half pass; the answers' lengths alone tell them apart when they differ."""
    examples = []
    for i in range(n):
        verdict = F if i % 2 else P
        length = fail_length if verdict is F else pass_length
        trace = Trace(trace_id=f"{dataset}-{i:03d}", input="q?", output="x" * (length + i % 3))
        examples.append(
            GoldenExample(
                trace=trace, verdict=verdict, reviewer="t", labelled_at=T0, source=f"{dataset}#{i}"
            )
        )
    return examples


T0 = "2026-12-01T00:00:00+00:00"


def judged(
    examples: list[GoldenExample], verdicts: list[Verdict], spec_name: str
) -> list[list[Score]]:
    return [
        [
            Score.for_trace(
                e.trace.trace_id, spec_name, "1.0.0", spec_name, value=1.0 if v is P else 0.0,
                passed=v is P, reason="because",
            )
        ]
        for e, v in zip(examples, verdicts, strict=True)
    ]  # fmt: skip


def test_auc_known_values() -> None:
    assert auc([1, 2, 3, 4], [False, False, True, True]) == pytest.approx(1.0)
    assert auc([4, 3, 2, 1], [False, False, True, True]) == pytest.approx(0.0)
    assert auc([1, 1, 1, 1], [False, True, False, True]) == pytest.approx(0.5)  # ties: half
    # fails 2, 4 against passes 1, 3: pairs (2>1, 2<3, 4>1, 4>3) -> 3 of 4
    assert auc([1, 2, 3, 4], [False, True, False, True]) == pytest.approx(0.75)
    assert auc([1, 2], [True, True]) is None


def test_length_baseline_separates_a_set_where_length_is_the_label() -> None:
    examples = synthetic(20, fail_length=200, pass_length=20)
    [length] = baselines(examples)  # no contexts or references: no overlap baseline
    assert length.feature == "answer length (characters)" and length.auc == pytest.approx(1.0)
    assert length.agreement.accuracy == 1.0 and length.agreement.kappa == pytest.approx(1.0)
    assert length.agreement.f1_fail == pytest.approx(1.0)
    assert length.rule.startswith("fail when answer length > ")
    cut = float(length.rule.rsplit(" ", 1)[1])
    assert 22 <= cut < 200  # between the longest pass (22) and the shortest fail (200)

    # Shorter answers failing: the fitted rule turns round.
    [reversed_rule] = baselines(synthetic(20, fail_length=20, pass_length=200))
    assert reversed_rule.rule.startswith("fail when answer length <= ")
    assert reversed_rule.auc == pytest.approx(1.0)

    overlap = baselines(
        [
            e.model_copy(update={"trace": e.trace.model_copy(update={"contexts": ["x"]})})
            for e in examples
        ]
    )
    assert [b.feature for b in overlap] == [
        "answer length (characters)",
        "word overlap with contexts/reference",
    ]


def test_a_judge_no_better_than_the_baseline_gets_a_warning() -> None:
    spec = load_judge(default_judges_dir() / "safety.yaml")
    examples = synthetic(20, fail_length=200, pass_length=20)
    humans = [e.verdict for e in examples]
    # A judge that misses 4 of 20: 80 % agreement against the length rule's 100 %.
    worse = [h if i % 5 else (P if h is F else F) for i, h in enumerate(humans)]
    report = report_for(spec, examples, judged(examples, worse, "safe"))
    assert report.agreement.accuracy == pytest.approx(0.8)
    assert report.beats_baseline is False
    [warning] = report.baseline_warnings()
    assert warning.startswith("on this set the judge does not beat a trivial baseline")
    assert "agrees 100.0%" in warning and "80.0%" in warning and "ROC-AUC 1.000" in warning
    assert report.to_json()["beats_baseline"] is False

    console = Console(record=True, width=250)
    render_calibration(report, console)
    shown = console.export_text()
    assert "Judge vs trivial baselines" in shown and "answer length (characters)" in shown
    assert "WARNING: on this set the judge does not beat a trivial baseline" in shown

    # A perfect judge only ties the rule: still no better, still warned.
    perfect = report_for(spec, examples, judged(examples, humans, "safe"))
    assert perfect.agreement.accuracy == 1.0 and perfect.beats_baseline is False

    # Where length tells nothing, the same perfect judge beats the baseline: no warning.
    flat = synthetic(20, fail_length=50, pass_length=50)
    clean = report_for(spec, flat, judged(flat, [e.verdict for e in flat], "safe"))
    assert clean.best_baseline is not None and clean.best_baseline.auc < 0.75
    assert clean.beats_baseline is True and clean.baseline_warnings() == []
    console = Console(record=True, width=250)
    render_calibration(clean, console)
    assert "WARNING" not in console.export_text()


def test_examples_the_judge_does_not_apply_to_are_counted_not_judged(settings: Settings) -> None:
    spec = load_judge(default_judges_dir() / "correctness.yaml")  # needs a reference
    examples = read_examples(GOLDEN / "correctness.halueval_general.jsonl")[:5]
    report = calibrate(spec, examples, settings)  # nothing to call: no judge request is made
    assert report.not_applicable == {"needs a reference answer": 5}
    assert report.agreement.n == 0 and report.examples == 0 and not report.passed


def test_agreement_per_source_and_position_bias() -> None:
    spec = load_judge(default_judges_dir() / "safety.yaml")
    pairs = []
    for i in range(4):  # pair i in both orders; the first order shows the preferred answer
        for order, verdict in (("ab", P), ("ba", F)):
            trace = Trace(
                trace_id=f"p{i}{'' if order == 'ab' else '~swapped'}",
                input="which?",
                output=f"answer {order}",
                metadata={"pair": f"p{i}", "order": order},
            )
            pairs.append(
                GoldenExample(trace=trace, verdict=verdict, reviewer="t", labelled_at=T0,
                              source=f"llmbar#p{i}")
            )  # fmt: skip
    # The judge always prefers the first-shown answer for pairs 0 and 1, is right for 2 and 3.
    verdicts = [P, P, P, P, P, F, P, F]
    bias = position_bias(list(zip(pairs, verdicts, strict=True)))
    assert bias is not None and (bias.pairs, bias.consistent, bias.first_both) == (4, 2, 2)
    assert bias.consistency == 0.5 and bias.second_both == 0

    mixed = pairs + synthetic(4, 30, 30)
    report = report_for(
        spec, mixed, judged(mixed, verdicts + [e.verdict for e in mixed[8:]], "safe")
    )
    assert set(report.by_source) == {"llmbar", "syn"}
    assert report.by_source["syn"].accuracy == 1.0 and report.by_source["llmbar"].accuracy == 0.75
    assert report.position is not None and report.position.first_both == 2
    console = Console(record=True, width=250)
    render_calibration(report, console)
    shown = console.export_text()
    assert "Agreement per source" in shown and "position bias over 4 pairs" in shown


def test_subsample_keeps_every_source_and_class() -> None:
    examples = read_golden("groundedness", GOLDEN)
    chosen = subsample(examples, 20)
    assert len(chosen) == 20
    groups = Counter((e.dataset, e.verdict) for e in chosen)
    assert set(groups.values()) == {5} and len(groups) == 4
    few = subsample(examples[:3], 10)  # fewer than the limit: all of them, in turns
    assert len(few) == 3 and {e.trace.trace_id for e in few} == {
        e.trace.trace_id for e in examples[:3]
    }


def test_error_scores_are_not_baseline_examples() -> None:
    spec = load_judge(default_judges_dir() / "safety.yaml")
    examples = synthetic(6, 200, 20)
    results = judged(examples, [e.verdict for e in examples], "safe")
    results[0] = [results[0][0].model_copy(update={"status": ScoreStatus.ERROR, "passed": None})]
    report = report_for(spec, examples, results)
    assert report.errors == 1 and report.agreement.n == 5
    assert sum(sum(row.values()) for row in report.baselines[0].agreement.confusion.values()) == 5


def test_a_source_with_a_shortcut_is_warned_about_even_when_the_mix_hides_it() -> None:
    spec = load_judge(default_judges_dir() / "safety.yaml")
    shortcut = synthetic(20, fail_length=200, pass_length=20, dataset="short")
    flat = synthetic(20, fail_length=50, pass_length=50, dataset="flat")
    examples = shortcut + flat
    humans = [e.verdict for e in examples]
    # 4 misses, all on the shortcut source: 90 % overall, 80 % there, 100 % on the flat one.
    verdicts = [h if i % 5 or i >= 20 else (P if h is F else F) for i, h in enumerate(humans)]
    report = report_for(spec, examples, judged(examples, verdicts, "safe"))
    assert report.agreement.accuracy == pytest.approx(0.9)
    best = report.best_baseline
    assert best is not None and best.agreement.accuracy < 0.9  # the mix hides the shortcut
    assert report.source_baselines["short"].auc == pytest.approx(1.0)
    assert report.by_source["short"].accuracy == pytest.approx(0.8)
    [warning] = report.baseline_warnings()
    assert warning.startswith("on source short the judge does not beat a trivial baseline")
    assert report.beats_baseline is False
    console = Console(record=True, width=250)
    render_calibration(report, console)
    assert "WARNING: on source short" in console.export_text()
