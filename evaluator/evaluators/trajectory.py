"""Trajectory heuristics: cheap checks over one agent run (a trace's ``steps``), on every trace
that carries steps.

Each LLM call of an agent may succeed while the run as a whole fails: a tool that errors and an
answer that pretends it did not, the same call made again and again, retries piling up, a run
that stops on a tool call with nothing said. These checks read the steps only, never run
anything, and cost well under a millisecond on a 20-step run (``tests/test_trajectory.py``).
Their scores carry ``level = "trajectory"``. A reason names steps by position and tool name,
never by their arguments or results (which may hold user data); a failing score names the
steps it is about in ``metadata.step_ids`` (ids of ``trace.steps``), which a reviewer is shown
highlighted.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from evaluator.evaluators.base import CheckEvaluator
from evaluator.models import Level, Score, Step, Trace

# What an answer says when it owns up to a failure ("I couldn't reach the booking system").
_ADMITS_FAILURE = re.compile(
    r"\b(?:sorry|apolog\w*|unfortunately|unable|cannot|can't|couldn't|could\s+not|failed|"
    r"failure|error|not\s+available|unavailable|try\s+again|later|problem|issue|did\s+not\s+work|"
    r"didn't\s+work|went\s+wrong|no\s+(?:results?|response))\b",
    re.IGNORECASE,
)


class TrajectoryCheck(CheckEvaluator):
    """A pass/fail check on the steps of one agent run; silent on traces without steps."""

    def trajectory(
        self,
        trace: Trace,
        passed: bool,
        reason: str,
        value: float | None = None,
        steps: list[Step] | None = None,
    ) -> Score:
        """``steps``: the steps the score is about (recorded as ``metadata.step_ids``)."""
        score = self.result(trace, passed, reason)
        score.level = Level.TRAJECTORY
        if value is not None:
            score.value = value
        if steps:
            score.metadata["step_ids"] = list(dict.fromkeys(step.id for step in steps))[:50]
        return score


def _tool_steps(trace: Trace) -> list[Step]:
    return [s for s in trace.steps or () if s.kind == "tool"]


def _call_key(step: Step) -> tuple[str, str]:
    """A tool call's identity: its name and its arguments as canonical JSON."""
    arguments: Any = step.arguments
    if isinstance(arguments, str):
        try:  # arguments as the model wrote them: a JSON string
            arguments = json.loads(arguments)
        except ValueError:
            return step.name, arguments
    return step.name, json.dumps(arguments, sort_keys=True, ensure_ascii=False, default=str)


def _final_attempts(tools: list[Step]) -> list[Step]:
    """Each tool call's last attempt: a retry (attempt > 1) replaces the attempt before it."""
    last: dict[tuple[str | None, tuple[str, str]], Step] = {}
    for step in tools:
        last[(step.parent_id, _call_key(step))] = step
    return list(last.values())


@dataclass
class ToolErrors(TrajectoryCheck):
    """No tool call ended in an error (a failed attempt that a retry recovered is fine). The
    score's value is the share of tool attempts that failed."""

    name: ClassVar[str] = "tool_errors"
    version: ClassVar[str] = "1.0.0"

    def evaluate(self, trace: Trace) -> list[Score]:
        tools = _tool_steps(trace)
        if not tools:
            return []
        rate = sum(1 for s in tools if s.error) / len(tools)
        failed = [s for s in _final_attempts(tools) if s.error]
        if failed:
            names = ", ".join(sorted({s.name or "unnamed" for s in failed}))
            reason = f"{len(failed)} tool call(s) ended in an error ({names})"
            return [self.trajectory(trace, False, reason, value=rate, steps=failed)]
        reason = f"{len(tools)} tool attempts, {100 * rate:.0f} % failed and were retried"
        return [self.trajectory(trace, True, reason, value=rate)]


