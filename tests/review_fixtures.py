"""Review items at every level for the review tests: a support-agent session whose third turn's
tool call failed (a session item naming that turn and step) and an agent run whose tool call
failed (a trajectory item, scored by the real trajectory heuristics)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import redis

from evaluator.evaluators.trajectory import ToolErrors
from evaluator.models import ReviewItem, Score, Severity, Trace
from evaluator.review import ReviewRouter
from evaluator.sessions.conversation import session_trace
from evaluator.sessions.heuristics import Session, SessionCheck
from evaluator.sinks.sql import SQLStore, score_row

# What a hostile tool returns: markup and script that a reviewer's page must show as text.
HOSTILE_RESULT = (
    "<script>document.title='owned'</script><img src=x onerror=\"document.title='owned'\">"
)
FAILED_TURN = 3
START = datetime(2026, 12, 1, 10, tzinfo=UTC)
TURNS = 6


def agent_turn(n: int, session_id: str = "chat-42", fail: bool = False) -> Trace:
    """Turn ``n`` of a support chat: the user asks, the agent looks the order up, answers."""
    call = f"call_{n}"
    result: Any = {"order": f"A-{n}", "status": "shipped"}
    if fail:
        result = HOSTILE_RESULT
    messages = [
        {"role": "user", "content": f"Where is my order A-{n}? (question {n})"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call,
                    "function": {"name": "lookup_order", "arguments": f'{{"order": "A-{n}"}}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call, "content": str(result)},
    ]
    steps: list[dict[str, Any]] = [
        {"id": "run", "kind": "agent", "name": "support-agent", "latency_ms": 2100.0},
        {"id": "plan", "kind": "llm", "name": "gpt-4o-mini", "parent_id": "run"},
        {
            "id": call,
            "kind": "tool",
            "name": "lookup_order",
            "parent_id": "run",
            "tool_call_id": call,
            "arguments": {"order": f"A-{n}"},
            "result": result,
            "error": "upstream timeout after 1.2 s" if fail else None,
            "latency_ms": 1200.0,
        },
        {"id": "answer", "kind": "llm", "name": "gpt-4o-mini", "parent_id": "run"},
    ]
    return Trace.model_validate(
        {
            "trace_id": f"turn-{n}",
            "output": f"Your order A-{n} has shipped.",
            "tenant": "acme",
            "session_id": session_id,
            "messages": messages,
            "steps": steps,
            "started_at": (START + timedelta(minutes=n)).isoformat(),
        }
    )


def support_session(version: str = "v1", turns: int = TURNS) -> Session:
    return Session(
        digest="d-review",
        tenant="acme",
        session_id="chat-42",
        version=version,
        turns=tuple(agent_turn(n, fail=n == FAILED_TURN) for n in range(1, turns + 1)),
    )


@dataclass
class GoalAchieved(SessionCheck):
    """A high-severity session check, as a session judge's failing verdict is: it names the
    turn and the step where the conversation went wrong."""

    name: ClassVar[str] = "session_goal_achieved"
    version: ClassVar[str] = "1"
    severity: ClassVar[Severity] = Severity.HIGH

    def evaluate(self, session: Session) -> list[Score]:
        score = self.result(session, False, "the user never learnt where order A-3 is")
        score.metadata["turn_id"] = f"turn-{FAILED_TURN}"
        score.metadata["step_id"] = f"t{FAILED_TURN}:call_{FAILED_TURN}"
        return [score]


def session_scores(session: Session) -> list[Score]:
    return GoalAchieved().evaluate(session)


def route_session(
    store: SQLStore, client: redis.Redis, session: Session | None = None
) -> tuple[ReviewItem, Trace]:
    """Store a session's failing scores and hand them to review, as session evaluation does."""
    session = session or support_session()
    trace, scores = session_trace(session), session_scores(session)
    store.write_batch([], [score_row(s, session.tenant, None, None) for s in scores], [])
    [item] = ReviewRouter().hand_off(client, store, trace, scores)
    return item, trace


def agent_run(index: int = 1) -> Trace:
    """One agent run (no session) whose tool call failed."""
    return agent_turn(index, session_id=f"solo-{index}", fail=True).model_copy(
        update={"trace_id": f"run-{index}", "session_id": None, "messages": None}
    )


def trajectory_item(store: SQLStore, client: redis.Redis, index: int = 1) -> ReviewItem:
    """The trajectory heuristics' failing score on an agent run, stored and routed."""
    trace = agent_run(index)
    scores = [s for s in ToolErrors().evaluate(trace) if s.failed]
    item = ReviewItem.for_scores(trace, scores, priority=10)
    store.write_batch([], [score_row(s, trace.tenant, None, None) for s in scores], [item])
    assert ReviewRouter().publish(client, [item]) == [item]
    return item
