"""The demo's summary above the turn (evaluator/console/levels.py), read back from a real store:
trajectory checks per agent run, session checks per evaluation, the worst sessions at their
latest version, and the rendering of all three."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rich.console import Console

from evaluator.console.levels import level_summary, sessions_scored
from evaluator.console.report import render_levels
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import ScoreRecord

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def record(trace_id: str, evaluator: str, passed: bool | None, **fields: object) -> ScoreRecord:
    values: dict[str, object] = {
        "id": f"{trace_id}/{evaluator}/{fields.get('details', {})}"[:32],
        "trace_id": trace_id, "evaluator": evaluator, "evaluator_version": "1.0.0",
        "name": evaluator, "data_type": "boolean", "passed": passed, "severity": "low",
        "status": "ok", "reason": f"{evaluator} said so", "created_at": T0,
    }  # fmt: skip
    values.update(fields)
    return ScoreRecord(**values)  # type: ignore[arg-type]


def session_record(subject: str, evaluator: str, passed: bool, version: str, minute: int,
                   turns: int = 3) -> ScoreRecord:  # fmt: skip
    details = {"session_id": subject.removeprefix("session:"), "session_version": version,
               "turns": turns}  # fmt: skip
    return record(subject, evaluator, passed, details=details, tenant="acme",
                  created_at=T0 + timedelta(minutes=minute),
                  id=f"{subject}{evaluator}{version}"[-32:])  # fmt: skip


def test_trajectory_and_session_results_summarised(sqlite_url: str) -> None:
    store = SQLStore(sqlite_url)
    rows = [
        record("run-1", "tool_errors", False, level="trajectory"),
        record("run-1", "tool_loop", True, level="trajectory"),
        record("run-2", "tool_errors", True, level="trajectory"),
        record("run-2", "tool_loop", None, status="error", level="trajectory"),
        record("run-1", "length_bounds", True),  # a turn check: not a trajectory's
        # chat-a: evaluated twice (re-opened by a late turn); its latest version passes.
        session_record("session:chat-a", "user_repeats", False, "v1", 0),
        session_record("session:chat-a", "user_frustration", False, "v1", 0),
        session_record("session:chat-a", "user_repeats", True, "v2", 5, turns=4),
        session_record("session:chat-a", "user_frustration", False, "v2", 5, turns=4),
        session_record("session:chat-b", "user_repeats", False, "v1", 1),
        session_record("session:chat-b", "user_frustration", False, "v1", 1),
        session_record("session:chat-c", "user_repeats", True, "v1", 2),
        session_record("session:chat-c", "user_frustration", True, "v1", 2),
    ]  # fmt: skip
    with store.session() as session:
        session.add_all(rows)
        session.commit()
    try:
        summary = level_summary(store)
        assert sessions_scored(store) == 3
    finally:
        store.close()

    assert summary.agent_runs == 2
    by_check = {c.name: c for c in summary.trajectory}
    assert list(by_check) == ["tool_errors", "tool_loop"]  # the registry's order
    assert (by_check["tool_loop"].passed, by_check["tool_loop"].errors) == (1, 1)
    assert by_check["tool_errors"].pass_rate == 0.5
    assert summary.sessions == 3
    repeats = next(c for c in summary.session_checks if c.name == "user_repeats")
    assert (repeats.count, repeats.passed, repeats.failed) == (4, 2, 2)  # every evaluation
    worst = [(w.session_id, w.turns, [check for check, _ in w.failed]) for w in
             summary.worst_sessions]  # fmt: skip
    assert worst == [
        ("chat-b", 3, ["user_frustration", "user_repeats"]),
        ("chat-a", 4, ["user_frustration"]),  # its latest version only
    ]

    console = Console(width=160, record=True)
    render_levels(summary, console)
    shown = console.export_text()
    assert "Trajectory checks (2 agent runs)" in shown
    assert "Sessions (3 evaluated)" in shown and "Worst sessions" in shown
    assert "user_repeats said so" in shown and "chat-c" not in shown  # chat-c failed nothing


def test_nothing_above_the_turn_renders_nothing(sqlite_url: str) -> None:
    store = SQLStore(sqlite_url)
    try:
        summary = level_summary(store)
    finally:
        store.close()
    console = Console(width=120, record=True)
    render_levels(summary, console)
    assert console.export_text() == ""
