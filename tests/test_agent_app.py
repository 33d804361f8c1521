"""A real tool-using agent (tests/agent_app.py: OpenAI tool calling through the OpenAI-protocol
test server, the official OpenAI instrumentation, hand-made execute_tool and invoke_agent spans,
the SDK's OTLP/HTTP exporter) runs multi-turn sessions; its spans reach the receiver, the Redis
stream, the real sampler and Celery worker, and end as turn, trajectory and session scores —
each exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import uvicorn
from helpers import Fleet, fleet_env, wait_for
from openai_server import OpenAIServer
from sqlmodel import col, select

from evaluator.evaluators.trajectory import TRAJECTORY_HEURISTICS
from evaluator.ingest.receiver import create_receiver_app
from evaluator.ledger import rows_for_trace
from evaluator.models import Trace
from evaluator.ops.embedded import free_port
from evaluator.sessions.tracker import session_digest
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import ScoreRecord, TracePayloadRecord

pytest.importorskip("opentelemetry.instrumentation.openai_v2")

TRAJECTORY_CHECKS = {check.name for check in TRAJECTORY_HEURISTICS}
# Session checks that apply to these sessions (no turn reports a cost: session_cost is silent).
SESSION_CHECKS = {"session_turns", "user_repeats", "user_frustration", "session_unresolved"}


@pytest.fixture
def receiver_endpoint(redis_url: str) -> Iterator[str]:
    """The real OTLP receiver in a thread; its traces endpoint."""
    settings = Settings(redis_url=redis_url, otlp_grace_s=0.3)
    port = free_port()
    app = create_receiver_app(redis.Redis.from_url(redis_url), settings)
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "receiver started")
    yield f"http://127.0.0.1:{port}/v1/traces"
    server.should_exit = True
    thread.join(10)


def run_agent(endpoint: str) -> list[dict[str, Any]]:
    """Run tests/agent_app.py's sessions against the test server; one row per turn."""
    with OpenAIServer() as llm:
        command = [sys.executable, str(Path(__file__).parent / "agent_app.py"), llm.base_url,
                   endpoint]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        # Every request the agent made was one OpenAI accepts: no 400 from the validating peer.
        assert {status for _, status in llm.fake.statuses} == {200}
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def scores(store: SQLStore) -> list[ScoreRecord]:
    with store.session() as session:
        return list(session.exec(select(ScoreRecord)))


def test_agent_sessions_to_turn_trajectory_and_session_scores(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    receiver_endpoint: str,
    fleet_factory: Callable[[dict[str, str]], Fleet],
) -> None:
    env = fleet_env(redis_url, sqlite_url, session_quiet_s=1, session_check_interval_s=0.2,
                    claim_interval_s=0.2)  # fmt: skip
    fleet = fleet_factory(env)
    fleet.worker(concurrency=1, queues="heuristics")
    fleet.sampler()  # both start while the agent runs
    turns = run_agent(receiver_endpoint)
    sessions = {row["session_id"] for row in turns}
    assert len(turns) == 8 and len(sessions) == 3
    subjects = {f"session:{session_digest('acme', s)}": s for s in sessions}
    store = SQLStore(sqlite_url)
    try:
        wait_for(
            lambda: (
                len([s for s in scores(store) if s.trace_id in subjects])
                == len(SESSION_CHECKS) * len(sessions)
            ),
            40,
            lambda: f"session scores\n{fleet.logs()}",
        )
        time.sleep(1.0)  # a further chore run or a redelivered task would add rows now
        rows = scores(store)
        with store.session() as session:
            query = select(TracePayloadRecord).where(
                col(TracePayloadRecord.trace_id).in_([t["trace_id"] for t in turns])
            )
            stored = {r.trace_id: Trace.model_validate_json(r.payload) for r in session.exec(query)}
        ledger = {subject: rows_for_trace(store, subject) for subject in subjects}
    finally:
        store.close()

    # Each (subject, evaluator, score name) exactly once.
    counts = Counter((r.trace_id, r.evaluator, r.name) for r in rows)
    assert max(counts.values()) == 1

    by_subject: dict[str, dict[str, ScoreRecord]] = {}
    for r in rows:
        by_subject.setdefault(r.trace_id, {})[r.evaluator] = r
    assert set(by_subject) == {t["trace_id"] for t in turns} | set(subjects)

    for turn in turns:
        trace_id, checks = turn["trace_id"], by_subject[turn["trace_id"]]
        trace = stored[trace_id]
        # Turn level: the answer the agent gave, with the session it belongs to.
        assert trace.output == turn["answer"] and trace.session_id == turn["session_id"]
        assert {"length_bounds", "finish_reason", "refusal"} <= set(checks)
        # The whole history was resent: the turn's messages hold every earlier user turn.
        said = [m.text for m in trace.messages or () if m.role == "user"]
        earlier = [t["user"] for t in turns if t["session_id"] == turn["session_id"]]
        assert said == earlier[: earlier.index(turn["user"]) + 1]
        # Trajectory level: one step per tool attempt, a retry marked as attempt 2.
        tools = [s for s in trace.steps or () if s.kind == "tool"]
        assert [(s.name, s.error is not None) for s in tools] == [
            (a["name"], a["error"] is not None) for a in turn["tools"]
        ]
        assert [s.attempt for s in tools] == list(range(1, len(tools) + 1))  # one call a turn
        assert {"trajectory_bounds", "step_retries", "ended_on_tool_call"} <= set(checks)
        assert set(checks) & TRAJECTORY_CHECKS
        if not turn["tools"]:
            assert "tool_errors" not in checks
            continue
        # One call a turn: its retries are the attempts after the first.
        assert checks["step_retries"].value == len(turn["tools"]) - 1
        failed_for_good = turn["tools"][-1]["error"] is not None
        tool_errors = checks["tool_errors"]
        assert tool_errors.passed is (not failed_for_good), (turn, tool_errors.reason)
        share_failed = sum(a["error"] is not None for a in turn["tools"]) / len(turn["tools"])
        assert tool_errors.value == pytest.approx(share_failed)
        if failed_for_good:  # the answer owned up to the failure
            assert checks["ignored_tool_error"].passed is True
    assert (
        sum(not by_subject[t["trace_id"]]["tool_errors"].passed for t in turns if t["tools"]) == 2
    )
    recovered = [t for t in turns if len(t["tools"]) == 2 and t["tools"][-1]["error"] is None]
    assert len(recovered) == 1  # the rate service's time-out, recovered by the retry

    # Session level: every session scored once, by each session check, ledger rows done.
    for subject, session_id in subjects.items():
        checks = by_subject[subject]
        assert set(checks) == SESSION_CHECKS
        n_turns = sum(t["session_id"] == session_id for t in turns)
        assert checks["session_turns"].value == n_turns
        assert checks["session_turns"].details["session_id"] == session_id
        assert checks["user_frustration"].passed is (session_id != "trip-mars")
        assert {r.state for r in ledger[subject]} == {"done"}
        assert len(ledger[subject]) == len({r.evaluator for r in ledger[subject]})
