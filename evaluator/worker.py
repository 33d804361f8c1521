"""The Celery app and its tasks. Tasks are thin: they deserialise and call ``scoring``.

Run with ``evalfleet worker`` or ``celery -A evaluator.worker:app worker -Q heuristics,judges``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import TimeLimitExceeded
from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_process_shutdown,
)
from kombu.entity import Exchange, Queue
from kombu.exceptions import KombuError

from evaluator import inflight, logs
from evaluator.budget import BudgetPlanner, SpendMeter
from evaluator.constants import (
    HEURISTICS_QUEUE,
    HEURISTICS_TASK,
    JUDGES_BACKFILL_QUEUE,
    JUDGES_QUEUE,
    JUDGES_TASK,
    TASK_STARTS_PREFIX,
    UNACKED_PREFIX,
    WORK_QUEUES,
)
from evaluator.evaluators import heuristic_evaluators
from evaluator.evaluators.judge import JudgeLoop
from evaluator.judges import enabled_judges, judge_registry
from evaluator.ledger import DispatchJudges, reap
from evaluator.review import ReviewRouter
from evaluator.review.routing import republish_unrouted
from evaluator.sampler import Dispatch, DispatchError, FleetChore, Sampler
from evaluator.scoring import (
    INFRASTRUCTURE_ERRORS,
    ScoringContext,
    StallPlan,
    dead_letter_entries,
    judge_batch,
    plan_after_loss,
    run_batch,
    run_heuristics,
)
from evaluator.settings import Settings, get_settings
from evaluator.sinks import metrics
from evaluator.sinks.outbox import build_sinks
from evaluator.sinks.sql import SQLStore
from evaluator.streams import connect


def worker_role(queues: Sequence[str]) -> str:
    """Heuristics-only workers, or workers of judge queues (whose tasks may run much longer)."""
    return HEURISTICS_QUEUE if set(queues) <= {HEURISTICS_QUEUE} else JUDGES_QUEUE


def _transport_options(role: str, settings: Settings) -> dict[str, Any]:
    visibility_timeout = settings.visibility_timeout_s(heuristics_only=role == HEURISTICS_QUEUE)
    key = f"{UNACKED_PREFIX}{role}"
    # kombu sweeps for abandoned (unacked) messages every interval x throttle seconds, 100 s by
    # default; keep the sweep well inside the visibility timeout so redelivery follows it closely.
    return {
        "visibility_timeout": visibility_timeout,
        "unacked_key": key,
        "unacked_index_key": f"{key}:index",
        "unacked_mutex_key": f"{key}:mutex",
        "unacked_restore_interval": max(1, min(10, visibility_timeout // 3)),
        "unacked_restore_throttle": 1,
        # BRPOP over the queues in sorted order, not round robin: live judge work before
        # re-evaluation (see constants.JUDGES_BACKFILL_QUEUE).
        "queue_order_strategy": "sorted",
        # A broker that vanishes without closing the TCP connection (failover, a partition)
        # fails commands after this instead of blocking them forever (kombu's default).
        "socket_connect_timeout": 5,
        "socket_timeout": 10,
    }


def create_app(settings: Settings) -> Celery:
    app = Celery("evalfleet", broker=settings.celery_broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # A task is acknowledged after it ran; a killed worker's tasks run again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(q, Exchange(q), routing_key=q) for q in WORK_QUEUES],
        task_default_queue=HEURISTICS_QUEUE,
        task_routes={
            HEURISTICS_TASK: {"queue": HEURISTICS_QUEUE},
            JUDGES_TASK: {"queue": JUDGES_QUEUE},
        },
        # Enforced by the worker's parent process, which kills the child (see _StallAware).
        task_annotations={
            HEURISTICS_TASK: {"time_limit": settings.heuristics_time_limit_s},
            JUDGES_TASK: {"time_limit": settings.judges_time_limit_s},
        },
        broker_transport_options=_transport_options(JUDGES_QUEUE, settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    from evaluator.broker import configure

    configure(app, settings)  # rides out broker outages: see evaluator.broker
    return app


log = logging.getLogger(__name__)
app = create_app(get_settings())


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
    if app.conf.worker_redirect_stdouts:  # print() in a task: a record, as in text mode
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


if get_settings().log_format == "json":
    setup_logging.connect(_json_logging, weak=False, dispatch_uid="evalfleet-json-logging")
    celeryd_init.connect(_json_worker_init, weak=False, dispatch_uid="evalfleet-json-init")
    celeryd_after_setup.connect(_json_banner, weak=False, dispatch_uid="evalfleet-json-banner")


_context_lock = threading.Lock()


def scoring_context() -> ScoringContext:
    """One per worker process, built lazily after the fork so connections are not shared, and
    under a lock because the threads pool may ask for it from several threads at once."""
    with _context_lock:
        return _build_scoring_context()


@cache
def _build_scoring_context() -> ScoringContext:
    settings = get_settings()
    store = SQLStore(settings.sqlalchemy_url)
    client = connect(settings.redis_url)
    return ScoringContext(
        evaluators=heuristic_evaluators(settings),
        store=store,
        router=_review_router(settings),
        client=client,
        settings=settings,
        judges=judge_registry(settings),
        requeue=_requeue_judges,
        run_judges=JudgeLoop(settings),
        sinks=build_sinks(settings),
        spend=SpendMeter(client, settings, store.judge_spend_since),
    )


def serve_queues(celery_app: Celery, queues: Sequence[str], settings: Settings) -> None:
    """Set up a worker process for ``queues``: its role's unacked record and visibility."""
    celery_app.conf.broker_transport_options = _transport_options(worker_role(queues), settings)


