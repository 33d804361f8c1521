"""Which traces get the expensive judges: outcome strata, each with a rate, decided per trace.

Every trace falls into exactly one stratum, the first that matches in ``STRATA`` order (an app
error before negative feedback before a truncation, ...; ``control`` when none does). It is
sampled when its deterministic sample point (a hash of the trace id) is below its stratum's
rate, so a trace's **inclusion probability** is that rate, and each judge may thin it further
with a factor of its own (a per-judge budget). The probability is recorded with every decision:
aggregates weight each judged trace by its inverse (``evaluator.sampling.estimates``), which is
what keeps oversampled failures from making production quality look worse than it is. No rate is
ever zero: a stratum never sampled would make those estimates biased.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import redis

from evaluator.constants import FIRST_SEEN_KEY
from evaluator.judging.files import Judge, judge_level
from evaluator.models import Level, SampleDecision, Trace, sample_point
from evaluator.settings import Settings

_TRUNCATED_OR_FILTERED = {"length", "max_tokens", "content_filter"}


class Stratum(StrEnum):
    ERROR = "error"
    NEGATIVE_FEEDBACK = "negative_feedback"
    TRUNCATED = "truncated"
    HIGH_LATENCY = "high_latency"
    HIGH_COST = "high_cost"
    CANARY = "canary"
    SHORT_OUTPUT = "short_output"
    CONTROL = "control"


STRATA = list(Stratum)  # first match wins
# A session with a turn in one of these is an outcome session (evaluator.sessions).
SESSION_OUTCOME_STRATA = frozenset({Stratum.ERROR.value, Stratum.NEGATIVE_FEEDBACK.value})
# Outcome strata are judged in full by default; control at EVALFLEET_JUDGE_SAMPLE_RATE.
DEFAULT_STRATUM_RATES: dict[str, float] = {
    Stratum.ERROR: 1.0,
    Stratum.NEGATIVE_FEEDBACK: 1.0,
    Stratum.TRUNCATED: 1.0,
    Stratum.HIGH_LATENCY: 1.0,
    Stratum.HIGH_COST: 1.0,
    Stratum.CANARY: 0.5,
    Stratum.SHORT_OUTPUT: 1.0,
}


def version_keys(trace: Trace) -> list[str]:
    """The deployment versions a trace carries; one first seen recently makes it a canary."""
    keys = []
    if trace.prompt_version:
        keys.append(f"prompt:{trace.prompt_version}")
    if trace.model:
        keys.append(f"model:{trace.model}")
    return keys


@dataclass(frozen=True)
class SamplingPolicy:
    """Stratum rates, per-tenant/feature control rates, per-judge thinning factors."""

    base_rate: float = 0.1  # the control stratum's rate
    overrides: dict[str, float] = field(default_factory=dict)
    stratum_rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STRATUM_RATES))
    judge_factors: dict[str, float] = field(default_factory=dict)
    latency_bound_ms: float = 20_000
    short_output_chars: int = 20
    high_cost_usd: float = 0.05
    salt: str = ""
    judges: dict[str, Judge] = field(default_factory=dict)
    settings: Settings | None = None  # prices, for a trace that states tokens but not cost

    @classmethod
    def from_settings(
        cls, settings: Settings, judges: dict[str, Judge] | None = None
    ) -> SamplingPolicy:
        return cls(
            base_rate=settings.judge_sample_rate,
            overrides=dict(settings.sample_rate_overrides),
            # An outcome stratum is never sampled less than the control stratum.
            stratum_rates={
                stratum: max(rate, settings.judge_sample_rate)
                for stratum, rate in {**DEFAULT_STRATUM_RATES, **settings.stratum_rates}.items()
            },
            latency_bound_ms=settings.always_evaluate_latency_ms,
            short_output_chars=settings.always_evaluate_short_output_chars,
            high_cost_usd=settings.high_cost_usd,
            salt=settings.sampling_salt,
            # Session judges see completed sessions (evaluator.sessions.judging), never a turn.
            judges={
                name: spec
                for name, spec in (judges or {}).items()
                if judge_level(spec) is not Level.SESSION
            },
            settings=settings,
        )

    def with_rates(
        self, stratum_rates: dict[str, float], judge_factors: dict[str, float]
    ) -> SamplingPolicy:
        """A copy with the budget planner's rates (see ``evaluator.sampling.budget``)."""
        return replace(self, stratum_rates=stratum_rates, judge_factors=judge_factors)

    def control_rate(self, trace: Trace) -> float:
        """Feature override, else tenant override, else the control rate."""
        for key in (f"feature:{trace.feature}", f"tenant:{trace.tenant}"):
            if key in self.overrides:
                return self.overrides[key]
        return self.stratum_rates.get(Stratum.CONTROL, self.base_rate)

    def trace_cost(self, trace: Trace) -> float | None:
        if trace.cost_usd is not None:
            return trace.cost_usd
        if trace.tokens and trace.model and self.settings is not None:
            return self.settings.cost_usd(trace.model, trace.tokens.input, trace.tokens.output)
        return None

    def stratum(
        self, trace: Trace, recent_versions: frozenset[str] = frozenset()
    ) -> tuple[Stratum, str]:
        """The trace's stratum and why."""
        if trace.error:
            return Stratum.ERROR, "app error"
        if trace.user_feedback == "negative":
            return Stratum.NEGATIVE_FEEDBACK, "negative user feedback"
        if trace.finish_reason and trace.finish_reason.lower() in _TRUNCATED_OR_FILTERED:
            return Stratum.TRUNCATED, f"finish_reason {trace.finish_reason}"
        if trace.latency_ms is not None and trace.latency_ms > self.latency_bound_ms:
            bound = self.latency_bound_ms
            return Stratum.HIGH_LATENCY, f"latency {trace.latency_ms:.0f} ms > {bound:.0f} ms"
        cost = self.trace_cost(trace)
        if cost is not None and cost > self.high_cost_usd:
            return Stratum.HIGH_COST, f"cost ${cost:.4f} > ${self.high_cost_usd:g}"
        new = [key for key in version_keys(trace) if key in recent_versions]
        if new:
            return Stratum.CANARY, f"new {new[0]}"
        if len(trace.output.strip()) < self.short_output_chars:
            return Stratum.SHORT_OUTPUT, f"output shorter than {self.short_output_chars} chars"
        return Stratum.CONTROL, "control"

    def rate(self, stratum: Stratum, trace: Trace) -> float:
        if stratum is Stratum.CONTROL:
            return self.control_rate(trace)
        return self.stratum_rates.get(stratum, 1.0)

    def decide(self, trace: Trace, recent_versions: frozenset[str] = frozenset()) -> SampleDecision:
        stratum, why = self.stratum(trace, recent_versions)
        rate = self.rate(stratum, trace)
        base = {"stratum": stratum.value, "rate": rate}
        if sample_point(trace.trace_id, self.salt) >= rate:
            return SampleDecision(judge=False, sampled_out=list(self.judges), **base)
        reasons = [f"{why} (stratum {stratum.value}, rate {rate:g})"]
        judges, inclusion, thinned, filtered = [], {}, [], {}
        for name, spec in self.judges.items():
            why_not = spec.applies_when.why_not(trace)
            factor = self.judge_factors.get(name, 1.0)
            if why_not:
                reasons.append(f"{name} skipped: {why_not}")
                filtered[name] = why_not
            elif factor < 1.0 and sample_point(trace.trace_id, f"{self.salt}|{name}") >= factor:
                thinned.append(name)  # this judge's budget thins it; still an unbiased sample
            else:
                judges.append(name)
                inclusion[name] = rate * factor
        if thinned:
            reasons.append(f"thinned by budget: {', '.join(thinned)}")
        return SampleDecision(
            judge=True,
            reasons=reasons,
            judges=judges,
            inclusion=inclusion,
            sampled_out=thinned,
            filtered=filtered,
            **base,
        )


