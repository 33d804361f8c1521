"""Session judges: which completed sessions they see, and the judge work that takes them there.

A completed session is sampled for the session-level judges (``level: session``) once per
evaluation version, deterministically: its sample point is a hash of its digest and version,
so a repeated hand-off decides the same. Two strata: ``outcome`` (a turn had an error or
negative feedback, or the tracker saw an outcome stratum in it), judged at rate 1.0, and
``control`` at ``EVALFLEET_SESSION_JUDGE_SAMPLE_RATE``; the rate is the session's inclusion
probability, recorded on its ledger rows and scores so estimates over sessions stay unbiased.

A sampled session becomes ordinary judge work: its conversation as one Trace
(``conversation.session_trace``) in a ``judge_entry`` on the judges queue, with ledger rows
``queued`` / ``sampled_out`` / ``filtered`` built by the same ``decision_rows`` the trace path
uses. The evaluation version of a session judge is ``<judge version>/<session version>``
(``judging.files.evaluation_spec``, the session heuristics' rule), so:

- a session re-opened by a late turn completes with other turns, hence a new version: new
  ledger rows, new score ids, new judge work — a second evaluation beside the first;
- a repeated hand-off of the same version finds its ledger rows already there and dispatches
  nothing and writes nothing for those judges (``already_decided``). Work is dispatched before
  its rows are written, as the sampler dispatches before it acknowledges: a task that dies in
  between runs again and dispatches again (at least once, never lost); the judge worker's
  writes are upserts on the same ids, so a second delivery changes nothing in effect.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import col, select

from evaluator.judging.files import Judge, evaluation_spec, judge_level
from evaluator.ledger import decision_rows
from evaluator.models import Level, SampleDecision, Trace, sample_point, stable_id
from evaluator.sessions.conversation import answered_tool_calls, without_dangling_parents
from evaluator.sessions.heuristics import Session
from evaluator.settings import Settings
from evaluator.sinks.sql import payload_row
from evaluator.store.database import Database
from evaluator.store.tables import LedgerRecord
from evaluator.work import WireEntry, judge_entry

OUTCOME, CONTROL = "outcome", "control"


def session_judges(judges: Mapping[str, Judge], settings: Settings) -> dict[str, Judge]:
    """The enabled session-level judges (none when no judge endpoint is configured)."""
    if not settings.judge_endpoint_configured:
        return {}
    return {
        name: spec
        for name, spec in judges.items()
        if name in settings.enabled_judges and judge_level(spec) is Level.SESSION
    }


def is_outcome(session: Session) -> bool:
    """A turn had an error or negative feedback (or the tracker saw an outcome stratum)."""
    return session.outcome or any(
        turn.error or turn.user_feedback == "negative" for turn in session.turns
    )


def decide(
    session: Session, trace: Trace, judges: Mapping[str, Judge], settings: Settings
) -> SampleDecision:
    """The session's verdict for the session judges (see the module docstring)."""
    stratum = OUTCOME if is_outcome(session) else CONTROL
    rate = 1.0 if stratum == OUTCOME else settings.session_judge_sample_rate
    base = {"stratum": stratum, "rate": rate}
    point = sample_point(f"{session.digest}/{session.version}", f"{settings.sampling_salt}|session")
    if point >= rate:
        return SampleDecision(judge=False, sampled_out=list(judges), **base)
    applying, filtered = [], {}
    for name, spec in judges.items():
        why_not = spec.applies_when.why_not(trace)
        if why_not:
            filtered[name] = why_not
        else:
            applying.append(name)
    return SampleDecision(
        judge=True,
        reasons=[f"session (stratum {stratum}, rate {rate:g})"],
        judges=applying,
        inclusion=dict.fromkeys(applying, rate),
        filtered=filtered,
        **base,
    )


def already_decided(store: Database, row_ids: Sequence[str]) -> set[str]:
    """The ledger row ids among ``row_ids`` that exist (an earlier hand-off wrote them)."""
    found: set[str] = set()
    with store.session() as session:
        for start in range(0, len(row_ids), 500):
            chunk = list(row_ids[start : start + 500])
            query = select(LedgerRecord.id).where(col(LedgerRecord.id).in_(chunk))
            found.update(session.exec(query))
    return found


