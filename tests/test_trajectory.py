"""Trajectory heuristics on agent runs: what each flags, what it lets pass, and what they cost."""

from __future__ import annotations

import time
from typing import Any

from evaluator.evaluators import heuristic_evaluators
from evaluator.evaluators.trajectory import (
    TRAJECTORY_HEURISTICS,
    EndedOnToolCall,
    IgnoredToolError,
    StepRetries,
    ToolErrors,
    ToolLoop,
    TrajectoryBounds,
)
from evaluator.models import Level, Step, Trace
from evaluator.settings import Settings


def run(*steps: dict[str, Any], output: str = "Your flight is booked.", **fields: Any) -> Trace:
    return Trace(
        trace_id="agent-1",
        input="Book me a flight to Oslo on Friday",
        output=output,
        steps=[Step(id=f"s{n}", **step) for n, step in enumerate(steps)],
        **fields,
    )


LLM = {"kind": "llm", "name": "gpt-4o-mini"}


def search(**extra: Any) -> dict[str, Any]:
    return {"kind": "tool", "name": "search_flights", "arguments": {"to": "OSL"}, **extra}


def book(**extra: Any) -> dict[str, Any]:
    return {"kind": "tool", "name": "book_flight", "arguments": '{"flight": "SK4411"}', **extra}


def passed(check: Any, trace: Trace) -> bool | None:
    scores = check.evaluate(trace)
    return None if not scores else scores[0].passed


GOOD = run(LLM, search(result=[{"flight": "SK4411"}]), LLM, book(result="confirmed"), LLM)


def test_a_good_run_passes_and_a_trace_without_steps_is_left_alone() -> None:
    assert {c.name: passed(c(), GOOD) for c in TRAJECTORY_HEURISTICS} == {
        "tool_errors": True,
        "tool_loop": True,
        "step_retries": True,
        "trajectory_bounds": True,
        "ignored_tool_error": None,  # no tool failed
        "ended_on_tool_call": True,
    }
    plain = Trace(trace_id="t", input="hi", output="hello")
    assert all(c().evaluate(plain) == [] for c in TRAJECTORY_HEURISTICS)
    [score] = ToolErrors().evaluate(GOOD)
    assert score.level is Level.TRAJECTORY and score.value == 0.0


def test_a_failed_tool_call_fails_unless_a_retry_recovered_it() -> None:
    recovered = run(LLM, search(error="timeout"), search(attempt=2, result=[]), LLM)
    assert passed(ToolErrors(), recovered) is True
    assert ToolErrors().evaluate(recovered)[0].value == 0.5
    failed = run(LLM, book(error="503 from the airline"), LLM, output="Sorry, booking failed.")
    [score] = ToolErrors().evaluate(failed)
    assert score.passed is False and "book_flight" in score.reason and "503" not in score.reason


def test_the_same_call_again_is_a_loop_but_a_retry_or_new_arguments_are_not() -> None:
    looped = run(LLM, search(), LLM, search(), LLM)
    assert "search_flights called 2 times" in ToolLoop().evaluate(looped)[0].reason
    # The same arguments written as a JSON string with other spacing are the same call.
    spelled = run(book(), LLM, {**book(), "arguments": '{ "flight":"SK4411" }'})
    assert passed(ToolLoop(), spelled) is False
    retried = run(search(error="timeout"), search(attempt=2))
    assert passed(ToolLoop(), retried) is True
    other = run(search(), {**search(), "arguments": {"to": "BGO"}})
    assert passed(ToolLoop(), other) is True


def test_retries_and_bounds() -> None:
    stubborn = run(*[search(attempt=n, error="timeout") for n in range(1, 5)], LLM)
    assert "retried 3 times" in StepRetries().evaluate(stubborn)[0].reason
    assert passed(StepRetries(), GOOD) is True
    sprawling = run(*[{"kind": "tool", "name": f"t{n}", "arguments": {"n": n}} for n in range(30)])
    [score] = TrajectoryBounds().evaluate(sprawling)
    assert score.passed is False and "30 tool calls (bound 25)" in score.reason


def test_an_answer_that_ignores_a_failed_tool_call_is_flagged() -> None:
    pretends = run(LLM, book(error="payment declined"), LLM, output="Your flight is booked!")
    assert passed(IgnoredToolError(), pretends) is False
    owned_up = "I couldn't complete the booking: the payment did not go through."
    honest = run(LLM, book(error="payment declined"), LLM, output=owned_up)
    assert passed(IgnoredToolError(), honest) is True


def test_a_run_that_stops_on_a_tool_call_has_no_answer() -> None:
    stopped = run(LLM, search(), output="")
    assert "search_flights" in EndedOnToolCall().evaluate(stopped)[0].reason
    asking = run(LLM, output="", finish_reason="tool_calls")
    assert passed(EndedOnToolCall(), asking) is False
    assert passed(EndedOnToolCall(), run(LLM, output="")) is None  # the length check's job


def test_all_trajectory_checks_take_well_under_a_millisecond_on_a_20_step_run() -> None:
    steps: list[dict[str, Any]] = []
    for n in range(10):
        steps.append(LLM)
        tool = {"kind": "tool", "name": f"tool{n % 3}", "arguments": {"q": f"query {n}"}}
        steps.append({**tool, "result": {"rows": [1, 2, 3]}, "error": "e" if n == 4 else None})
    trace = run(*steps, output="Done: here are your results.")
    checks = [c() for c in TRAJECTORY_HEURISTICS]
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(200):
            for check in checks:
                check.evaluate(trace)
        best = min(best, (time.perf_counter() - started) / 200)
    assert best < 1e-3, f"{best * 1e6:.0f} us per 20-step run"


def test_the_trajectory_checks_run_with_every_trace_heuristic() -> None:
    names = {e.name for e in heuristic_evaluators(Settings())}
    assert {c.name for c in TRAJECTORY_HEURISTICS} <= names
