"""Every evaluator has a time budget per trace: overrunning it is an error score with the reason,
and the evaluators and traces after it are scored as usual.

The main-thread tests run under pytest-timeout's thread method: its default (signal) method
arms ITIMER_REAL itself, and the budget then leaves that timer alone and only measures.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from types import FrameType
from typing import ClassVar

import pytest
import redis
from helpers import make_trace
from sqlmodel import Session, select

from evaluator.evaluation.scoring import ScoringContext, score_batch
from evaluator.evaluators import evaluate_all, heuristic_evaluators, run_evaluator
from evaluator.evaluators.base import Evaluator, run_evaluators
from evaluator.models import SampleDecision, Score, ScoreStatus, Trace
from evaluator.review import ReviewRouter
from evaluator.settings import Settings, get_settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import ScoreRecord

main_thread_timer = pytest.mark.timeout(60, method="thread")


class Spinner:
    """A pure-Python loop that never ends; swallows Exception, as careless code does."""

    name: ClassVar[str] = "spinner"
    version: ClassVar[str] = "1.0.0"

    def evaluate(self, trace: Trace) -> list[Score]:
        while True:
            with contextlib.suppress(Exception):
                sum(range(1000))


class Sleeper:
    name: ClassVar[str] = "sleeper"
    version: ClassVar[str] = "1.0.0"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def evaluate(self, trace: Trace) -> list[Score]:
        time.sleep(self.seconds)
        return [Score.for_trace(trace.trace_id, self.name, self.version, self.name, passed=True)]


class Follower:
    name: ClassVar[str] = "follower"
    version: ClassVar[str] = "1.0.0"

    def evaluate(self, trace: Trace) -> list[Score]:
        return [Score.for_trace(trace.trace_id, self.name, self.version, self.name, passed=True)]


def timed(evaluators: list[Evaluator], budget_s: float) -> tuple[list[Score], float]:
    started = time.monotonic()
    scores = run_evaluators(evaluators, make_trace(1), budget_s)
    return scores, time.monotonic() - started


@main_thread_timer
def test_a_spinning_evaluator_is_stopped_and_the_next_one_scores() -> None:
    assert threading.current_thread() is threading.main_thread()
    scores, elapsed = timed([Spinner(), Follower()], 0.2)
    assert elapsed < 1.0
    spun, followed = scores
    assert spun.status is ScoreStatus.ERROR and spun.passed is None
    assert spun.evaluator == "spinner"
    assert spun.reason.startswith("evaluator spinner exceeded its 0.2 s budget on this trace")
    assert "stopped after" in spun.reason
    assert followed.evaluator == "follower" and followed.passed is True
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # nothing left armed


@main_thread_timer
def test_a_sleeping_evaluator_is_stopped_too() -> None:
    scores, elapsed = timed([Sleeper(30), Follower()], 0.2)
    assert elapsed < 1.0
    assert scores[0].status is ScoreStatus.ERROR and "0.2 s budget" in scores[0].reason
    assert scores[1].passed is True


@main_thread_timer
def test_within_budget_nothing_changes() -> None:
    scores, _ = timed([Sleeper(0.01), Follower()], 2.0)
    assert [(s.evaluator, s.status, s.passed) for s in scores] == [
        ("sleeper", ScoreStatus.OK, True),
        ("follower", ScoreStatus.OK, True),
    ]


def test_off_the_main_thread_a_late_result_becomes_an_error_score() -> None:
    results: list[tuple[list[Score], float]] = []
    worker = threading.Thread(target=lambda: results.append(timed([Sleeper(0.5), Follower()], 0.2)))
    worker.start()
    worker.join(10)
    [(scores, elapsed)] = results
    assert elapsed >= 0.5  # not interruptible here: it ran to its end
    late, followed = scores
    assert late.status is ScoreStatus.ERROR
    assert late.reason.startswith("evaluator sleeper exceeded its 0.2 s budget on this trace")
    assert "not interruptible here" in late.reason
    assert followed.passed is True


@main_thread_timer
def test_someone_elses_sigalrm_handler_is_put_back() -> None:
    fired: list[int] = []

    def theirs(signum: int, frame: FrameType | None) -> None:
        fired.append(signum)

    previous = signal.signal(signal.SIGALRM, theirs)
    try:
        scores, elapsed = timed([Spinner(), Follower()], 0.2)
        assert elapsed < 1.0 and scores[0].status is ScoreStatus.ERROR
        assert signal.getsignal(signal.SIGALRM) is theirs
        assert fired == []
    finally:
        signal.signal(signal.SIGALRM, previous)


@main_thread_timer
def test_a_timer_armed_by_someone_else_is_left_alone() -> None:
    fired: list[int] = []

    def theirs(signum: int, frame: FrameType | None) -> None:
        fired.append(signum)

    previous = signal.signal(signal.SIGALRM, theirs)
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        scores, elapsed = timed([Sleeper(0.3), Follower()], 0.2)
        assert 0.3 <= elapsed < 1.0  # measured, not interrupted
        assert "took 0.3 s; not interruptible here" in scores[0].reason
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 28 < remaining <= 30
        assert signal.getsignal(signal.SIGALRM) is theirs
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@main_thread_timer
def test_the_budget_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALFLEET_EVALUATOR_BUDGET_S", "0.3")
    get_settings.cache_clear()
    started = time.monotonic()
    spun, followed = evaluate_all([Spinner(), Follower()], make_trace(1))
    assert time.monotonic() - started < 1.0
    assert "exceeded its 0.3 s budget" in spun.reason
    assert followed.passed is True
    [alone] = run_evaluator(Spinner(), make_trace(2))
    assert "exceeded its 0.3 s budget" in alone.reason


@main_thread_timer
def test_a_batch_with_an_overrunning_evaluator_is_scored(
    store: SQLStore, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVALFLEET_EVALUATOR_BUDGET_S", "0.1")
    get_settings.cache_clear()
    decision = SampleDecision(judge=False, rate=0.1).model_dump()
    batch = [
        {
            "id": f"{1763630000000 + i}-0",
            "trace": make_trace(i).model_dump_json(),
            "decision": decision,
        }
        for i in range(3)
    ]
    evaluators: list[Evaluator] = [Spinner(), *heuristic_evaluators(Settings())]
    ctx = ScoringContext(evaluators, store, ReviewRouter(), redis_client)
    started = time.monotonic()
    result = score_batch(batch, ctx)
    assert time.monotonic() - started < 5.0
    assert result.traces == 3
    with Session(store.engine) as session:
        rows = session.exec(select(ScoreRecord)).all()
    spun = [r for r in rows if r.evaluator == "spinner"]
    assert len(spun) == 3 and {r.status for r in spun} == {"error"}
    assert all("exceeded its 0.1 s budget" in r.reason for r in spun)
    others = [r for r in rows if r.evaluator != "spinner"]
    assert len(others) == 3 * 7 and {r.status for r in others} == {"ok"}
