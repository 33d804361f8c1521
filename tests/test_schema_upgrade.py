"""A database an older version created gains ``scores.level`` when a newer process starts
(store/schema.py), on SQLite and PostgreSQL; its old rows are read by their subject."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime

import sqlalchemy
from sqlalchemy import inspect

from evaluator.models import Level, Score
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore, score_row
from evaluator.store.schema import create_schema

AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def columns(engine: sqlalchemy.Engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("scores")}


def old_row(score_id: str, trace_id: str, evaluator: str) -> dict[str, object]:
    return {
        "id": score_id, "trace_id": trace_id, "evaluator": evaluator, "evaluator_version": "1",
        "name": evaluator, "data_type": "BOOLEAN", "value": 1.0, "passed": True,
        "severity": "low", "status": "ok", "reason": "", "created_at": AT, "details": "{}",
    }  # fmt: skip


def test_an_older_database_gains_the_level_column(database_url: str) -> None:
    url = Settings(database_url=database_url).sqlalchemy_url
    engine = sqlalchemy.create_engine(url)
    create_schema(engine)
    with engine.begin() as connection:  # what a version without levels created
        connection.exec_driver_sql("ALTER TABLE scores DROP COLUMN level")
    assert "level" not in columns(engine)
    insert = sqlalchemy.text(
        "INSERT INTO scores (id, trace_id, evaluator, evaluator_version, name, data_type, value, "
        "passed, severity, status, reason, created_at, details) VALUES (:id, :trace_id, "
        ":evaluator, :evaluator_version, :name, :data_type, :value, :passed, :severity, "
        ":status, :reason, :created_at, :details)"
    )
    with engine.begin() as connection:
        connection.execute(insert, old_row("old-turn", "t-1", "refusal"))
        connection.execute(insert, old_row("old-session", "session:abc", "user_repeats"))
    engine.dispose()

    store = SQLStore(url)  # a newer process starting: create_schema upgrades
    try:
        assert "level" in columns(store.engine)
        create_schema(store.engine)  # a second process starting: nothing left to add
        summary = {row["evaluator"]: row["level"] for row in store.score_summary(by_level=True)}
        assert summary == {"refusal": "turn", "user_repeats": "session"}
        trajectory = Score.for_trace(
            "t-1", "tool_errors", "1.0.0", "tool_errors", passed=False, level=Level.TRAJECTORY
        )
        store.write_batch([], [score_row(trajectory, None, None, None)], [])
        summary = {row["evaluator"]: row["level"] for row in store.score_summary(by_level=True)}
        assert summary["tool_errors"] == "trajectory"
        with store.engine.connect() as connection:
            stored = dict(connection.exec_driver_sql("SELECT id, level FROM scores").all())
        assert stored == {"old-turn": None, "old-session": None, trajectory.id: "trajectory"}
    finally:
        store.close()


def test_processes_starting_together_create_the_schema_once(database_url: str) -> None:
    # A fleet's sampler, workers and relay start at once against a fresh database: each
    # creates the schema, and none may fail because another created a table a moment before.
    url = Settings(database_url=database_url).sqlalchemy_url
    start_at = time.time() + 3.0  # after every interpreter has imported the store
    script = (
        "import sys, time\n"
        "from evaluator.store.database import Database\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "Database(sys.argv[1]).close()\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, url, str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(6)
    ]
    outputs = [process.communicate(timeout=60)[0].decode() for process in processes]
    assert [p.returncode for p in processes] == [0] * 6, "\n".join(outputs)
    engine = sqlalchemy.create_engine(url)
    assert "level" in columns(engine)
    engine.dispose()
