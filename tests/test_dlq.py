"""Dead letters through the CLI: listed with reasons, shown, redriven after the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from helpers import make_trace
from test_sampler import Collect, drain, sampler
from typer.testing import CliRunner

from evaluator.cli import app
from evaluator.constants import DEAD_STREAM
from evaluator.ingest import publish
from evaluator.settings import Settings


@pytest.fixture
def cli(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("EVALFLEET_REDIS_URL", redis_url)
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def test_dead_letters_listed_shown_and_redriven(
    redis_client: redis.Redis, cli: CliRunner, tmp_path: Path
) -> None:
    broken = '{"trace_id": "fix-me", "output": "Rotate it in Settings."'  # missing brace
    big = make_trace(2, output="y" * 3000)
    publish(redis_client, broken, Settings())
    publish(redis_client, big, Settings())
    drain(sampler(redis_client, Collect(), max_trace_bytes=2048))
    [(broken_id, _), (big_id, _)] = [(i.decode(), f) for i, f in redis_client.xrange(DEAD_STREAM)]

    listing = cli.invoke(app, ["dlq", "list"])
    assert listing.exit_code == 0, listing.output
    assert "Invalid JSON" in listing.output and "over the limit of 2048" in listing.output
    assert "2 shown" in listing.output

    shown = cli.invoke(app, ["dlq", "show", broken_id])
    assert shown.exit_code == 0
    assert broken in shown.output

    missing = cli.invoke(app, ["dlq", "redrive", "0-1"])
    assert missing.exit_code == 1 and "no dead letter with id 0-1" in missing.output

    # Fix 1: a corrected payload for the broken entry. Fix 2: a larger size limit for the big one.
    fixed = tmp_path / "fixed.json"
    fixed.write_text(broken + "}\n")
    assert (
        cli.invoke(app, ["dlq", "redrive", broken_id, "--payload-file", str(fixed)]).exit_code == 0
    )
    assert cli.invoke(app, ["dlq", "redrive", big_id]).exit_code == 0
    assert redis_client.xlen(DEAD_STREAM) == 0

    dispatch = Collect()
    drain(sampler(redis_client, dispatch, max_trace_bytes=8192))
    assert sorted(json.loads(e["trace"])["trace_id"] for e in dispatch.entries) == [
        "fix-me",
        "t-000002",
    ]
    assert redis_client.xlen(DEAD_STREAM) == 0


def test_redrive_needs_ids(cli: CliRunner, redis_client: redis.Redis) -> None:
    result = cli.invoke(app, ["dlq", "redrive"])
    assert result.exit_code == 2
    assert "give dead letter ids or --all" in result.output
