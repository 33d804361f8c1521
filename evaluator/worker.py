"""The worker's tasks. Tasks are thin: they deserialise and call ``scoring``.

``create_worker_app(settings)`` is the fleet's Celery app (evaluator.celery_app) with these
tasks on it. Run with ``evalfleet worker``, or ``celery -A evaluator.worker:app worker -Q
heuristics,judges``: ``app`` is built from the environment when first asked for, not on import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Callable
from functools import cache
from typing import Any

import redis
from celery import Task
from celery.exceptions import TimeLimitExceeded
from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_process_shutdown,
)

from evaluator.celery_app import (
    FleetApp,
    create_app,
    judge_dispatch,
    judges_queue,
    session_dispatch,
)
from evaluator.constants import (
    HEURISTICS_QUEUE,
    HEURISTICS_TASK,
    JUDGES_TASK,
    SESSIONS_TASK,
    TASK_STARTS_PREFIX,
)
from evaluator.evaluation.scoring import (
    INFRASTRUCTURE_ERRORS,
    ScoringContext,
    StallPlan,
    dead_letter_entries,
    judge_batch,
    plan_after_loss,
    run_batch,
    run_heuristics,
)
from evaluator.fleet import build_scoring_context
from evaluator.ops import logs, metrics
from evaluator.sampling import inflight
from evaluator.sessions.evaluate import session_batch
from evaluator.settings import Settings, get_settings

log = logging.getLogger(__name__)


@worker_process_shutdown.connect
def _child_exited(**_: Any) -> None:
    metrics.process_exited(os.getpid())


# -- logging -------------------------------------------------------------------------------
# Text (the default): celery sets up logging in its own format, as it always has. JSON
# (EVALFLEET_LOG_FORMAT=json): a setup_logging receiver, whose presence makes celery configure
# nothing (celery/app/log.py), installs ours; prefork children fork with it (celery sets
# logging up once per process tree). Records of a task carry its batch (and its trace, when it
# is one) from task_prerun to task_postrun.

_unbind: dict[str, Callable[[], None]] = {}


@task_prerun.connect
def _bind_task(task_id: str | None = None, args: Any = None, **_: Any) -> None:
    if task_id is None:
        return
    entries = args[0] if args and isinstance(args[0], list) else []
    _unbind[task_id] = logs.bind(**logs.about_entries(entries, task_id))


@task_postrun.connect
def _unbind_task(task_id: str | None = None, **_: Any) -> None:
    undo = _unbind.pop(task_id, None) if task_id is not None else None
    if undo is not None:
        with contextlib.suppress(ValueError):  # bound in another context: nothing to undo
            undo()


def _json_logging(loglevel: Any = None, logfile: str | None = None, **_: Any) -> None:
    """celery's setup_logging, in JSON mode: our handler for the root logger (celery.task and
    the worker's loggers propagate to it), and what celery would otherwise have done."""
    from celery.utils.log import get_multiprocessing_logger

    logs.configure(loglevel or logging.INFO, "json", process="worker", logfile=logfile)
    billiard = get_multiprocessing_logger()
    if billiard is not None:  # celery's default: its errors only, on our handler
        billiard.propagate = True
        billiard.setLevel(logging.DEBUG if os.environ.get("MP_LOG") else logging.ERROR)
    app = _worker_app
    if app is not None and app.conf.worker_redirect_stdouts:  # print(): a record, as in text
        app.log.redirect_stdouts(app.conf.worker_redirect_stdouts_level)


def _say_as_json(msg: str, f: Any = None) -> None:
    """celery.apps.worker.safe_say (e.g. "worker: Warm shutdown (MainProcess)", written from a
    signal handler with a bare os.write): the same, as a JSON record."""
    import celery.apps.worker as celery_worker

    write = getattr(celery_worker, "_original_os_write", os.write)
    line = logs.json_line("INFO", "celery.apps.worker", " ".join(str(msg).split()))
    with contextlib.suppress(OSError):
        write(2, (line + "\n").encode())


