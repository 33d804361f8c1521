"""Which traces get the expensive judges: a pure function of the trace and the policy."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from evaluator.judges import Judge
from evaluator.models import SampleDecision, Trace
from evaluator.settings import Settings

_TRUNCATED_OR_FILTERED = {"length", "max_tokens", "content_filter"}


def sample_point(trace_id: str, salt: str = "") -> float:
    """A uniform number in [0, 1) derived from the trace id: the same id always lands the same."""
    digest = hashlib.blake2b(f"{salt}{trace_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class SamplingPolicy:
    """Base rate, per-tenant/feature overrides, and rules that always send a trace to the judges."""

    base_rate: float = 0.1
    overrides: dict[str, float] = field(default_factory=dict)
    latency_bound_ms: float = 20_000
    short_output_chars: int = 20
    salt: str = ""
    judges: dict[str, Judge] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls, settings: Settings, judges: dict[str, Judge] | None = None
    ) -> SamplingPolicy:
        return cls(
            base_rate=settings.judge_sample_rate,
            overrides=dict(settings.sample_rate_overrides),
            latency_bound_ms=settings.always_evaluate_latency_ms,
            short_output_chars=settings.always_evaluate_short_output_chars,
            salt=settings.sampling_salt,
            judges=judges or {},
        )

    def rate_for(self, trace: Trace) -> float:
        """Feature override, else tenant override, else the base rate."""
        for key in (f"feature:{trace.feature}", f"tenant:{trace.tenant}"):
            if key in self.overrides:
                return self.overrides[key]
        return self.base_rate

    def always_reasons(self, trace: Trace) -> list[str]:
        """The always-evaluate rules this trace triggers."""
        reasons = []
        if trace.error:
            reasons.append("app error")
        if trace.latency_ms is not None and trace.latency_ms > self.latency_bound_ms:
            reasons.append(f"latency {trace.latency_ms:.0f} ms > {self.latency_bound_ms:.0f} ms")
        if len(trace.output.strip()) < self.short_output_chars:
            reasons.append(f"output shorter than {self.short_output_chars} chars")
        if trace.finish_reason and trace.finish_reason.lower() in _TRUNCATED_OR_FILTERED:
            reasons.append(f"finish_reason {trace.finish_reason}")
        if trace.user_feedback == "negative":
            reasons.append("negative user feedback")
        return reasons

    def decide(self, trace: Trace) -> SampleDecision:
        rate = self.rate_for(trace)
        reasons = self.always_reasons(trace)
        if not reasons and sample_point(trace.trace_id, self.salt) < rate:
            reasons = [f"sampled at rate {rate:g}"]
        if not reasons:
            return SampleDecision(judge=False, reasons=[], rate=rate)
        judges = []
        for name, spec in self.judges.items():
            why_not = spec.applies_when.why_not(trace)
            if why_not:
                reasons.append(f"{name} skipped: {why_not}")
            else:
                judges.append(name)
        return SampleDecision(judge=True, reasons=reasons, rate=rate, judges=judges)
