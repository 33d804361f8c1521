"""Evaluating completed sessions: their turns read back from the store, the session evaluators
run on the whole conversation, scores and ledger rows written in one transaction.

A session is handed over when the tracker decides it is complete; its turns reach the store
through their heuristics batches, which may still be on their way (a turn published a moment
before the quiet period ended). A session with turns missing waits, up to ``patience_s`` after
its last turn; then it is evaluated with the turns there are, and says which were missing.
Writes are upserts keyed on (session, version, evaluator), so a repeated hand-off changes
nothing.

With session judges enabled, the evaluated sessions are also sampled for them and the sampled
ones handed to the judge workers as ordinary judge work (``sessions.judging``), before the
batch's rows are written.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlmodel import col, select

from evaluator.evaluators.base import run_on
from evaluator.judging.files import Judge
from evaluator.ledger import LedgerState, ledger_row
from evaluator.models import Score, ScoreStatus, Trace, parse_trace
from evaluator.ops import metrics
from evaluator.sessions.conversation import session_trace
from evaluator.sessions.heuristics import (
    Session,
    SessionEvaluator,
    in_conversation_order,
    session_error,
    session_evaluators,
)
from evaluator.sessions.judging import JudgeHandOff, plan, session_judges
from evaluator.sessions.tracker import CompletedSession
from evaluator.settings import Settings
from evaluator.sinks.base import Sink
from evaluator.sinks.outbox import outbox_rows
from evaluator.sinks.sql import SQLStore, score_row
from evaluator.store.tables import TracePayloadRecord

# Routes a session's scores to human review with its session Trace (``ReviewRouter.hand_off``).
RouteToReview = Callable[[Trace, list[Score]], object]


@dataclass
class SessionOutcome:
    evaluated: int = 0
    scores: int = 0
    waiting: list[CompletedSession] = field(default_factory=list)  # turns still on their way
    judged: int = 0  # sessions handed to the session judges


def stored_turns(store: SQLStore, trace_ids: Sequence[str], max_bytes: int) -> dict[str, Trace]:
    """The stored payloads of these traces, parsed (each was valid when it was published)."""
    found: dict[str, Trace] = {}
    with store.session() as session:
        for start in range(0, len(trace_ids), 500):
            query = select(TracePayloadRecord.trace_id, TracePayloadRecord.payload).where(
                col(TracePayloadRecord.trace_id).in_(trace_ids[start : start + 500])
            )
            for trace_id, payload in session.exec(query):
                parsed = parse_trace(payload, max_bytes)
                if isinstance(parsed, Trace):
                    found[trace_id] = parsed
    return found


def evaluate_sessions(
    completed: Sequence[CompletedSession],
    store: SQLStore,
    evaluators: Sequence[SessionEvaluator],
    *,
    max_trace_bytes: int,
    budget_s: float,
    patience_s: float,
    now_ms: int | None = None,
    judging: JudgeHandOff | None = None,
    sinks: Sequence[Sink] = (),
    review: RouteToReview | None = None,
) -> SessionOutcome:
    """Evaluate the completed sessions whose turns are stored (the rest wait, see the module
    docstring); write scores, ledger rows, outbox rows and the kept session Traces in one
    transaction; then hand failing scores to ``review`` with their session's Trace."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    outcome = SessionOutcome()
    turns = stored_turns(store, [t for s in completed for t in s.turn_ids], max_trace_bytes)
    score_rows, ledger = [], []
    evaluated: list[Session] = []
    scored: list[Score] = []
    written_at = datetime.fromtimestamp(now / 1000, UTC)
    for done in completed:
        missing = tuple(t for t in done.turn_ids if t not in turns)
        if missing and now - done.last_ms < patience_s * 1000:
            outcome.waiting.append(done)
            continue
        session = Session(
            digest=done.digest,
            tenant=done.tenant,
            session_id=done.session_id,
            version=done.version,
            turns=in_conversation_order([turns[t] for t in done.turn_ids if t in turns]),
            missing=missing,
            outcome=done.outcome,
            overflow=done.overflow,
        )
        evaluated.append(session)
        scores = run_on(evaluators, session, session_error, budget_s, "session")
        scored += scores
        for score in scores:
            if missing:
                score.metadata["missing_turns"] = len(missing)
            score_rows.append(score_row(score, session.tenant, None, None))
        for evaluator in evaluators:
            # One ledger row per session x evaluator x version; the session's version (which
            # turns it held) is part of the evaluation's version.
            version = f"{evaluator.version}/{session.version}"
            failed = [
                s for s in scores
                if s.evaluator == evaluator.name and s.status is ScoreStatus.ERROR
            ]  # fmt: skip
            state = LedgerState.FAILED if failed else LedgerState.DONE
            reason = failed[0].reason if failed else ""
            ledger.append(
                ledger_row(
                    session.subject,
                    evaluator.name,
                    version,
                    state,
                    written_at,
                    reason=reason,
                    stratum="outcome" if session.outcome else None,
                    inclusion=1.0,
                )
            )
        outcome.evaluated += 1
        outcome.scores += len(scores)
    # Each session as one Trace, built once: for its judges, the sinks and review.
    wanted = judging is not None or bool(sinks) or review is not None
    traces = {s.subject: session_trace(s) for s in evaluated if s.turns} if wanted else {}
    payloads: list[dict[str, Any]] = []
    if judging is not None and evaluated:
        work = plan(evaluated, traces, judging.judges, store, judging.settings, written_at)
        if work.entries:  # dispatched before the rows are written: see sessions.judging
            judging.dispatch(work.entries)
        ledger += work.ledger
        payloads = work.payloads
        outcome.judged = work.sampled
    if score_rows or ledger:
        # Session scores reach the external sinks as a heuristics batch's do: outbox rows
        # written with them, each score against its session's Trace (sessions.conversation).
        ready = [score for score in scored if score.trace_id in traces]
        outbox = outbox_rows(sinks, ready, traces, datetime.now(UTC))
        store.write_batch(
            [], score_rows, [], ledger=ledger, outbox=outbox, latest_payloads=payloads
        )
        if review is not None:  # after the scores are stored, as a heuristics batch does
            by_subject: dict[str, list[Score]] = defaultdict(list)
            for score in ready:
                by_subject[score.trace_id].append(score)
            for subject, scores_of in by_subject.items():
                review(traces[subject], scores_of)
        metrics.record_scores(scored, {})
    return outcome


