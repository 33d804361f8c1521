"""Judge spend: what was spent today, the caps, and the sampling rates a budget allows.

Spend is accounted fleet-wide in Redis (``HINCRBYFLOAT`` per UTC day, per judge, per re-evaluation
run) by the workers right after each judge call is written to SQL (``judge_calls`` stays the
record: when Redis lost the day's hash it is re-read from there).

Two uses of one budget (``EVALFLEET_JUDGE_DAILY_BUDGET_USD`` fleet-wide,
``EVALFLEET_JUDGE_BUDGETS_USD`` per judge):

- the **sampler** projects today's spend from the traffic per stratum, the share of sampled
  traces each judge applies to and each judge's cost per call, and lowers rates until the
  projection fits: per-judge thinning factors for per-judge budgets, stratum rates in
  ``EVALFLEET_BUDGET_SHED_ORDER`` for the fleet budget, never below ``EVALFLEET_BUDGET_RATE_FLOOR``;
- the **workers** treat it as a hard cap: judge work arriving when a cap is reached is recorded
  as ``over_budget`` in the ledger, not run and not dropped (``evalfleet ledger redrive``).
  Concurrent workers may overshoot a cap by the calls already in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from evaluator.constants import RUN_SPEND_PREFIX, SPEND_PREFIX, TRAFFIC_PREFIX
from evaluator.ops import metrics
from evaluator.sampling.strata import SamplingPolicy, Stratum
from evaluator.settings import Settings
from evaluator.streams import text

log = logging.getLogger(__name__)

FLEET = "*"
_TRAFFIC_WINDOW_MIN = 5


def day_key(now: datetime | None = None) -> str:
    return SPEND_PREFIX + (now or datetime.now(UTC)).strftime("%Y-%m-%d")


def seconds_left_today(now: datetime | None = None) -> float:
    now = now or datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


# Today's spend per judge from SQL, for when Redis lost the day's hash: {judge: (usd, calls)}.
SpendFromStore = Callable[[datetime], dict[str, tuple[float, int]]]


class SpendMeter:
    """Today's judge spend, fleet-wide, and the caps."""

    def __init__(
        self, client: redis.Redis, settings: Settings, from_store: SpendFromStore | None = None
    ) -> None:
        self.client = client
        self.settings = settings
        self.from_store = from_store

    def record(self, calls: Iterable[Mapping[str, Any]], run: str | None = None) -> None:
        """Add judge calls (rows of ``judge_calls``) to today's spend (and a run's)."""
        key = day_key()
        pipe = self.client.pipeline(transaction=False)
        run_usd = 0.0
        for call in calls:
            usd = float(call.get("cost_usd") or 0.0)
            pipe.hincrbyfloat(key, call["judge"], usd)
            pipe.hincrbyfloat(key, FLEET, usd)
            pipe.hincrby(key, f"calls:{call['judge']}", 1)
            run_usd += usd
        if run is not None:
            pipe.hincrbyfloat(RUN_SPEND_PREFIX + run, "usd", run_usd)
            pipe.expire(RUN_SPEND_PREFIX + run, 30 * 86400)
        pipe.expire(key, 3 * 86400)
        pipe.execute()

    def today(self) -> dict[str, float]:
        """{judge: USD, "*": USD, "calls:judge": n} spent today."""
        key = day_key()
        raw: Any = self.client.hgetall(key)
        if not raw and self.from_store is not None:
            self._seed(key)
            raw = self.client.hgetall(key)
        return {text(k): float(v) for k, v in raw.items()}

    def _seed(self, key: str) -> None:
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        assert self.from_store is not None
        rows = self.from_store(midnight)
        pipe = self.client.pipeline(transaction=False)
        # HSETNX: a worker's increment that landed meanwhile is not overwritten.
        pipe.hsetnx(key, FLEET, repr(sum(usd for usd, _ in rows.values())))
        for judge, (usd, calls) in rows.items():
            pipe.hsetnx(key, judge, repr(usd))
            pipe.hsetnx(key, f"calls:{judge}", calls)
        pipe.expire(key, 3 * 86400)
        pipe.execute()

    def run_spent(self, run: str) -> float:
        value: Any = self.client.hget(RUN_SPEND_PREFIX + run, "usd")
        return float(value or 0.0)

    def over_cap(
        self,
        judge: str,
        spent: Mapping[str, float],
        run: str | None = None,
        run_spent: float = 0.0,
        run_cap: float | None = None,
    ) -> str:
        """Why ``judge`` may not run now ('' when it may); ``spent`` is ``today()``, ``run_spent``
        a re-evaluation run's ``run_spent``."""
        s = self.settings
        cap = s.judge_budgets_usd.get(judge)
        if cap is not None and spent.get(judge, 0.0) >= cap:
            return f"{judge} spent ${spent[judge]:.2f} of its ${cap:g} daily budget"
        if (
            s.judge_daily_budget_usd is not None
            and spent.get(FLEET, 0.0) >= s.judge_daily_budget_usd
        ):
            total = spent[FLEET]
            return f"fleet spent ${total:.2f} of its ${s.judge_daily_budget_usd:g} daily budget"
        if run is not None and run_cap is not None and run_spent >= run_cap:
            return f"re-evaluation {run} spent ${run_spent:.2f} of its ${run_cap:g} cap"
        return ""