def _review_router(settings: Settings) -> ReviewRouter:
    return ReviewRouter(settings.review_thresholds, settings.review_routed_ttl_s)


def judges_queue(run: str | None) -> str:
    """Live judge work, or a re-evaluation run's (served after live work)."""
    return JUDGES_QUEUE if run is None else JUDGES_BACKFILL_QUEUE


def _requeue_judges(entries: list[dict[str, Any]], delay_s: float) -> None:
    for run in {entry.get("run") for entry in entries}:
        batch = [entry for entry in entries if entry.get("run") == run]
        app.send_task(JUDGES_TASK, args=[batch], queue=judges_queue(run), countdown=delay_s)


def judge_dispatch(celery_app: Celery = app) -> DispatchJudges:
    """The reaper's and ``reeval``'s hand-off of judge entries: live or backfill queue."""

    def dispatch(entries: list[dict[str, Any]], run: str | None) -> None:
        celery_app.send_task(JUDGES_TASK, args=[entries], queue=judges_queue(run))

    return dispatch


def build_sampler(settings: Settings, consumer: str | None = None) -> Sampler:
    """The production sampler: Celery dispatch, the spend budget, and its fleet chores (the
    ledger reaper and the estimated-score gauges)."""
    from evaluator.stats import refresh_estimate_gauges

    client = connect(settings.redis_url)
    store = SQLStore(settings.sqlalchemy_url)
    judges = enabled_judges(settings)
    budget = BudgetPlanner(client, settings, SpendMeter(client, settings, store.judge_spend_since))
    chores = [
        FleetChore(
            client,
            "reaper",
            settings.reaper_interval_s,
            lambda: reap(store, judge_registry(settings), settings, judge_dispatch()),
        ),
        FleetChore(client, "estimates", 60, lambda: refresh_estimate_gauges(store)),
        FleetChore(
            client,
            "review-republish",
            settings.reaper_interval_s,
            lambda: republish_unrouted(client, _review_router(settings), store),
        ),
    ]
    dispatch = celery_dispatch()
    chores.append(
        FleetChore(
            client,
            "inflight",
            settings.reaper_interval_s,
            lambda: metrics.HEURISTICS_REDISPATCHED.inc(
                inflight.redispatch_overdue(
                    client,
                    lambda entries, batch_id: dispatch(HEURISTICS_QUEUE, entries, batch_id),
                    inflight.due_in_s(settings),
                )
            ),
        )
    )
    broker = connect(settings.celery_broker_url)
    return Sampler(
        client, settings, dispatch, consumer, judges, budget=budget, chores=chores, broker=broker
    )


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
            settings = get_settings()
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
            _after_loss(self.name, task_id, plan_after_loss(entries, losses, settings, why))


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
    _after_loss(task.name, task.request.id, plan, ctx)
    return True


def _after_loss(
    task: str, task_id: str, plan: StallPlan, ctx: ScoringContext | None = None
) -> None:
    """Carry out ``plan``: one new task per trace to retry, dead letters for the rest. In the
    worker's parent process (``ctx`` None) a throwaway context is used: children fork from
    the parent and must not inherit its connections."""
    settings = get_settings()
    entries = [entry for entry, _ in plan.retry] + plan.dead
    queue = HEURISTICS_QUEUE if task == HEURISTICS_TASK else judges_queue(entries[0].get("run"))
    retries = {uuid.uuid4().hex: (entry, count) for entry, count in plan.retry}
    own = ctx or _build_scoring_context.__wrapped__()
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


@app.task(name=HEURISTICS_TASK, base=_StallAware, bind=True, **_TASK_OPTIONS)
def heuristics_batch(task: Task, entries: list[dict[str, Any]], stalls: int = 0) -> dict[str, int]:
    ctx = scoring_context()
    if _after_death(task, entries, stalls, ctx):
        return {"split_or_dead_lettered": len(entries)}
    return run_heuristics(entries, ctx, task.request.id)


@app.task(name=JUDGES_TASK, base=_StallAware, bind=True, **_TASK_OPTIONS)
def judge_batch_task(task: Task, entries: list[dict[str, Any]], stalls: int = 0) -> dict[str, int]:
    ctx = scoring_context()
    if _after_death(task, entries, stalls, ctx):
        return {"split_or_dead_lettered": len(entries)}
    return run_batch(JUDGES_TASK, judge_batch, entries, ctx)


_TASK_FOR_QUEUE = {HEURISTICS_QUEUE: HEURISTICS_TASK, JUDGES_QUEUE: JUDGES_TASK}


def celery_dispatch(celery_app: Celery = app) -> Dispatch:
    """The sampler's hand-off: one task per batch, raising if the broker refused it."""

    def dispatch(queue: str, entries: list[dict[str, Any]], batch_id: str) -> None:
        try:
            task = _TASK_FOR_QUEUE[queue]
            celery_app.send_task(task, args=[entries], queue=queue, task_id=batch_id)
        except (KombuError, redis.RedisError, OSError) as exc:
            raise DispatchError(f"broker refused the batch: {exc}") from exc

    return dispatch
