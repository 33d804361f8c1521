"""The fleet's Celery app, built from the settings it is given (never at import time), and the
hand-offs that put work on its queues.

Producers (the sampler, the ledger's reaper, ``reeval``) send tasks by name and need nothing of
the worker's code; the worker adds its tasks with ``evaluator.worker.create_worker_app``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery import Celery
from kombu.entity import Exchange, Queue
from kombu.exceptions import KombuError

from evaluator.constants import (
    HEURISTICS_QUEUE,
    HEURISTICS_TASK,
    JUDGES_BACKFILL_QUEUE,
    JUDGES_QUEUE,
    JUDGES_TASK,
    SESSIONS_TASK,
    UNACKED_PREFIX,
    WORK_QUEUES,
)
from evaluator.ledger import DispatchJudges
from evaluator.sampling.sampler import Dispatch, DispatchError
from evaluator.settings import Settings

# Judge entries to send again after ``delay_s`` (deferred by rate limits or an outage).
RequeueJudges = Callable[[list[dict[str, Any]], float], None]


class FleetApp(Celery):  # type: ignore[misc]
    """A Celery app that carries the settings it was built from: tasks and their failure hooks
    read ``task.app.settings``, not a process-wide global."""

    settings: Settings


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


def create_app(settings: Settings) -> FleetApp:
    """The app for ``settings``: its broker, queues, acknowledgement and time-limit policy."""
    app = FleetApp("evalfleet", broker=settings.celery_broker_url)
    app.settings = settings
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
            SESSIONS_TASK: {"queue": HEURISTICS_QUEUE},
        },
        # Enforced by the worker's parent process, which kills the child (see worker._StallAware).
        task_annotations={
            HEURISTICS_TASK: {"time_limit": settings.heuristics_time_limit_s},
            JUDGES_TASK: {"time_limit": settings.judges_time_limit_s},
            SESSIONS_TASK: {"time_limit": settings.heuristics_time_limit_s},
        },
        broker_transport_options=_transport_options(JUDGES_QUEUE, settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    from evaluator.broker import configure

    configure(app, settings)  # rides out broker outages: see evaluator.broker
    return app


def serve_queues(app: Celery, queues: Sequence[str], settings: Settings) -> None:
    """Set up a worker process for ``queues``: its role's unacked record and visibility."""
    app.conf.broker_transport_options = _transport_options(worker_role(queues), settings)


def judges_queue(run: str | None) -> str:
    """Live judge work, or a re-evaluation run's (served after live work)."""
    return JUDGES_QUEUE if run is None else JUDGES_BACKFILL_QUEUE


_TASK_FOR_QUEUE = {HEURISTICS_QUEUE: HEURISTICS_TASK, JUDGES_QUEUE: JUDGES_TASK}


def celery_dispatch(app: Celery) -> Dispatch:
    """The sampler's hand-off: one task per batch, raising if the broker refused it."""

    def dispatch(queue: str, entries: list[dict[str, Any]], batch_id: str) -> None:
        try:
            task = _TASK_FOR_QUEUE[queue]
            app.send_task(task, args=[entries], queue=queue, task_id=batch_id)
        except (KombuError, redis.RedisError, OSError) as exc:
            raise DispatchError(f"broker refused the batch: {exc}") from exc

    return dispatch


def judge_dispatch(app: Celery) -> DispatchJudges:
    """The reaper's and ``reeval``'s hand-off of judge entries: live or backfill queue."""

    def dispatch(entries: list[dict[str, Any]], run: str | None) -> None:
        app.send_task(JUDGES_TASK, args=[entries], queue=judges_queue(run))

    return dispatch


def requeue_judges(app: Celery) -> RequeueJudges:
    """A judge worker's hand-off of deferred entries: each run's to its queue, after a delay."""

    def requeue(entries: list[dict[str, Any]], delay_s: float) -> None:
        for run in {entry.get("run") for entry in entries}:
            batch = [entry for entry in entries if entry.get("run") == run]
            app.send_task(JUDGES_TASK, args=[batch], queue=judges_queue(run), countdown=delay_s)

    return requeue


def session_dispatch(app: Celery, delay_s: float = 0.0) -> Callable[[list[dict[str, Any]]], None]:
    """The hand-off of completed sessions (their wire form) to the heuristics workers."""

    def dispatch(entries: list[dict[str, Any]]) -> None:
        if entries:
            app.send_task(SESSIONS_TASK, args=[entries], queue=HEURISTICS_QUEUE,
                          countdown=delay_s or None)  # fmt: skip

    return dispatch
