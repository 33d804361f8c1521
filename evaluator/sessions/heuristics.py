"""Session-level heuristics: cheap checks over a whole conversation, run on every completed
session.

A session is scored as one subject (``session:<digest>``) at one version: the set of turns it
held when it completed (see ``tracker``). Score ids include that version, so a session re-opened
by a late turn gets new scores beside the old ones, and a repeated hand-off of the same turns
rewrites the same rows. Like the trace heuristics, a reason never quotes the user's text.

All are low severity: none routes a session to people by itself until its false-alarm rate on
real conversations is measured (as ``bench/false_alarms.py`` does for the trace checks).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from evaluator.evaluators.base import Named
from evaluator.models import (
    SESSION_SUBJECT_PREFIX,
    Level,
    Score,
    ScoreStatus,
    ScoreType,
    Severity,
    Trace,
    stable_id,
)

_WORD = re.compile(r"\w+", re.UNICODE)
_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Session:
    digest: str
    tenant: str | None
    session_id: str
    version: str  # which turns it holds (``CompletedSession.version``)
    turns: tuple[Trace, ...]  # in conversation order
    missing: tuple[str, ...] = ()  # turn ids the store did not hold when it was evaluated
    outcome: bool = False  # any turn was an outcome stratum
    overflow: bool = False  # more turns than the tracker keeps

    @property
    def subject(self) -> str:
        return SESSION_SUBJECT_PREFIX + self.digest


def in_conversation_order(turns: list[Trace]) -> tuple[Trace, ...]:
    """Turns by their start (or end) time; turns without times after timed ones, by id."""
    return tuple(sorted(turns, key=lambda t: (t.started_at or t.ended_at or _NEVER, t.trace_id)))


class SessionEvaluator(Protocol):
    name: ClassVar[str]
    version: ClassVar[str]

    def evaluate(self, session: Session) -> list[Score]:
        """The scores for ``session``; [] when the check does not apply."""


def session_score(evaluator: Named, session: Session, **fields: Any) -> Score:
    """A score of ``evaluator`` on ``session``; its id is derived from the session's digest and
    version, the evaluator and its version."""
    score_id = stable_id(session.subject, session.version, evaluator.name, evaluator.version)
    return Score(
        id=score_id,
        trace_id=session.subject,
        evaluator=evaluator.name,
        evaluator_version=evaluator.version,
        name=evaluator.name,
        level=Level.SESSION,
        metadata={
            "session_id": session.session_id,
            "session_version": session.version,
            "turns": len(session.turns),
        },
        **fields,
    )


def session_error(evaluator: Named, session: Session, reason: str) -> Score:
    """``evaluator`` could not score ``session`` (``status=error``), and why."""
    return session_score(evaluator, session, status=ScoreStatus.ERROR, reason=reason[:500])


class SessionCheck:
    """Base for pass/fail session checks that emit one score named after the check."""

    name: ClassVar[str]
    version: ClassVar[str]
    severity: ClassVar[Severity] = Severity.LOW

    def result(
        self, session: Session, passed: bool, reason: str, value: float | None = None
    ) -> Score:
        return session_score(
            self,
            session,
            data_type=ScoreType.BOOLEAN if value is None else ScoreType.NUMERIC,
            value=(1.0 if passed else 0.0) if value is None else value,
            passed=passed,
            severity=self.severity,
            reason=reason,
        )


def _words(text: str) -> frozenset[str]:
    return frozenset(w.lower() for w in _WORD.findall(text))


@dataclass
class SessionLength(SessionCheck):
    """The conversation took at most ``max_turns`` turns (a long one often means a stuck user)."""

    name: ClassVar[str] = "session_turns"
    version: ClassVar[str] = "1.0.0"
    max_turns: int = 30

    def evaluate(self, session: Session) -> list[Score]:
        n = len(session.turns)
        within = n <= self.max_turns and not session.overflow
        reason = f"{n} turns" + ("" if within else f", over the bound of {self.max_turns}")
        return [self.result(session, within, reason, value=float(n))]


@dataclass
class SessionCost(SessionCheck):
    """The conversation cost at most ``max_usd`` (summed over turns that report a cost)."""

    name: ClassVar[str] = "session_cost"
    version: ClassVar[str] = "1.0.0"
    max_usd: float = 1.0

    def evaluate(self, session: Session) -> list[Score]:
        costs = [t.cost_usd for t in session.turns if t.cost_usd is not None]
        if not costs:
            return []
        total = sum(costs)
        within = total <= self.max_usd
        reason = f"${total:.4f} over {len(costs)} turns" + (
            "" if within else f", over the bound of ${self.max_usd:g}"
        )
        return [self.result(session, within, reason, value=total)]


@dataclass
class UserRepeats(SessionCheck):
    """The user asked the same thing again within a few turns: the answer did not help.

    Two requests repeat when their word sets overlap by at least ``similarity`` (Jaccard) and
    each has at least ``min_words`` words, or when they are the same text."""

    name: ClassVar[str] = "user_repeats"
    version: ClassVar[str] = "1.0.0"
    similarity: float = 0.6
    min_words: int = 3
    window: int = 3

    def evaluate(self, session: Session) -> list[Score]:
        asked = [_words(t.input) for t in session.turns]
        texts = [" ".join(t.input.lower().split()) for t in session.turns]
        for later in range(1, len(asked)):
            for earlier in range(max(0, later - self.window), later):
                a, b = asked[earlier], asked[later]
                if not texts[later]:
                    continue
                same = texts[earlier] == texts[later]
                overlap = len(a & b) / len(a | b) if a | b else 0.0
                if same or (min(len(a), len(b)) >= self.min_words and overlap >= self.similarity):
                    reason = (
                        f"turn {later + 1} repeats turn {earlier + 1} (word overlap {overlap:.2f})"
                    )
                    return [self.result(session, False, reason)]
        if len(session.turns) < 2:
            return []
        return [self.result(session, True, f"no request repeated in {len(asked)} turns")]


_FRUSTRATION = re.compile(
    r"\b(?:not\s+what\s+I\s+(?:asked|meant|wanted)|you(?:'re|\s+are)\s+not\s+(?:listening|helping)"
    r"|that(?:'s|\s+is)\s+(?:wrong|not\s+(?:right|correct|it))|(?:this|you)\s+(?:is|are)\s+useless"
    r"|(?:talk|speak)\s+to\s+(?:a|an)\s+(?:human|person|agent|real\s+person)|real\s+person"
    r"|I\s+already\s+(?:said|told\s+you|asked)|still\s+(?:not\s+working|doesn't\s+work|wrong)"
    r"|doesn't\s+(?:help|work)|does\s+not\s+(?:help|work)|waste\s+of\s+time|forget\s+it)\b",
    re.IGNORECASE,
)


@dataclass
class UserFrustration(SessionCheck):
    """The user said the answers were wrong or unhelpful, or asked for a person."""

    name: ClassVar[str] = "user_frustration"
    version: ClassVar[str] = "1.0.0"

    def evaluate(self, session: Session) -> list[Score]:
        flagged = [n + 1 for n, t in enumerate(session.turns) if _complains(t)]
        if flagged:
            turns = ", ".join(str(n) for n in flagged[:10])
            return [self.result(session, False, f"frustration or a request for a person in "
                                                f"turn {turns}")]  # fmt: skip
        return [self.result(session, True, "no sign of frustration")]


_TRUNCATED = {"length", "max_tokens", "content_filter"}


def _complains(turn: Trace) -> bool:
    # Bounded input: a request is searched in its first 10,000 characters.
    return _FRUSTRATION.search(turn.input[:10_000]) is not None


@dataclass
class SessionUnresolved(SessionCheck):
    """The conversation ended on a failure: the last turn errored, was cut off, got negative
    feedback, or the user's last message was a complaint."""

    name: ClassVar[str] = "session_unresolved"
    version: ClassVar[str] = "1.0.0"

    def evaluate(self, session: Session) -> list[Score]:
        if not session.turns:
            return []
        last = session.turns[-1]
        why = (
            "the last turn failed" if last.error
            else "the last answer was cut off" if (last.finish_reason or "") in _TRUNCATED
            else "the last answer got negative feedback" if last.user_feedback == "negative"
            else "the user's last message was a complaint" if _complains(last)
            else ""
        )  # fmt: skip
        if why:
            return [self.result(session, False, f"{why} (turn {len(session.turns)})")]
        return [self.result(session, True, "ended on an answer")]


SESSION_HEURISTICS: tuple[Callable[[], SessionEvaluator], ...] = (
    SessionLength,
    SessionCost,
    UserRepeats,
    UserFrustration,
    SessionUnresolved,
)


def session_evaluators() -> list[SessionEvaluator]:
    return [kind() for kind in SESSION_HEURISTICS]
