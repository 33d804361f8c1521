"""The spend budget: planned rates (cheaper strata first, floors kept), per-judge thinning, and
the sampler applying the plan from fleet-wide traffic and spend."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from helpers import make_trace

from evaluator.ingest import publish_many
from evaluator.sampling.budget import (
    BudgetPlanner,
    SpendMeter,
    plan_rates,
    recent_traffic,
    record_traffic,
)
from evaluator.sampling.sampler import Sampler
from evaluator.sampling.strata import DEFAULT_STRATUM_RATES
from evaluator.settings import Settings

DESIRED = {**DEFAULT_STRATUM_RATES, "control": 0.1}


def test_no_budget_pressure_keeps_the_configured_rates() -> None:
    plan = plan_rates(
        Settings(judge_daily_budget_usd=1000),
        DESIRED,
        traffic_per_s={"control": 100, "error": 1},
        eligible_share={"groundedness": 1.0},
        cost_per_call={"groundedness": 0.001},
        spent={"*": 10},
        seconds_left=10_000,
    )
    assert plan.stratum_rates == DESIRED and plan.judge_factors == {} and plan.notes == []
    # 11 sampled traces/s x $0.001 x 10,000 s + $10 spent
    assert plan.projected_usd == pytest.approx(120)


def test_fleet_budget_lowers_control_first_and_keeps_errors() -> None:
    # Desired: 100 x 0.1 + 1 x 1.0 = 11 sampled/s -> $110 more; $50 left allows 5/s.
    plan = plan_rates(
        Settings(judge_daily_budget_usd=100),
        DESIRED,
        traffic_per_s={"control": 100, "error": 1},
        eligible_share={"groundedness": 1.0},
        cost_per_call={"groundedness": 0.001},
        spent={"*": 50},
        seconds_left=10_000,
    )
    assert plan.stratum_rates["control"] == pytest.approx(0.04)
    assert plan.stratum_rates["error"] == 1.0
    assert plan.projected_usd == pytest.approx(100)
    assert plan.notes == ["control 0.1 -> 0.0400"]


def test_exhausted_budget_goes_down_the_shed_order_to_the_floor() -> None:
    settings = Settings(judge_daily_budget_usd=100, budget_rate_floor=0.02)
    plan = plan_rates(
        settings,
        DESIRED,
        traffic_per_s={"control": 100, "canary": 10, "error": 1},
        eligible_share={"groundedness": 1.0},
        cost_per_call={"groundedness": 0.001},
        spent={"*": 100},  # nothing left
        seconds_left=10_000,
    )
    # Every stratum with traffic is at the floor, never 0: the estimates stay unbiased.
    assert plan.stratum_rates["control"] == 0.02
    assert plan.stratum_rates["canary"] == 0.02
    assert plan.stratum_rates["error"] == 0.02
    assert all(rate > 0 for rate in plan.stratum_rates.values())


def test_per_judge_budget_thins_that_judge_only() -> None:
    settings = Settings(judge_budgets_usd={"quality": 10})
    plan = plan_rates(
        settings,
        DESIRED,
        traffic_per_s={"control": 100},
        eligible_share={"quality": 1.0, "safety": 1.0},
        cost_per_call={"quality": 0.002, "safety": 0.001},
        spent={"quality": 0, "*": 0},
        seconds_left=10_000,
    )
    # quality would spend 10/s x $0.002 x 10,000 s = $200 > $10: thinned to 5 %.
    assert plan.judge_factors == {"quality": pytest.approx(0.05)}
    assert plan.stratum_rates == DESIRED


def test_spend_meter_caps(redis_client: redis.Redis) -> None:
    settings = Settings(judge_daily_budget_usd=1.0, judge_budgets_usd={"quality": 0.5})
    meter = SpendMeter(redis_client, settings)
    meter.record([{"judge": "quality", "cost_usd": 0.3}, {"judge": "safety", "cost_usd": 0.3}])
    spent = meter.today()
    assert spent["*"] == pytest.approx(0.6) and spent["calls:quality"] == 1
    assert meter.over_cap("quality", spent) == ""
    meter.record([{"judge": "quality", "cost_usd": 0.25}], run="r1")
    spent = meter.today()
    assert meter.over_cap("quality", spent) == "quality spent $0.55 of its $0.5 daily budget"
    assert meter.over_cap("safety", spent) == ""
    meter.record([{"judge": "safety", "cost_usd": 0.2}])
    spent = meter.today()
    assert meter.over_cap("safety", spent) == "fleet spent $1.05 of its $1 daily budget"
    assert meter.run_spent("r1") == pytest.approx(0.25)
    assert "re-evaluation r1 spent $0.25 of its $0.2 cap" in SpendMeter(
        redis_client, Settings()
    ).over_cap("safety", {}, "r1", meter.run_spent("r1"), 0.2)


def test_traffic_is_counted_fleet_wide_per_minute(redis_client: redis.Redis) -> None:
    now = 1_800_000_000.0
    key_minute = int(now // 60) - 1
    redis_client.hset(f"evalfleet:traffic:{key_minute}", mapping={"seen:control": 600})
    per_s, window = recent_traffic(redis_client, now=now)
    assert window == 300 and per_s["seen:control"] == pytest.approx(2.0)
    record_traffic(redis_client, {"error": 3}, 3, {"safety": 2})
    assert any(k.startswith(b"evalfleet:traffic:") for k in redis_client.keys("*"))


class Collect:
    def __init__(self) -> None:
        self.judge_entries: list[dict[str, Any]] = []

    def __call__(self, queue: str, entries: list[dict[str, Any]], batch_id: str = "") -> None:
        if queue == "judges":
            self.judge_entries += entries


def test_sampler_applies_the_budget_plan(redis_client: redis.Redis) -> None:
    """Traffic and spend as a busy fleet would leave them: the sampler then samples the control
    stratum at the floor and still judges every app error."""
    settings = Settings(
        judge_sample_rate=0.5,
        judge_daily_budget_usd=1.0,
        budget_rate_floor=0.01,
        judge_base_url="http://127.0.0.1:9/v1",  # configured, never called
        enabled_judges=["safety"],
        sampler_block_ms=10,
    )
    meter = SpendMeter(redis_client, settings)
    # $0.50 spent today over 500 calls: $0.001 a call, $0.50 left.
    meter.record([{"judge": "safety", "cost_usd": 0.001} for _ in range(500)])
    for ago in (1, 2, 3):  # three earlier minutes of 1,000 traces/s, all eligible for safety
        key = f"evalfleet:traffic:{int(time.time() // 60) - ago}"
        redis_client.hset(key, mapping={"seen:control": 60_000, "sampled": 30_000})
        redis_client.hset(key, "eligible:safety", 30_000)
    dispatch = Collect()
    # 10 h left: 500 sampled/s at $0.001 would cost $18,000 more; $0.50 allows 0.014/s.
    planner = BudgetPlanner(redis_client, settings, meter, seconds_left=lambda: 36_000)
    loop = Sampler(redis_client, settings, dispatch, "c1", budget=planner)
    ordinary = [make_trace(i) for i in range(2000)]
    errors = [make_trace(10_000 + i, error="upstream 500") for i in range(50)]
    publish_many(redis_client, ordinary + errors, settings)
    while loop.step(block_ms=10):
        pass
    judged = {json.loads(e["trace"])["trace_id"] for e in dispatch.judge_entries}
    judged_errors = sum(1 for t in errors if t.trace_id in judged)
    judged_ordinary = len(judged) - judged_errors
    assert judged_errors == 50
    assert judged_ordinary < 2000 * 0.05, judged_ordinary  # ~1 %, not 50 %
    rates = {e["inclusion"]["safety"] for e in dispatch.judge_entries if e["inclusion"]}
    assert sorted(rates) == [pytest.approx(0.01), 1.0]