def _json_worker_init(instance: Any = None, **_: Any) -> None:
    """celeryd_init: no banner on stdout (it is not JSON) but a record, and safe_say as JSON."""
    import celery.apps.worker as celery_worker

    celery_worker.safe_say = _say_as_json
    if instance is not None:
        instance.quiet = True


def _json_banner(sender: Any = None, instance: Any = None, **_: Any) -> None:
    if instance is not None:
        banner = instance.startup_info(artlines=False)
        lines = [line.strip(" -*") for line in banner.splitlines()]
        log.info("celery worker %s: %s", sender, "; ".join(line for line in lines if line))


def _connect_json_logging() -> None:
    setup_logging.connect(_json_logging, weak=False, dispatch_uid="evalfleet-json-logging")
    celeryd_init.connect(_json_worker_init, weak=False, dispatch_uid="evalfleet-json-init")
    celeryd_after_setup.connect(_json_banner, weak=False, dispatch_uid="evalfleet-json-banner")


_context_lock = threading.Lock()


def scoring_context(app: FleetApp) -> ScoringContext:
    """One per worker process, built lazily after the fork so connections are not shared, and
    under a lock because the threads pool may ask for it from several threads at once."""
    with _context_lock:
        return _scoring_context(app)


@cache
def _scoring_context(app: FleetApp) -> ScoringContext:
    return build_scoring_context(app.settings, app)


# Infrastructure errors are retried with backoff, forever (see scoring.run_batch).
_TASK_OPTIONS: dict[str, Any] = {
    "autoretry_for": INFRASTRUCTURE_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "max_retries": None,
}