class VersionTracker:
    """When each prompt version and model was first seen, fleet-wide (a Redis hash).

    Versions the fleet saw within ``BASELINE_S`` of its very first trace are the baseline, not
    canaries: a new deployment of Evalfleet would otherwise call all of today's traffic new.
    Samplers keep what they read: a first-seen time never changes.
    """

    BASELINE_S = 600.0
    _FLEET = "__fleet__"

    def __init__(self, client: redis.Redis, window_s: float) -> None:
        self.client = client
        self.window_s = window_s
        self._first_seen: dict[str, float] = {}

    def recent(self, traces: Iterable[Trace], now: float | None = None) -> frozenset[str]:
        now = time.time() if now is None else now
        keys = {key for trace in traces for key in version_keys(trace)}
        unknown = sorted((keys | {self._FLEET}) - self._first_seen.keys())
        if unknown:
            pipe = self.client.pipeline(transaction=False)
            for key in unknown:
                pipe.hsetnx(FIRST_SEEN_KEY, key, repr(now))
            pipe.hmget(FIRST_SEEN_KEY, unknown)
            seen: Any = pipe.execute()[-1]
            for key, value in zip(unknown, seen, strict=True):
                self._first_seen[key] = float(value)
        baseline_until = self._first_seen[self._FLEET] + self.BASELINE_S
        return frozenset(
            k
            for k in keys
            if now - self._first_seen[k] < self.window_s and self._first_seen[k] > baseline_until
        )
