"""Work items: what the sampler, the requeue, the ledger's reaper and re-evaluation hand to the
workers, typed once and read back once.

``HeuristicsWork`` is one sampled-or-not trace for the heuristics; ``JudgeWork`` is one trace
and the judges to run on it. On the broker each is a JSON object whose ``trace`` is the trace's
JSON **as the app published it** (a string): the sampler never re-encodes a trace (it validated
those very bytes) and the payload a worker stores for re-dispatch is exactly what was published.
``heuristics_entry``/``judge_entry`` build that wire form (the only place that does);
``from_wire`` parses it, trace included, once per process, and gives a reason instead of raising
when an entry is not valid (it is dead-lettered with that reason).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from evaluator.models import SampleDecision, Trace, parse_trace

# The wire form of a work item (a Celery task argument, an in-flight record's value).
WireEntry = dict[str, Any]


def heuristics_entry(entry_id: str, payload: str, decision: SampleDecision) -> WireEntry:
    """A trace for the heuristics worker: its stream entry id, JSON and sampling decision."""
    return {"id": entry_id, "trace": payload, "decision": decision.model_dump()}


def judge_entry(
    entry_id: str,
    payload: str,
    judges: list[str],
    inclusion: Mapping[str, float],
    since: float,
    attempt: int = 1,
    run: str | None = None,
    run_cap: float | None = None,
    calls: Mapping[str, int] | None = None,
) -> WireEntry:
    """A trace for the judge worker: which judges, each one's inclusion probability (for the
    weighted estimates), when the work was first handed out (``since``: a deferred call gives
    up after EVALFLEET_JUDGE_GIVE_UP_AFTER_S from then), the dispatch attempt, the
    re-evaluation run and its spend cap (live work has neither), and the requests each judge
    already made in earlier dispatches (``calls``: deferred work; its judge_calls row counts
    them too)."""
    entry: WireEntry = {
        "id": entry_id,
        "trace": payload,
        "judges": list(judges),
        "inclusion": dict(inclusion),
        "since": since,
        "attempt": attempt,
    }
    if run is not None:
        entry["run"] = run
    if run_cap is not None:
        entry["run_cap"] = run_cap
    if calls:
        entry["calls"] = dict(calls)
    return entry


class _Work(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(description="The stream entry id (or the reaper's / a run's own id).")
    trace: Trace
    _payload: str = PrivateAttr(default="")

    @property
    def payload(self) -> str:
        """The trace's JSON as published."""
        return self._payload or self.trace.model_dump_json()

    @classmethod
    def from_wire(cls, entry: Mapping[str, Any], max_trace_bytes: int) -> Self | str:
        """The typed item, or why the entry is not one (never raises)."""
        raw = entry.get("trace") if isinstance(entry, Mapping) else None
        if not isinstance(raw, str):
            return "work entry has no trace"
        trace = parse_trace(raw, max_trace_bytes)
        if isinstance(trace, str):  # only when sampler and worker run different versions
            return f"worker: {trace}"
        try:
            item = cls.model_validate({**entry, "trace": trace})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
                for error in exc.errors(include_url=False)
            )
            return f"worker: invalid {cls.__name__} entry ({problems})"[:1000]
        item._payload = raw
        return item


class HeuristicsWork(_Work):
    decision: SampleDecision

    def to_wire(self) -> WireEntry:
        return heuristics_entry(self.id, self.payload, self.decision)


class JudgeWork(_Work):
    judges: list[str]
    inclusion: dict[str, float] = Field(default_factory=dict)
    since: float
    attempt: int = Field(default=1, ge=1)
    run: str | None = None
    run_cap: float | None = None
    calls: dict[str, int] = Field(default_factory=dict)

    def inclusion_of(self, judge: str) -> float:
        """P(this judge's evaluation ran on the trace); 1 when it was not sampled."""
        return self.inclusion.get(judge, 1.0)

    def calls_before(self, judge: str) -> int:
        """Requests ``judge`` made for this trace in earlier dispatches (before a deferral)."""
        return self.calls.get(judge, 0)

    def later(self, judges: Mapping[str, int]) -> WireEntry:
        """The same work for the deferred ``judges`` only (each -> the requests it made in
        this dispatch), as its next dispatch attempt."""
        calls = {name: self.calls_before(name) + made for name, made in judges.items()}
        return judge_entry(
            self.id, self.payload, list(judges), self.inclusion, self.since, self.attempt + 1,
            self.run, self.run_cap, calls,
        )  # fmt: skip

    def to_wire(self) -> WireEntry:
        return judge_entry(
            self.id, self.payload, self.judges, self.inclusion, self.since, self.attempt,
            self.run, self.run_cap, self.calls,
        )  # fmt: skip
