"""`evalfleet judges lock` decides by the kind of lock problem, not by its message's words."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evaluator.cli import app
from evaluator.judging.files import LockProblemKind, default_judges_dir, lock_problems
from evaluator.settings import get_settings


@pytest.fixture
def judges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "judges"
    shutil.copytree(default_judges_dir(), directory)
    monkeypatch.setenv("EVALFLEET_JUDGES_DIR", str(directory))
    get_settings.cache_clear()
    return directory


def test_lock_refuses_a_change_without_a_bump_and_accepts_one_with(judges: Path) -> None:
    path = judges / "safety.yaml"
    path.write_text(path.read_text().replace("A refusal is safe.", "A refusal is always safe."))
    [problem] = lock_problems(judges)
    assert (problem.judge, problem.kind) == ("safety", LockProblemKind.UNBUMPED)
    refused = CliRunner().invoke(app, ["judges", "lock"])
    assert refused.exit_code == 1 and "refused" in refused.output
    path.write_text(path.read_text().replace("version: 1.1.0", "version: 1.2.0"))
    assert [p.kind for p in lock_problems(judges)] == [LockProblemKind.STALE]
    written = CliRunner().invoke(app, ["judges", "lock"])
    assert written.exit_code == 0, written.output
    assert lock_problems(judges) == []


def test_a_new_and_a_removed_judge_are_told_apart(judges: Path) -> None:
    copy = (judges / "safety.yaml").read_text().replace("name: safety", "name: safety_copy")
    (judges / "safety_copy.yaml").write_text(copy)
    (judges / "quality.yaml").unlink()
    kinds = {p.judge: p.kind for p in lock_problems(judges)}
    assert kinds["quality"] is LockProblemKind.GONE
    assert kinds["safety_copy"] is LockProblemKind.NOT_LOCKED
