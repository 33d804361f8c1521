"""What every evaluator is, and the one place that turns its failures into data."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import Any, ClassVar, Protocol, TypeVar

from evaluator.models import Score, ScoreStatus, ScoreType, Severity, Trace
from evaluator.settings import get_settings

Subject = TypeVar("Subject")
SubjectIn = TypeVar("SubjectIn", contravariant=True)


class Evaluator(Protocol):
    """Turns a Trace into Scores. Returns [] when the check does not apply to the trace."""

    name: ClassVar[str]
    version: ClassVar[str]

    def evaluate(self, trace: Trace) -> list[Score]:
        """The scores for ``trace`` (deterministic ids via ``Score.for_trace``)."""


class CheckEvaluator:
    """Base for pass/fail checks that emit one boolean score named after the evaluator."""

    name: ClassVar[str]
    version: ClassVar[str]
    severity: ClassVar[Severity] = Severity.LOW

    def result(self, trace: Trace, passed: bool, reason: str, label: str | None = None) -> Score:
        return Score.for_trace(
            trace.trace_id,
            self.name,
            self.version,
            self.name,
            data_type=ScoreType.BOOLEAN,
            value=1.0 if passed else 0.0,
            passed=passed,
            label=label,
            severity=self.severity,
            reason=reason,
        )

    def error(self, trace: Trace, reason: str) -> Score:
        """The check could not be evaluated on this trace (``status=error``), and why."""
        return error_score(self, trace, reason, self.severity)


class Named(Protocol):
    """What error scores need of an evaluator at any level: its name and version."""

    name: ClassVar[str]
    version: ClassVar[str]


def error_score(
    evaluator: Named, trace: Trace, reason: str, severity: Severity = Severity.LOW
) -> Score:
    """``evaluator`` could not score ``trace`` (``status=error``), and why."""
    return Score.for_trace(
        trace.trace_id,
        evaluator.name,
        evaluator.version,
        evaluator.name,
        data_type=ScoreType.BOOLEAN,
        status=ScoreStatus.ERROR,
        severity=severity,
        reason=reason[:500],
    )


class OverBudget(BaseException):
    """Raised by SIGALRM inside an evaluator that overran its budget. A BaseException, so that an
    evaluator's own ``except Exception`` cannot swallow it."""


class _Deadline:
    """The deadline of the evaluator running in the main thread (None between evaluators)."""

    at: float | None = None


def _on_sigalrm(signum: int, frame: FrameType | None) -> None:
    deadline = _Deadline.at
    if deadline is not None and time.monotonic() >= deadline:
        _Deadline.at = None
        raise OverBudget


class _Alarm:
    """SIGALRM ticks while a trace's evaluators run, when this thread may own the signal.

    Python runs signal handlers in the main thread only, between bytecodes: at the first tick
    past an evaluator's deadline the handler raises OverBudget inside it, as soon as the
    interpreter gets control back (C code that never returns, such as a backtracking ``re``
    match, is not interrupted; hence RE2 for untrusted regexes). Off the main thread, or when
    ITIMER_REAL is already armed by someone else (whose timer is left alone), ``usable`` is
    False and only the elapsed time is judged afterwards.

    One interval timer per trace ticking every quarter budget, rather than a timer per
    evaluator, keeps the cost to about 7 us a trace (an overrun is stopped within 1.25 budgets).
    The handler stays installed between traces when SIGALRM had no Python handler before (with
    no deadline set it ignores the signal); another handler found installed is put back on exit.
    """

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.usable = False
        self._restore: Any = None

    def __enter__(self) -> _Alarm:
        self.usable = (
            hasattr(signal, "setitimer")
            and threading.current_thread() is threading.main_thread()
            and signal.getitimer(signal.ITIMER_REAL)[0] == 0
        )
        if self.usable:
            if signal.getsignal(signal.SIGALRM) is not _on_sigalrm:
                previous = signal.signal(signal.SIGALRM, _on_sigalrm)
                if previous not in (signal.SIG_DFL, signal.SIG_IGN, None):
                    self._restore = previous
            tick = max(self.budget_s / 4, 0.005)
            signal.setitimer(signal.ITIMER_REAL, tick, tick)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.usable:
            _Deadline.at = None
            signal.setitimer(signal.ITIMER_REAL, 0)
            if self._restore is not None:
                signal.signal(signal.SIGALRM, self._restore)

    def arm(self, started: float) -> None:
        if self.usable:
            _Deadline.at = started + self.budget_s

    def disarm(self) -> None:
        if self.usable:  # off the main thread the deadline is someone else's
            _Deadline.at = None