def record_traffic(
    client: redis.Redis, strata: Mapping[str, int], sampled: int, eligible: Mapping[str, int]
) -> None:
    """The sampler's counts of one batch, in this minute's bucket (fleet-wide)."""
    key = TRAFFIC_PREFIX + str(int(time.time() // 60))
    pipe = client.pipeline(transaction=False)
    for stratum, n in strata.items():
        pipe.hincrby(key, f"seen:{stratum}", n)
    pipe.hincrby(key, "sampled", sampled)
    for judge, n in eligible.items():
        pipe.hincrby(key, f"eligible:{judge}", n)
    pipe.expire(key, (_TRAFFIC_WINDOW_MIN + 2) * 60)
    pipe.execute()


def recent_traffic(client: redis.Redis, now: float | None = None) -> tuple[dict[str, float], float]:
    """Counts over the last full minutes (per second) and the window's length in seconds."""
    minute = int((now or time.time()) // 60)
    pipe = client.pipeline(transaction=False)
    for m in range(minute - _TRAFFIC_WINDOW_MIN, minute):
        pipe.hgetall(TRAFFIC_PREFIX + str(m))
    totals: dict[str, float] = {}
    for bucket in pipe.execute():
        for k, v in bucket.items():
            totals[text(k)] = totals.get(text(k), 0.0) + float(v)
    window_s = _TRAFFIC_WINDOW_MIN * 60.0
    return {k: v / window_s for k, v in totals.items()}, window_s


@dataclass
class Plan:
    stratum_rates: dict[str, float]
    judge_factors: dict[str, float] = field(default_factory=dict)
    projected_usd: float = 0.0
    notes: list[str] = field(default_factory=list)


def plan_rates(
    settings: Settings,
    desired: Mapping[str, float],
    traffic_per_s: Mapping[str, float],
    eligible_share: Mapping[str, float],
    cost_per_call: Mapping[str, float],
    spent: Mapping[str, float],
    seconds_left: float,
) -> Plan:
    """The rates that keep today's projected judge spend inside the budgets.

    ``desired``: stratum -> configured rate; ``traffic_per_s``: stratum -> traces/s;
    ``eligible_share``: judge -> share of sampled traces it applies to; ``cost_per_call``: judge
    -> USD; ``spent``: judge (and "*") -> USD spent today.
    """
    floor = settings.budget_rate_floor
    rates = {s: max(floor, r) for s, r in desired.items()}
    judges = [j for j in eligible_share if j in cost_per_call]

    def sampled_per_s() -> float:
        return sum(traffic_per_s.get(s, 0.0) * r for s, r in rates.items())

    def judge_usd_per_sampled(factors: Mapping[str, float]) -> float:
        return sum(eligible_share[j] * factors.get(j, 1.0) * cost_per_call[j] for j in judges)

    plan = Plan(stratum_rates=rates)
    for _ in range(2):  # shedding strata lowers per-judge pressure: settle once more
        plan.judge_factors = {}
        for judge in judges:
            budget = settings.judge_budgets_usd.get(judge)
            if budget is None:
                continue
            per_s = sampled_per_s() * eligible_share[judge] * cost_per_call[judge]
            projected = per_s * seconds_left
            left = max(0.0, budget - spent.get(judge, 0.0))
            if projected > left:
                factor = max(floor, left / projected) if projected else 1.0
                plan.judge_factors[judge] = factor
        fleet_budget = settings.judge_daily_budget_usd
        per_sampled = judge_usd_per_sampled(plan.judge_factors)
        if fleet_budget is None or per_sampled <= 0:
            break
        allowed = max(0.0, fleet_budget - spent.get(FLEET, 0.0)) / (per_sampled * seconds_left)
        excess = sampled_per_s() - allowed
        for stratum in settings.budget_shed_order:
            if excess <= 1e-9:  # met (up to rounding)
                break
            traffic = traffic_per_s.get(stratum, 0.0)
            if stratum not in rates or traffic <= 0:
                continue
            lowered = max(floor, rates[stratum] - excess / traffic)
            excess -= (rates[stratum] - lowered) * traffic
            rates[stratum] = lowered
    plan.projected_usd = spent.get(FLEET, 0.0) + seconds_left * sampled_per_s() * (
        judge_usd_per_sampled(plan.judge_factors)
    )
    for stratum, rate in rates.items():
        if rate < desired.get(stratum, rate):
            plan.notes.append(f"{stratum} {desired[stratum]:g} -> {rate:.4f}")
    for judge, factor in plan.judge_factors.items():
        plan.notes.append(f"{judge} thinned to {factor:.4f}")
    return plan


class BudgetPlanner:
    """The sampler's view of the budget: re-planned every ``budget_refresh_s``."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        meter: SpendMeter,
        seconds_left: Callable[[], float] = seconds_left_today,
    ) -> None:
        self.client = client
        self.settings = settings
        self.meter = meter
        self.seconds_left = seconds_left
        self._planned_at = 0.0
        self._plan: Plan | None = None

    @property
    def enabled(self) -> bool:
        s = self.settings
        return s.judge_daily_budget_usd is not None or bool(s.judge_budgets_usd)

    def policy(self, base: SamplingPolicy) -> SamplingPolicy:
        if not self.enabled:
            return base
        if time.monotonic() - self._planned_at >= self.settings.budget_refresh_s:
            self._planned_at = time.monotonic()
            try:
                self._plan = self.replan(base)
            except redis.RedisError as exc:
                log.warning("budget planning failed, keeping the last plan: %s", exc)
        if self._plan is None:
            return base
        return base.with_rates(self._plan.stratum_rates, self._plan.judge_factors)

    def replan(self, base: SamplingPolicy) -> Plan:
        desired = {**base.stratum_rates, Stratum.CONTROL.value: base.base_rate}
        per_s, _ = recent_traffic(self.client)
        spent = self.meter.today()
        traffic = {s: per_s.get(f"seen:{s}", 0.0) for s in desired}
        sampled = per_s.get("sampled", 0.0)
        judges = list(base.judges)
        eligible = {j: per_s.get(f"eligible:{j}", 0.0) / sampled for j in judges if sampled}
        cost = {j: spent[j] / spent[f"calls:{j}"] for j in judges if spent.get(f"calls:{j}", 0) > 0}
        plan = plan_rates(
            self.settings, desired, traffic, eligible, cost, spent, self.seconds_left()
        )
        for stratum, rate in plan.stratum_rates.items():
            metrics.STRATUM_RATE.labels(stratum).set(rate)
        for judge in judges:
            metrics.JUDGE_BUDGET_FACTOR.labels(judge).set(plan.judge_factors.get(judge, 1.0))
        metrics.PROJECTED_SPEND.set(plan.projected_usd)
        if plan.notes:
            log.info("budget: projected $%.2f today; %s", plan.projected_usd, "; ".join(plan.notes))
        return plan