# Hands sessions whose turns are still on their way back to the queue, after a delay (seconds).
RequeueSessions = Callable[[list[dict[str, Any]], float], None]


def session_batch(
    entries: Sequence[dict[str, Any]],
    store: SQLStore,
    settings: Settings,
    requeue: RequeueSessions,
    evaluators: Sequence[SessionEvaluator] | None = None,
    judges: Mapping[str, Judge] | None = None,
    dispatch_judges: Callable[[list[dict[str, Any]]], None] | None = None,
    sinks: Sequence[Sink] = (),
    review: RouteToReview | None = None,
) -> dict[str, int]:
    """What the session task does: evaluate the completed sessions of ``entries`` (their wire
    form), and send the ones still waiting for a turn back after a short delay. ``judges``
    (every judge the worker knows) and ``dispatch_judges`` (the hand-off to the judges queue):
    the enabled session judges among them get the sampled sessions. ``review``: failing session
    scores go to people (``ReviewRouter.hand_off``), as a turn's do."""
    completed = [CompletedSession.from_wire(entry) for entry in entries]
    enabled = session_judges(judges or {}, settings)
    judging = (
        JudgeHandOff(enabled, settings, dispatch_judges)
        if enabled and dispatch_judges is not None
        else None
    )
    outcome = evaluate_sessions(
        completed,
        store,
        session_evaluators() if evaluators is None else evaluators,
        max_trace_bytes=settings.max_trace_bytes,
        budget_s=settings.evaluator_budget_s,
        patience_s=settings.session_patience_s,
        judging=judging,
        sinks=sinks,
        review=review,
    )
    if outcome.waiting:
        delay = min(30.0, max(1.0, settings.session_patience_s / 10))
        requeue([session.wire() for session in outcome.waiting], delay)
    metrics.SESSIONS_EVALUATED.inc(outcome.evaluated)
    return {
        "sessions": outcome.evaluated,
        "scores": outcome.scores,
        "waiting": len(outcome.waiting),
    }
