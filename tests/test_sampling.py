"""Deterministic sampling: same id, same decision; the observed rate matches; rules fire."""

from __future__ import annotations

import math

import pytest
from helpers import make_trace

from evaluator.sampling import SamplingPolicy, sample_point
from evaluator.settings import Settings


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
    ("fields", "reason"),
    [
        ({"error": "upstream timeout"}, "app error"),
        ({"latency_ms": 25_000.0}, "latency 25000 ms > 20000 ms"),
        ({"output": "ok"}, "output shorter than 20 chars"),
        ({"finish_reason": "length"}, "finish_reason length"),
        ({"finish_reason": "content_filter"}, "finish_reason content_filter"),
        ({"user_feedback": "negative"}, "negative user feedback"),
    ],
)
def test_always_rules_fire_at_rate_zero(fields: dict[str, object], reason: str) -> None:
    decision = SamplingPolicy(base_rate=0).decide(make_trace(1, **fields))
    assert decision.judge is True
    assert reason in decision.reasons


def test_overrides_feature_beats_tenant() -> None:
    settings = Settings(
        judge_sample_rate=0.0,
        sample_rate_overrides={"tenant:acme": 1.0, "feature:search": 0.0},
    )
    policy = SamplingPolicy.from_settings(settings)
    assert policy.decide(make_trace(1, tenant="acme", feature="support")).reasons == [
        "sampled at rate 1"
    ]
    assert policy.decide(make_trace(2, tenant="acme", feature="search")).judge is False
    assert policy.decide(make_trace(3, tenant="other", feature="support")).judge is False


def test_bad_override_is_a_clear_settings_error() -> None:
    with pytest.raises(ValueError, match="must start with 'tenant:' or 'feature:'"):
        Settings(sample_rate_overrides={"acme": 0.5})
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        Settings(sample_rate_overrides={"tenant:acme": 1.5})
