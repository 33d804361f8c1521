"""Where the fleet's processes are put together from their settings: the production sampler
(Celery dispatch, the spend budget, its fleet chores) and a worker process's scoring context.

Every piece gets the settings it is handed; nothing here reads the environment itself.
"""

from __future__ import annotations

from celery import Celery

from evaluator import inflight, metrics
from evaluator.budget import BudgetPlanner, SpendMeter
from evaluator.celery_app import celery_dispatch, judge_dispatch, requeue_judges
from evaluator.constants import HEURISTICS_QUEUE
from evaluator.evaluators import heuristic_evaluators
from evaluator.evaluators.judge import JudgeLoop
from evaluator.judges import enabled_judges, judge_registry
from evaluator.ledger import reap
from evaluator.review import ReviewRouter
from evaluator.review.routing import republish_unrouted
from evaluator.sampler import FleetChore, Sampler
from evaluator.scoring import ScoringContext
from evaluator.settings import Settings
from evaluator.sinks.outbox import build_sinks
from evaluator.sinks.sql import SQLStore
from evaluator.streams import connect


def review_router(settings: Settings) -> ReviewRouter:
    return ReviewRouter(settings.review_thresholds, settings.review_routed_ttl_s)


def build_sampler(settings: Settings, app: Celery, consumer: str | None = None) -> Sampler:
    """The production sampler: dispatch to ``app``'s queues, the spend budget, and its fleet
    chores (the ledger reaper, the estimated-score gauges, review republishing and the
    re-dispatch of heuristics batches the broker lost)."""
    from evaluator.stats import refresh_estimate_gauges

    client = connect(settings.redis_url)
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
    ]
    broker = connect(settings.celery_broker_url)
    return Sampler(
        client, settings, dispatch, consumer, judges, budget=budget, chores=chores, broker=broker
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
