"""Deterministic sampling: same id, same decision; the observed rate matches; rules fire."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
from helpers import make_trace

from evaluator.models import Score, ScoreType, Trace, sample_point
from evaluator.sampling.estimates import hajek, score_estimates, unweighted
from evaluator.sampling.strata import SamplingPolicy, VersionTracker
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore, score_row


class _AlwaysApplies:
    class applies_when:
        @staticmethod
        def why_not(trace: Trace) -> str:
            return ""


def test_same_trace_id_same_decision() -> None:
    policy = SamplingPolicy(base_rate=0.3)
    for index in range(500):
        trace = make_trace(index)
        assert policy.decide(trace) == policy.decide(trace.model_copy())
    assert sample_point("abc") == sample_point("abc")
    assert sample_point("abc") != sample_point("abc", salt="s")


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2])
def test_observed_rate_on_10000_ids(rate: float) -> None:
    n = 10_000
    policy = SamplingPolicy(base_rate=rate)
    sampled = sum(policy.decide(make_trace(i)).judge for i in range(n))
    tolerance = 4 * math.sqrt(n * rate * (1 - rate))  # 4 standard deviations of a binomial
    assert abs(sampled - n * rate) < tolerance, (sampled, n * rate, tolerance)


def test_rate_zero_and_one() -> None:
    assert not any(SamplingPolicy(base_rate=0).decide(make_trace(i)).judge for i in range(200))
    assert all(SamplingPolicy(base_rate=1).decide(make_trace(i)).judge for i in range(200))


@pytest.mark.parametrize(
    ("fields", "stratum", "reason"),
    [
        ({"error": "upstream timeout"}, "error", "app error"),
        ({"latency_ms": 25_000.0}, "high_latency", "latency 25000 ms > 20000 ms"),
        ({"output": "ok"}, "short_output", "output shorter than 20 chars"),
        ({"finish_reason": "length"}, "truncated", "finish_reason length"),
        ({"finish_reason": "content_filter"}, "truncated", "finish_reason content_filter"),
        ({"user_feedback": "negative"}, "negative_feedback", "negative user feedback"),
        ({"cost_usd": 0.2}, "high_cost", "cost $0.2000 > $0.05"),
        ({"model": "gpt-4o", "tokens": {"input": 30_000, "output": 1000}}, "high_cost", "cost"),
    ],
)
def test_outcome_strata_judged_in_full_at_control_rate_zero(
    fields: dict[str, object], stratum: str, reason: str
) -> None:
    policy = SamplingPolicy.from_settings(Settings(judge_sample_rate=0.0))
    decision = policy.decide(make_trace(1, **fields))
    assert decision.judge is True
    assert decision.stratum == stratum
    assert decision.rate == 1.0
    assert decision.reasons[0].startswith(reason)


def test_a_trace_has_one_stratum_first_match_wins() -> None:
    policy = SamplingPolicy()
    both = make_trace(1, error="boom", user_feedback="negative", latency_ms=30_000.0)
    assert policy.stratum(both)[0] == "error"
    assert policy.stratum(make_trace(2))[0] == "control"


def test_canary_stratum_from_versions_first_seen_recently(redis_client: Any) -> None:
    tracker = VersionTracker(redis_client, window_s=3600)
    policy = SamplingPolicy(base_rate=0.0, stratum_rates={"canary": 1.0})
    old = make_trace(1, prompt_version="v1")
    # Seen with the fleet's first traces: the baseline, not a canary.
    assert tracker.recent([old], now=1_000.0) == frozenset()
    later = 1_000.0 + 7200
    new = make_trace(2, prompt_version="v2")
    recent = tracker.recent([old, new], now=later)
    assert recent == {"prompt:v2"}  # first seen now, two hours into the fleet's life
    assert tracker.recent([new], now=later + 3599) == {"prompt:v2"}
    assert tracker.recent([new], now=later + 3601) == frozenset()  # the window has passed
    assert policy.decide(new, recent).stratum == "canary"
    assert policy.decide(new, recent).judge is True
    assert policy.decide(old, recent).judge is False  # control at rate 0
    # Fleet-wide: another sampler sees the first-seen time the first one recorded.
    assert VersionTracker(redis_client, 3600).recent([old], now=later) == frozenset()


def test_inclusion_probability_is_rate_times_judge_factor() -> None:
    judges = {"groundedness": _AlwaysApplies(), "safety": _AlwaysApplies()}
    policy = SamplingPolicy(base_rate=0.5, judges=judges, judge_factors={"safety": 0.5})  # type: ignore[arg-type]
    decisions = [policy.decide(make_trace(i)) for i in range(4000)]
    sampled = [d for d in decisions if d.judge]
    assert all(d.inclusion["groundedness"] == 0.5 for d in sampled)
    with_safety = [d for d in sampled if "safety" in d.judges]
    assert all(d.inclusion["safety"] == 0.25 for d in with_safety)
    assert abs(len(with_safety) / len(decisions) - 0.25) < 0.03
    thinned = [d for d in sampled if "safety" in d.sampled_out]
    assert len(thinned) + len(with_safety) == len(sampled)
    assert all(d.sampled_out == ["groundedness", "safety"] for d in decisions if not d.judge)


def test_weighted_estimate_recovers_the_true_pass_rate_under_heavy_oversampling() -> None:
    """Synthetic traffic: 5 % app errors (mostly failing), 5 % negative feedback, 90 % ordinary
    traces; errors and negative feedback judged in full, the control stratum at 5 %."""
    rng = random.Random(7)
    policy = SamplingPolicy(base_rate=0.05)
    truth: list[bool] = []
    values: list[float] = []
    probabilities: list[float] = []
    for i in range(40_000):
        kind = rng.random()
        if kind < 0.05:
            trace, p_pass = make_trace(i, error="upstream 500"), 0.2
        elif kind < 0.10:
            trace, p_pass = make_trace(i, user_feedback="negative"), 0.4
        else:
            trace, p_pass = make_trace(i), 0.9
        passed = rng.random() < p_pass  # what a perfect judge would say of this trace
        truth.append(passed)
        decision = policy.decide(trace)
        if decision.judge:
            values.append(float(passed))
            probabilities.append(decision.rate)
    true_rate = sum(truth) / len(truth)
    weighted = hajek(values, probabilities)
    plain = unweighted(values)
    print(
        f"true {true_rate:.4f}; weighted {weighted.mean:.4f} ± {weighted.half_width:.4f} "
        f"(n={weighted.n}, stands for {weighted.population:,.0f}); unweighted {plain.mean:.4f} "
        f"± {plain.half_width:.4f}"
    )
    assert weighted.covers(true_rate)
    assert not plain.covers(true_rate)
    assert abs(weighted.population - len(truth)) / len(truth) < 0.05


def test_weighted_interval_covers_the_truth_about_95_percent_of_the_time() -> None:
    """The variance formula, checked: 200 replications of a stratified sample."""
    rng = random.Random(11)
    covered = 0
    for replication in range(200):
        values, probabilities, truth = [], [], 0
        for i in range(3000):
            failing_stratum = rng.random() < 0.1
            passed = rng.random() < (0.3 if failing_stratum else 0.85)
            truth += passed
            p = 1.0 if failing_stratum else 0.1
            if sample_point(f"r{replication}-{i}") < p:
                values.append(float(passed))
                probabilities.append(p)
        covered += hajek(values, probabilities).covers(truth / 3000)
    assert 0.90 <= covered / 200 <= 0.99, covered


def test_estimates_from_the_store_weight_judge_scores(tmp_path: Path) -> None:
    """90 passing traces sampled at 10 % and 10 failing ones judged in full: the 90 stand for
    900 traces, so the pass rate is 900 / 910, not 90 %."""
    store = SQLStore(f"sqlite:///{tmp_path / 'e.db'}")
    rows = []
    for i in range(100):
        passed = i < 90
        score = Score.for_trace(
            f"t{i}", "quality", "1", "quality", data_type=ScoreType.BOOLEAN, passed=passed
        )
        row = score_row(score, None, None, None)
        row["inclusion_probability"] = 0.1 if passed else 1.0
        rows.append(row)
    store.write_batch([], rows, [])
    estimate = score_estimates(store.score_sums())[0]
    assert (estimate.evaluator, estimate.statistic) == ("quality", "pass_rate")
    assert round(estimate.plain.mean, 3) == 0.9
    assert round(estimate.weighted.mean, 4) == round(900 / 910, 4)
    assert round(estimate.weighted.population) == 910
    store.close()


def test_overrides_feature_beats_tenant() -> None:
    settings = Settings(
        judge_sample_rate=0.0,
        sample_rate_overrides={"tenant:acme": 1.0, "feature:search": 0.0},
    )
    policy = SamplingPolicy.from_settings(settings)
    assert policy.decide(make_trace(1, tenant="acme", feature="support")).reasons == [
        "control (stratum control, rate 1)"
    ]
    assert policy.decide(make_trace(2, tenant="acme", feature="search")).judge is False
    assert policy.decide(make_trace(3, tenant="other", feature="support")).judge is False


def test_bad_override_is_a_clear_settings_error() -> None:
    with pytest.raises(ValueError, match="must start with 'tenant:' or 'feature:'"):
        Settings(sample_rate_overrides={"acme": 0.5})
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        Settings(sample_rate_overrides={"tenant:acme": 1.5})
