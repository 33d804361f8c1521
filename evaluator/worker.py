"""The Celery app and its tasks. Tasks are thin: they deserialise and call ``scoring``.

Run with ``evalfleet worker`` or ``celery -A evaluator.worker:app worker -Q heuristics,judges``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_process_shutdown
from kombu.entity import Exchange, Queue
from kombu.exceptions import KombuError
from sqlalchemy.exc import OperationalError as DatabaseUnavailable

from evaluator.constants import (
    DEAD_STREAM,
    HEURISTICS_QUEUE,
    HEURISTICS_TASK,
    JUDGES_QUEUE,
    JUDGES_TASK,
)
from evaluator.evaluators import heuristic_evaluators
from evaluator.evaluators.judge import JudgeLoop
from evaluator.judges import judge_registry
from evaluator.review import ReviewRouter
from evaluator.sampler import Dispatch, DispatchError
from evaluator.scoring import ScoringContext, judge_batch, score_batch
from evaluator.settings import Settings, get_settings
from evaluator.sinks import metrics
from evaluator.sinks.outbox import build_sinks
from evaluator.sinks.sql import SQLStore
from evaluator.streams import connect, dead_letter


def _transport_options(visibility_timeout_s: int) -> dict[str, Any]:
    # kombu sweeps for abandoned (unacked) messages every interval x throttle seconds, 100 s by
    # default; keep the sweep well inside the visibility timeout so redelivery follows it closely.
    return {
        "visibility_timeout": visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, visibility_timeout_s // 3)),
        "unacked_restore_throttle": 1,
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
        task_queues=[
            Queue(q, Exchange(q), routing_key=q) for q in (HEURISTICS_QUEUE, JUDGES_QUEUE)
        ],
        task_default_queue=HEURISTICS_QUEUE,
        task_routes={
            HEURISTICS_TASK: {"queue": HEURISTICS_QUEUE},
            JUDGES_TASK: {"queue": JUDGES_QUEUE},
        },
        broker_transport_options=_transport_options(settings.broker_visibility_timeout_s),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


log = logging.getLogger(__name__)
app = create_app(get_settings())


@worker_process_shutdown.connect
def _child_exited(**_: Any) -> None:
    metrics.process_exited(os.getpid())


_context_lock = threading.Lock()


def scoring_context() -> ScoringContext:
    """One per worker process, built lazily after the fork so connections are not shared, and
    under a lock because the threads pool may ask for it from several threads at once."""
    with _context_lock:
        return _build_scoring_context()


@cache
def _build_scoring_context() -> ScoringContext:
    settings = get_settings()
    return ScoringContext(
        evaluators=heuristic_evaluators(settings),
        store=SQLStore(settings.sqlalchemy_url),
        router=ReviewRouter(settings.review_thresholds, settings.review_routed_ttl_s),
        client=connect(settings.redis_url),
        settings=settings,
        judges=judge_registry(settings),
        requeue=_requeue_judges,
        run_judges=JudgeLoop(settings),
        sinks=build_sinks(settings),
    )


def _requeue_judges(entries: list[dict[str, Any]], delay_s: float) -> None:
    app.send_task(JUDGES_TASK, args=[entries], queue=JUDGES_QUEUE, countdown=delay_s)


# Infrastructure errors are retried with backoff, forever: the work waits for the database or
# Redis to come back. Anything else is a bug: the batch is dead-lettered with the error (to be
# redriven after the fix) rather than acknowledged and lost, or redelivered in a crash loop.
_INFRASTRUCTURE = (DatabaseUnavailable, redis.ConnectionError, redis.TimeoutError)
_TASK_OPTIONS: dict[str, Any] = {
    "autoretry_for": _INFRASTRUCTURE,
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "max_retries": None,
}


def _run(
    task: str,
    work: Callable[[list[dict[str, Any]], ScoringContext], Any],
    entries: list[dict[str, Any]],
) -> dict[str, int]:
    ctx = scoring_context()
    try:
        return dict(vars(work(entries, ctx)))
    except _INFRASTRUCTURE:
        raise
    except Exception as exc:
        log.exception("%s failed; dead-lettering its %d entries", task, len(entries))
        reason = f"worker {task}: {type(exc).__name__}: {exc}"[:1000]
        failed_at = datetime.now(UTC).isoformat()
        pipe = ctx.client.pipeline(transaction=True)
        for entry in entries:
            pipe.xadd(
                DEAD_STREAM, dead_letter(reason, entry["trace"], entry["id"], task, failed_at)
            )
        pipe.execute()
        return {"dead_lettered": len(entries)}


@app.task(name=HEURISTICS_TASK, **_TASK_OPTIONS)
def heuristics_batch(entries: list[dict[str, Any]]) -> dict[str, int]:
    return _run(HEURISTICS_TASK, score_batch, entries)


@app.task(name=JUDGES_TASK, **_TASK_OPTIONS)
def judge_batch_task(entries: list[dict[str, Any]]) -> dict[str, int]:
    return _run(JUDGES_TASK, judge_batch, entries)


_TASK_FOR_QUEUE = {HEURISTICS_QUEUE: HEURISTICS_TASK, JUDGES_QUEUE: JUDGES_TASK}


def celery_dispatch(celery_app: Celery = app) -> Dispatch:
    """The sampler's hand-off: one task per batch, raising if the broker refused it."""

    def dispatch(queue: str, entries: list[dict[str, Any]]) -> None:
        try:
            celery_app.send_task(_TASK_FOR_QUEUE[queue], args=[entries], queue=queue)
        except (KombuError, redis.RedisError, OSError) as exc:
            raise DispatchError(f"broker refused the batch: {exc}") from exc

    return dispatch
