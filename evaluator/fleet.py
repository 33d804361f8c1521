"""Where the fleet's processes are put together from their settings: the production sampler
(Celery dispatch, the spend budget, its fleet chores) and a worker process's scoring context.

Every piece gets the settings it is handed; nothing here reads the environment itself.
"""

from __future__ import annotations

import contextlib

import redis
from celery import Celery

from evaluator.celery_app import celery_dispatch, judge_dispatch, requeue_judges, session_dispatch
from evaluator.constants import HEURISTICS_QUEUE
from evaluator.evaluation.scoring import ScoringContext
from evaluator.evaluators import heuristic_evaluators
from evaluator.judging.files import enabled_judges, judge_registry
from evaluator.judging.runtime import JudgeLoop
from evaluator.ledger import reap
from evaluator.ops import metrics
from evaluator.review import ReviewRouter
from evaluator.review.routing import republish_unrouted
from evaluator.sampling import inflight
from evaluator.sampling.budget import BudgetPlanner, SpendMeter
from evaluator.sampling.sampler import FleetChore, Sampler
from evaluator.sessions.tracker import SessionTracker
from evaluator.settings import Settings
from evaluator.sinks.outbox import build_sinks
from evaluator.sinks.sql import SQLStore
from evaluator.streams import ConsumerLease, connect, lease_consumer_name, prune_consumers


def review_router(settings: Settings) -> ReviewRouter:
    return ReviewRouter(settings.review_thresholds, settings.review_routed_ttl_s)


def build_sampler(settings: Settings, app: Celery, consumer: str | None = None) -> Sampler:
    """The production sampler: dispatch to ``app``'s queues, the spend budget, and its fleet
    chores (the ledger reaper, the estimated-score gauges, review republishing, the
    re-dispatch of heuristics batches the broker lost and the removal of dead consumers).

    Its consumer name is leased (evaluator.streams.lease_consumer_name): ``consumer``, else
    EVALFLEET_SAMPLER_CONSUMER when set, else the first free ``<hostname>-<slot>``; a name a
    live sampler holds raises ConsumerNameTaken."""
    client = connect(settings.redis_url)
    # Before anything else is opened: a refused name ends the start here.
    requested = consumer or settings.sampler_consumer
    lease = lease_consumer_name(
        client, requested, settings.sampler_consumer_lease_s, settings.sampler_consumer_slots
    )
    try:
        return _production_sampler(settings, app, client, lease)
    except BaseException:
        # A start retried after an outage asks for the name again: free it for that.
        with contextlib.suppress(redis.RedisError):
            lease.release()
        raise


def _production_sampler(
    settings: Settings, app: Celery, client: redis.Redis, lease: ConsumerLease
) -> Sampler:
    from evaluator.console.stats import refresh_estimate_gauges

    prune_idle_ms = settings.sampler_consumer_prune_idle_ms or 10 * settings.claim_idle_ms
    store = SQLStore(settings.sqlalchemy_url)
    judges = enabled_judges(settings)
    budget = BudgetPlanner(client, settings, SpendMeter(client, settings, store.judge_spend_since))
    dispatch = celery_dispatch(app)
    dispatch_judges = judge_dispatch(app)
    chores = [
        FleetChore(
            client,
            "reaper",
            settings.reaper_interval_s,
            lambda: reap(store, judge_registry(settings), settings, dispatch_judges),
        ),
        FleetChore(client, "estimates", 60, lambda: refresh_estimate_gauges(store)),
        FleetChore(
            client,
            "review-republish",
            settings.reaper_interval_s,
            lambda: republish_unrouted(client, review_router(settings), store),
        ),
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
        ),
        FleetChore(
            client,
            "consumers",
            settings.reaper_interval_s,
            lambda: metrics.SAMPLER_CONSUMERS_REMOVED.inc(
                len(prune_consumers(client, prune_idle_ms))
            ),
        ),
    ]
    sessions = SessionTracker.from_settings(client, settings)
    dispatch_sessions = session_dispatch(app)

    def complete_sessions() -> None:
        metrics.SESSIONS_COMPLETED.inc(
            sessions.complete_all_due(lambda done: dispatch_sessions([s.wire() for s in done]))
        )
        metrics.SESSIONS_OPEN.set(sessions.open_count())

    chores.append(
        FleetChore(client, "sessions", settings.session_check_interval_s, complete_sessions)
    )
    broker = connect(settings.celery_broker_url)
    return Sampler(
        client,
        settings,
        dispatch,
        judges=judges,
        budget=budget,
        chores=chores,
        broker=broker,
        lease=lease,
        sessions=sessions,
    )


def build_scoring_context(settings: Settings, app: Celery) -> ScoringContext:
    """What a worker process scores with: its own connections (built after the fork), the
    evaluators, judges, sinks and spend meter of ``settings``, requeueing onto ``app``."""
    store = SQLStore(settings.sqlalchemy_url)
    client = connect(settings.redis_url)
    return ScoringContext(
        evaluators=heuristic_evaluators(settings),
        store=store,
        router=review_router(settings),
        client=client,
        settings=settings,
        judges=judge_registry(settings),
        requeue=requeue_judges(app),
        run_judges=JudgeLoop(settings),
        sinks=build_sinks(settings),
        spend=SpendMeter(client, settings, store.judge_spend_since),
    )