@dataclass
class ToolLoop(TrajectoryCheck):
    """The agent did not call the same tool with the same arguments ``max_repeats`` times or
    more (retries after an error excepted): a loop, or an agent that ignores what it got."""

    name: ClassVar[str] = "tool_loop"
    version: ClassVar[str] = "1.0.0"
    max_repeats: int = 2

    def evaluate(self, trace: Trace) -> list[Score]:
        tools = [s for s in _tool_steps(trace) if s.attempt == 1]
        if not tools:
            return []
        keys = [_call_key(s) for s in tools]  # once: the repeated calls are named below
        (name, arguments), count = Counter(keys).most_common(1)[0]
        if count >= self.max_repeats:
            reason = f"{name or 'a tool'} called {count} times with the same arguments"
            repeated = [s for s, key in zip(tools, keys, strict=True) if key == (name, arguments)]
            return [self.trajectory(trace, False, reason, steps=repeated)]
        return [self.trajectory(trace, True, f"{len(tools)} tool calls, none repeated")]


@dataclass
class StepRetries(TrajectoryCheck):
    """No step needed more than ``max_retries`` retries."""

    name: ClassVar[str] = "step_retries"
    version: ClassVar[str] = "1.0.0"
    max_retries: int = 2

    def evaluate(self, trace: Trace) -> list[Score]:
        if not trace.steps:
            return []
        worst = max(trace.steps, key=lambda s: s.attempt)
        retries = worst.attempt - 1
        if retries > self.max_retries:
            reason = f"{worst.kind} step {worst.name or worst.id!r} retried {retries} times"
            return [self.trajectory(trace, False, reason, value=float(retries), steps=[worst])]
        return [self.trajectory(trace, True, f"at most {retries} retries", value=float(retries))]


@dataclass
class TrajectoryBounds(TrajectoryCheck):
    """The run took at most ``max_steps`` steps and ``max_tool_calls`` tool calls."""

    name: ClassVar[str] = "trajectory_bounds"
    version: ClassVar[str] = "1.0.0"
    max_steps: int = 50
    max_tool_calls: int = 25

    def evaluate(self, trace: Trace) -> list[Score]:
        if not trace.steps:
            return []
        steps, tools = len(trace.steps), len(_tool_steps(trace))
        over = [
            f"{steps} steps (bound {self.max_steps})" if steps > self.max_steps else "",
            f"{tools} tool calls (bound {self.max_tool_calls})" if tools > self.max_tool_calls
            else "",
        ]  # fmt: skip
        if any(over):
            return [self.trajectory(trace, False, "; ".join(o for o in over if o),
                                    value=float(steps))]  # fmt: skip
        reason = f"{steps} steps, {tools} tool calls"
        return [self.trajectory(trace, True, reason, value=float(steps))]


@dataclass
class IgnoredToolError(TrajectoryCheck):
    """When the run's last tool call failed, the answer says so instead of carrying on as if it
    had worked."""

    name: ClassVar[str] = "ignored_tool_error"
    version: ClassVar[str] = "1.0.0"

    def evaluate(self, trace: Trace) -> list[Score]:
        tools = _tool_steps(trace)
        if not tools:
            return []
        last = tools[-1]
        if not last.error:
            return []
        if not trace.output.strip():
            return []  # no answer at all: ``ended_on_tool_call`` or the length check says so
        if _ADMITS_FAILURE.search(trace.output[:20_000]):
            return [self.trajectory(trace, True, "the answer acknowledges the failed tool call")]
        reason = f"the last tool call ({last.name or 'unnamed'}) failed; the answer does not say so"
        return [self.trajectory(trace, False, reason, steps=[last])]


@dataclass
class EndedOnToolCall(TrajectoryCheck):
    """The run ended with an answer, not on a tool call (or a model asking for one) with nothing
    said to the user."""

    name: ClassVar[str] = "ended_on_tool_call"
    version: ClassVar[str] = "1.0.0"

    def evaluate(self, trace: Trace) -> list[Score]:
        if not trace.steps:
            return []
        if trace.output.strip():
            return [self.trajectory(trace, True, "the run ended with an answer")]
        last = trace.steps[-1]
        if last.kind == "tool":
            reason = f"the run ended on tool call {last.name or 'unnamed'!r} with no answer"
        elif trace.finish_reason in ("tool_calls", "function_call"):
            reason = "the run ended on the model asking for a tool, with no answer"
        else:
            return []  # an empty answer for another reason: the length check reports it
        return [self.trajectory(trace, False, reason, steps=[last])]


TRAJECTORY_HEURISTICS = (
    ToolErrors,
    ToolLoop,
    StepRetries,
    TrajectoryBounds,
    IgnoredToolError,
    EndedOnToolCall,
)
