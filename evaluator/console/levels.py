"""Results above the turn, read back from the SQL store: trajectory checks over agent runs and
session checks over completed conversations, for the demo's summary.

Scores are told apart by their stored level (``sinks.sql.LEVEL``: a row from before the
column reads as a session score when its subject is ``session:<digest>``, else as a turn's).
A session re-opened by a late turn
is evaluated again at a new version: every version counts in the pass rates (each was an
evaluation), and a session is listed once among the worst, at its latest version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func
from sqlmodel import col, select

from evaluator.evaluators.trajectory import TRAJECTORY_HEURISTICS
from evaluator.models import SESSION_SUBJECT_PREFIX, Level, ScoreStatus
from evaluator.sinks.sql import LEVEL, SQLStore
from evaluator.store.tables import ScoreRecord

_TRAJECTORY_CHECKS = tuple(check.name for check in TRAJECTORY_HEURISTICS)  # in report order


@dataclass
class CheckCounts:
    """One check's results: how many evaluations, passed, failed, could not score."""

    name: str
    count: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0

    @property
    def pass_rate(self) -> float | None:
        judged = self.passed + self.failed
        return self.passed / judged if judged else None

    def add(self, passed: bool | None, status: str) -> None:
        self.count += 1
        if status == ScoreStatus.ERROR.value:
            self.errors += 1
        elif passed is True:
            self.passed += 1
        elif passed is False:
            self.failed += 1


@dataclass(frozen=True)
class WorstSession:
    subject: str
    session_id: str
    tenant: str | None
    turns: int
    failed: tuple[tuple[str, str], ...]  # (check, reason), in check order


@dataclass
class LevelSummary:
    agent_runs: int = 0  # traces with at least one trajectory score
    trajectory: list[CheckCounts] = field(default_factory=list)
    sessions: int = 0  # distinct sessions with at least one session score
    session_checks: list[CheckCounts] = field(default_factory=list)
    worst_sessions: list[WorstSession] = field(default_factory=list)


def sessions_scored(store: SQLStore) -> int:
    """How many distinct sessions have scores (cheap: one indexed count)."""
    query = select(func.count(func.distinct(ScoreRecord.trace_id))).where(
        col(ScoreRecord.trace_id).startswith(SESSION_SUBJECT_PREFIX)
    )
    with store.session() as session:
        return int(session.exec(query).one())


def _counts(rows: dict[str, CheckCounts], name: str) -> CheckCounts:
    if name not in rows:
        rows[name] = CheckCounts(name)
    return rows[name]


def level_summary(store: SQLStore, worst: int = 5) -> LevelSummary:
    """Trajectory and session results in the store, with the ``worst`` sessions: most failed
    checks first (then most turns, then subject, so the order is stable)."""
    summary = LevelSummary()
    trajectory: dict[str, CheckCounts] = {}
    runs: set[str] = set()
    with store.session() as session:
        at_level = {
            level: list(session.exec(select(ScoreRecord).where(LEVEL.in_([level.value]))))
            for level in (Level.TRAJECTORY, Level.SESSION)
        }
    trajectory_rows, session_rows = at_level[Level.TRAJECTORY], at_level[Level.SESSION]
    for row in trajectory_rows:
        runs.add(row.trace_id)
        _counts(trajectory, row.evaluator).add(row.passed, row.status)
    summary.agent_runs = len(runs)
    order = {name: i for i, name in enumerate(_TRAJECTORY_CHECKS)}  # judges after the checks
    summary.trajectory = sorted(trajectory.values(), key=lambda c: (order.get(c.name, 99), c.name))
    checks: dict[str, CheckCounts] = {}
    # subject -> (its latest version's time, that version, its rows)
    latest: dict[str, tuple[datetime, str, list[ScoreRecord]]] = {}
    for row in session_rows:
        _counts(checks, row.evaluator).add(row.passed, row.status)
        version = str(row.details.get("session_version", ""))
        seen = latest.get(row.trace_id)
        if seen is None or (seen[1] != version and row.created_at > seen[0]):
            latest[row.trace_id] = (row.created_at, version, [row])
        elif seen[1] == version:
            seen[2].append(row)
    summary.sessions = len(latest)
    summary.session_checks = sorted(checks.values(), key=lambda c: c.name)
    ranked = sorted(
        (_worst(subject, rows) for subject, (_, _, rows) in latest.items()),
        key=lambda w: (-len(w.failed), -w.turns, w.subject),
    )
    summary.worst_sessions = [w for w in ranked if w.failed][:worst]
    return summary


def _worst(subject: str, rows: list[ScoreRecord]) -> WorstSession:
    failed = sorted(
        (r.evaluator, r.reason)
        for r in rows
        if r.passed is False and r.status == ScoreStatus.OK.value
    )
    return WorstSession(
        subject=subject,
        session_id=str(rows[0].details.get("session_id", "")),
        tenant=rows[0].tenant,
        turns=int(rows[0].details.get("turns", 0)),
        failed=tuple(failed),
    )