class _EvaluatesSubject(Protocol[SubjectIn]):
    """An evaluator at any level: a trace's, an agent run's or a session's."""

    name: ClassVar[str]
    version: ClassVar[str]

    def evaluate(self, subject: SubjectIn, /) -> list[Score]: ...


# Builds the error score of ``evaluator`` on a subject, with a reason.
ErrorScore = Callable[[Named, Subject, str], Score]


def run_on(
    evaluators: Iterable[_EvaluatesSubject[Subject]],
    subject: Subject,
    error: ErrorScore[Subject],
    budget_s: float,
    noun: str,
) -> list[Score]:
    """Run evaluators on one subject (a trace, a session; ``noun`` names it in reasons), each
    within ``budget_s`` seconds: the one mechanism every level shares (see ``run_evaluator``)."""
    with _Alarm(budget_s) as alarm:
        return [score for e in evaluators for score in _run(e, subject, error, alarm, noun)]


def _run(
    evaluator: _EvaluatesSubject[Subject],
    subject: Subject,
    error: ErrorScore[Subject],
    alarm: _Alarm,
    noun: str,
) -> list[Score]:
    budget_s = alarm.budget_s
    started = time.monotonic()
    over = f"evaluator {evaluator.name} exceeded its {budget_s:.1f} s budget on this {noun}"
    try:
        alarm.arm(started)
        try:
            scores = evaluator.evaluate(subject)
        finally:
            alarm.disarm()
    except OverBudget:
        stopped = f"stopped after {time.monotonic() - started:.1f} s"
        return [error(evaluator, subject, f"{over} ({stopped})")]
    except Exception as exc:
        return [error(evaluator, subject, f"{type(exc).__name__}: {exc}")]
    elapsed = time.monotonic() - started
    if elapsed > budget_s:
        detail = f"took {elapsed:.1f} s" + ("" if alarm.usable else "; not interruptible here")
        return [error(evaluator, subject, f"{over} ({detail})")]
    return scores


def run_evaluators(
    evaluators: Iterable[Evaluator], trace: Trace, budget_s: float | None = None
) -> list[Score]:
    """Run evaluators on one trace, each within ``budget_s`` seconds (default
    ``EVALFLEET_EVALUATOR_BUDGET_S``); see ``run_evaluator``."""
    budget = get_settings().evaluator_budget_s if budget_s is None else budget_s
    return run_on(evaluators, trace, error_score, budget, "trace")


def run_evaluator(evaluator: Evaluator, trace: Trace, budget_s: float | None = None) -> list[Score]:
    """Run one evaluator; an exception becomes an error score instead of failing the batch, and
    so does overrunning its time budget (``budget_s``, default ``EVALFLEET_EVALUATOR_BUDGET_S``)
    on this trace: the next evaluators and traces are scored as usual.

    How the budget is enforced depends on the thread. In the main thread (a Celery prefork
    child runs its tasks there; so do the CLI and the demo) ``signal.setitimer(ITIMER_REAL)``
    ticks SIGALRM, whose handler raises OverBudget inside an evaluator past its deadline: a
    Python-level loop is stopped within 1.25 budgets. Elsewhere (the threads pool, a test's
    thread), or when ITIMER_REAL is already in use, Python cannot interrupt the evaluator: it
    runs to its end and a result that comes late is replaced by the error score (an evaluator
    that never returns holds its thread). Neither stops C code that does not return (a
    catastrophic ``re`` match): evaluators must not hand untrusted input to such code, which is
    why trace-supplied regexes run on RE2 (``schema_guard``).
    """
    return run_evaluators([evaluator], trace, budget_s)