class _StallAware(Task):  # type: ignore[misc]
    """Runs in the worker's parent process when a child was killed for running over its hard
    time limit (Celery acknowledges such a task): the batch is not lost but split, one task per
    trace, and a trace that stalls its own task again and again is dead-lettered."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if isinstance(exc, TimeLimitExceeded) and args:
            settings = self.app.settings
            entries = list(args[0])
            single = len(entries) == 1
            limit = settings.trace_time_limit_s if single else _time_limit(self.name, settings)
            log.error(
                "%s ran over its %g s time limit on %d entries",
                self.name,
                limit,
                len(entries),
                extra=logs.about_entries(entries, task_id),
            )
            why = f"ran over the {limit:g} s task time limit and was killed"
            losses = int((kwargs or {}).get("stalls", 0))
            plan = plan_after_loss(entries, losses, settings, why)
            _after_loss(self.app, self.name, task_id, plan)


def _deaths(task: Task, client: redis.Redis) -> int:
    """How often this delivery of ``task`` started before and never finished: its child died
    (out of memory, a crash, kill -9) and the broker handed the message out again."""
    key = f"{TASK_STARTS_PREFIX}{task.request.id}:{task.request.retries}"
    pipe = client.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 24 * 3600)
    starts, _ = pipe.execute()
    return int(starts) - 1


def _after_death(
    task: Task, entries: list[dict[str, Any]], stalls: int, ctx: ScoringContext
) -> bool:
    """True when a redelivered batch was split, or its trace dead-lettered, instead of run."""
    deaths = _deaths(task, ctx.client)
    settings = ctx.settings
    if not deaths or (len(entries) == 1 and stalls + deaths < settings.max_trace_stalls):
        return False
    why = "its worker process died while scoring it"
    plan = plan_after_loss(entries, stalls + deaths - 1, settings, why)
    _after_loss(task.app, task.name, task.request.id, plan, ctx)
    return True


def _after_loss(
    app: FleetApp, task: str, task_id: str, plan: StallPlan, ctx: ScoringContext | None = None
) -> None:
    """Carry out ``plan``: one new task per trace to retry, dead letters for the rest. In the
    worker's parent process (``ctx`` None) a throwaway context is used: children fork from
    the parent and must not inherit its connections."""
    settings = app.settings
    entries = [entry for entry, _ in plan.retry] + plan.dead
    queue = HEURISTICS_QUEUE if task == HEURISTICS_TASK else judges_queue(entries[0].get("run"))
    retries = {uuid.uuid4().hex: (entry, count) for entry, count in plan.retry}
    own = ctx or build_scoring_context(settings, app)
    try:
        if task == HEURISTICS_TASK:  # the split tasks replace the batch in the in-flight record
            singles = {retry_id: [entry] for retry_id, (entry, _) in retries.items()}
            inflight.add(own.client, singles, inflight.due_in_s(settings))
            inflight.remove(own.client, [task_id])
        for retry_id, (entry, count) in retries.items():
            app.send_task(
                task, args=[[entry]], kwargs={"stalls": count}, queue=queue, task_id=retry_id,
                time_limit=settings.trace_time_limit_s,
            )  # fmt: skip
        if plan.dead:
            dead_letter_entries(own, plan.dead, plan.reason, task)
    finally:
        if ctx is None:
            own.store.close()
            own.client.close()


def _time_limit(task: str, settings: Settings) -> float:
    if task == HEURISTICS_TASK:
        return settings.heuristics_time_limit_s
    return settings.judges_time_limit_s


def heuristics_batch(task: Task, entries: list[dict[str, Any]], stalls: int = 0) -> dict[str, int]:
    ctx = scoring_context(task.app)
    if _after_death(task, entries, stalls, ctx):
        return {"split_or_dead_lettered": len(entries)}
    return run_heuristics(entries, ctx, task.request.id)


def judge_batch_task(task: Task, entries: list[dict[str, Any]], stalls: int = 0) -> dict[str, int]:
    ctx = scoring_context(task.app)
    if _after_death(task, entries, stalls, ctx):
        return {"split_or_dead_lettered": len(entries)}
    return run_batch(JUDGES_TASK, judge_batch, entries, ctx)


def session_batch_task(task: Task, entries: list[dict[str, Any]]) -> dict[str, int]:
    """Completed sessions (evaluator.sessions): evaluated from their stored turns; sessions
    still waiting for a turn come back after a short delay."""
    ctx = scoring_context(task.app)

    def requeue(waiting: list[dict[str, Any]], delay_s: float) -> None:
        session_dispatch(task.app, delay_s)(waiting)

    dispatch_judges = judge_dispatch(task.app)
    return session_batch(
        entries, ctx.store, ctx.settings, requeue, judges=ctx.judges,
        dispatch_judges=lambda work: dispatch_judges(work, None), sinks=ctx.sinks,
        review=lambda trace, scores: ctx.router.hand_off(ctx.client, ctx.store, trace, scores),
    )  # fmt: skip


_worker_app: FleetApp | None = None


def create_worker_app(settings: Settings) -> FleetApp:
    """The fleet's app for ``settings`` with the worker's tasks on it (and, with JSON logs,
    celery's logging set up by us)."""
    global _worker_app
    app = create_app(settings)
    options = {"base": _StallAware, "bind": True, **_TASK_OPTIONS}
    app.task(name=HEURISTICS_TASK, **options)(heuristics_batch)
    app.task(name=JUDGES_TASK, **options)(judge_batch_task)
    # No stall splitting for sessions: their checks run within the evaluator budget, and a
    # redelivered batch rewrites the same rows.
    app.task(name=SESSIONS_TASK, bind=True, **_TASK_OPTIONS)(session_batch_task)
    if settings.log_format == "json":
        _connect_json_logging()
    _worker_app = app
    return app


def __getattr__(name: str) -> Any:
    """``evaluator.worker:app`` for ``celery -A``: built from the environment on first use."""
    if name == "app":
        return _worker_app or create_worker_app(get_settings())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