@dataclass(frozen=True)
class JudgeHandOff:
    """What the session task needs to judge sessions: the enabled session judges, the
    settings (rates, salt, deadlines, payload size) and the hand-off to the judges queue."""

    judges: Mapping[str, Judge]
    settings: Settings
    dispatch: Callable[[list[WireEntry]], None]


@dataclass
class SessionJudging:
    """The judge work of a batch of completed sessions: what to dispatch, what to record."""

    entries: list[WireEntry] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    # Each decided session's Trace at this version: what the reaper re-dispatches and a
    # re-evaluation of a session judge reads (``evaluation.reeval``).
    payloads: list[dict[str, Any]] = field(default_factory=list)
    sampled: int = 0


def plan(
    sessions: Sequence[Session],
    session_traces: Mapping[str, Trace],
    judges: Mapping[str, Judge],
    store: Database,
    settings: Settings,
    now: datetime,
) -> SessionJudging:
    """Decide each session, leave out the judges an earlier hand-off of the same version
    already decided, and build the judge entries and ledger rows of the rest.
    ``session_traces``: each session's Trace by subject (``conversation.session_trace``); a
    session without one (none of its turns stored) has nothing a judge could read."""
    out = SessionJudging()
    sessions = [s for s in sessions if s.subject in session_traces]
    if not judges or not sessions:
        return out
    traces = [fit_to_bytes(session_traces[s.subject], settings.max_trace_bytes) for s in sessions]
    versioned = [{n: evaluation_spec(spec, t) for n, spec in judges.items()} for t in traces]
    ids = [
        stable_id(t.trace_id, spec.name, spec.version)
        for t, specs in zip(traces, versioned, strict=True)
        for spec in specs.values()
    ]
    known = already_decided(store, ids)
    for session, trace, specs in zip(sessions, traces, versioned, strict=True):
        fresh = {
            name: spec
            for name, spec in specs.items()
            if stable_id(trace.trace_id, spec.name, spec.version) not in known
        }
        if not fresh:
            continue
        decision = decide(session, trace, fresh, settings)
        out.ledger += decision_rows(trace.trace_id, decision, fresh, settings, now)
        payload = trace.model_dump_json(exclude_none=True)
        out.payloads.append(payload_row(trace, payload, trace.ended_at or now))
        if decision.judges:
            out.sampled += 1
            entry_id = f"{session.subject}:{session.version}"
            out.entries.append(
                judge_entry(entry_id, payload, decision.judges, decision.inclusion, time.time())
            )  # fmt: skip
    return out


def fit_to_bytes(trace: Trace, max_bytes: int) -> Trace:
    """``trace`` with the middle of its messages and steps dropped until its JSON fits in
    ``max_bytes`` (the judge worker refuses a larger payload); ``metadata.judge_fitted`` then
    says how many of each were dropped. The judge prompt has its own, tighter rule."""
    fitted = trace
    messages, steps = list(trace.messages or ()), list(trace.steps or ())
    dropped = {"messages": 0, "steps": 0}
    while _size(fitted) > max_bytes and (len(messages) > 2 or len(steps) > 2):
        messages, cut_messages = _halve(messages)
        steps, cut_steps = _halve(steps, failed=lambda step: step.error is not None)
        if not cut_messages and not cut_steps:
            break  # all that is left is kept by the rule: the judge worker will say so
        dropped = {"messages": dropped["messages"] + cut_messages,
                   "steps": dropped["steps"] + cut_steps}  # fmt: skip
        steps = without_dangling_parents(steps)
        update = {
            "messages": answered_tool_calls(messages) or None,
            "steps": steps or None,
            "metadata": {**trace.metadata, "judge_fitted": dropped},
        }
        fitted = trace.model_copy(update=update)
    return fitted


def _size(trace: Trace) -> int:
    return len(trace.model_dump_json(exclude_none=True).encode())


def _halve(
    items: list[Any], failed: Callable[[Any], bool] = lambda _: False
) -> tuple[list[Any], int]:
    """The first and last quarter kept, the middle half dropped but for what ``failed``."""
    if len(items) <= 2:
        return items, 0
    keep = max(1, len(items) // 4)
    middle = [item for item in items[keep:-keep] if failed(item)]
    kept = items[:keep] + middle + items[-keep:]
    return kept, len(items) - len(kept)
