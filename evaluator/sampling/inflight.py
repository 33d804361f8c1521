"""Heuristics batches handed to the broker and not finished yet: our own record of them.

Celery's Redis transport can lose a message: a worker pops it from the queue (BRPOP) and only
then records it as unacknowledged, so a worker killed in between takes the message with it
(kombu#305, celery#7950). The sampler therefore writes each heuristics batch here before it
dispatches it (and before it acknowledges the stream entries); the worker removes the record
once the batch is stored; a fleet chore re-dispatches batches overdue by more than
``redispatch_after_s`` (longer than the broker's own redelivery takes). Scoring is idempotent,
so a re-dispatched batch that was only slow has no extra effect.

The record also makes in-flight work visible: ``stats`` and ``evalfleet_heuristics_in_flight``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import redis

from evaluator.constants import HEURISTICS_INFLIGHT, HEURISTICS_INFLIGHT_DUE
from evaluator.settings import Settings

log = logging.getLogger(__name__)

Batch = list[dict[str, Any]]


def add(client: redis.Redis, batches: dict[str, Batch], due_in_s: float) -> None:
    """Record batches (id -> entries) as dispatched, due back within ``due_in_s``."""
    if not batches:
        return
    due = time.time() + due_in_s
    pipe = client.pipeline(transaction=True)
    pipe.hset(HEURISTICS_INFLIGHT, mapping={k: json.dumps(v) for k, v in batches.items()})
    pipe.zadd(HEURISTICS_INFLIGHT_DUE, dict.fromkeys(batches, due))
    pipe.execute()


def remove(client: redis.Redis, batch_ids: list[str]) -> None:
    """The batches are stored (or dead-lettered): forget them."""
    if not batch_ids:
        return
    pipe = client.pipeline(transaction=True)
    pipe.hdel(HEURISTICS_INFLIGHT, *batch_ids)
    pipe.zrem(HEURISTICS_INFLIGHT_DUE, *batch_ids)
    pipe.execute()


def count(client: redis.Redis) -> int:
    return int(client.hlen(HEURISTICS_INFLIGHT))


def redispatch_overdue(
    client: redis.Redis,
    dispatch: Callable[[Batch, str], None],
    due_in_s: float,
    limit: int = 100,
) -> int:
    """Hand overdue batches to the broker again, under the same id; returns how many."""
    overdue: Any = client.zrangebyscore(HEURISTICS_INFLIGHT_DUE, "-inf", time.time(), 0, limit)
    if not overdue:
        return 0
    ids = [i.decode() for i in overdue]
    payloads: Any = client.hmget(HEURISTICS_INFLIGHT, ids)
    sent = 0
    for batch_id, payload in zip(ids, payloads, strict=True):
        if payload is None:  # finished meanwhile
            client.zrem(HEURISTICS_INFLIGHT_DUE, batch_id)
            continue
        dispatch(json.loads(payload), batch_id)
        client.zadd(HEURISTICS_INFLIGHT_DUE, {batch_id: time.time() + due_in_s})
        sent += 1
    log.warning("re-dispatched %d heuristics batch(es) not finished in %.0f s", sent, due_in_s)
    return sent


def due_in_s(settings: Settings) -> float:
    """After the broker's own redelivery (the heuristics workers' visibility timeout) had its
    chance, with margin: 6 minutes with the defaults."""
    return math.ceil(1.5 * settings.visibility_timeout_s(heuristics_only=True))
