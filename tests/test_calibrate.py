"""Calibration metrics against hand-computed values; calibrate and the gate through the fake
OpenAI-compatible server, which plays a good or a worse judge version."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import fleet_env
from openai_server import OpenAIServer

from evaluator.calibrate import agreement, calibrate, gate, spearman
from evaluator.golden import golden_path, read_examples
from evaluator.judges import default_judges_dir, load_judge
from evaluator.models import Verdict
from evaluator.settings import Settings

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

    worse = spec.model_copy(update={"model": "judge-worse"})
    server.fake.scorer = judge_like(examples, 3)  # 17 of 50 flipped
    bad = calibrate(worse, examples, settings)
    assert bad.agreement.accuracy == pytest.approx(33 / 50)
    assert not bad.passed and "agreement 66.0% < 75%" in "; ".join(bad.failures())
    assert len(bad.disagreements) == 17 and bad.disagreements[0].reasoning


def test_judge_errors_are_counted_not_scored(server: OpenAIServer, settings: Settings) -> None:
    examples = read_examples(golden_path("safety", GOLDEN))[:6]
    server.fake.script.extend(["malformed", "malformed"])  # one example: bad JSON twice
    one_at_a_time = settings.model_copy(update={"judge_max_in_flight": 1})
    report = calibrate(load_judge(default_judges_dir() / "safety.yaml"), examples, one_at_a_time)
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
    examples = read_examples(golden_path("groundedness", GOLDEN))
    server.fake.scorer = judge_like(examples, 3)
    path = repo / "judges" / "groundedness.yaml"
    text = path.read_text()

    path.write_text(
        text.replace("version: 1.0.0", "version: 1.0.1").replace(
            "max_tokens: 400", "max_tokens: 500"
        )
    )
    [same] = gate("HEAD", settings, repo / "judges", GOLDEN)
    assert same.reasons == [] and same.old is not None and same.old.version == "1.0.0"

    path.write_text(
        text.replace("version: 1.0.0", "version: 1.1.0").replace(
            "model: gpt-4o-mini", "model: judge-worse"
        )
    )
    [worse] = gate("HEAD", settings, repo / "judges", GOLDEN)
    assert worse.new.version == "1.1.0" and worse.new.model == "judge-worse"
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
    assert recorded == {"judge_version": "1.0.0", "trace_ids": []}
    assert data["passed"] and data["agreement"]["n"] == 50 and data["agreement"]["kappa"] == 1.0
    no_endpoint = {k: v for k, v in env.items() if not k.startswith("EVALFLEET_JUDGE")}
    refused = subprocess.run(
        command, env=no_endpoint, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert refused.returncode == 2 and "no judge endpoint" in refused.stdout


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
