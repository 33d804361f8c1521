"""The sampler and the session tracker against real Redis: a batch's turns are sent to the
tracker before its dispatch and its entries acknowledged only once Redis has recorded them, so a
sampler that dies or fails in between loses no turn, and the re-read changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from evaluator.constants import SAMPLER_GROUP, SESSION_PREFIX, TRACES_STREAM
from evaluator.ingest import publish_many
from evaluator.models import Trace
from evaluator.sampling.sampler import Sampler
from evaluator.sessions.tracker import SessionTracker, session_digest
from evaluator.settings import Settings
from evaluator.streams import group_info

SESSIONS = 5
TURNS = 30


class Killed(BaseException):
    """The process dying at that point: nothing after it runs (not an Exception: no handler in
    the sampler may treat it as an outage and carry on)."""


class Broker:
    """Keeps dispatched batches; with ``die_after_taking`` set, takes the batch and then dies,
    as a sampler killed right after the broker had the batch and before it was acknowledged."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.die_after_taking = False

    def __call__(self, queue: str, entries: list[dict[str, Any]], batch_id: str) -> None:
        self.batches.append(entries)
        if self.die_after_taking:
            raise Killed


def chat() -> list[Trace]:
    return [
        Trace(trace_id=f"turn-{n:03d}", input="q", output="a", tenant="acme",
              session_id=f"s{n % SESSIONS}")
        for n in range(TURNS)
    ]  # fmt: skip


def sampler(client: redis.Redis, broker: Broker, settings: Settings) -> Sampler:
    tracker = SessionTracker.from_settings(client, settings)
    return Sampler(client, settings, broker, consumer="same-name", judges={}, sessions=tracker)


def drain(loop: Sampler) -> None:
    while loop.step(block_ms=1):
        pass


def pending(client: redis.Redis) -> int:
    return int(group_info(client, TRACES_STREAM, SAMPLER_GROUP)["pending"])


def assert_every_turn_recorded_once(client: redis.Redis, settings: Settings) -> None:
    tracker = SessionTracker.from_settings(client, settings)
    sessions = tracker.read_due(now_ms=2**53)  # long after any quiet period
    assert len(sessions) == SESSIONS
    held = sorted(t for s in sessions for t in s.turn_ids)
    assert held == [f"turn-{n:03d}" for n in range(TURNS)]
    # Observed twice (before the crash and after the restart), counted once.
    assert [s.seen for s in sessions] == [TURNS // SESSIONS] * SESSIONS


def test_a_sampler_killed_between_dispatch_and_acknowledging_loses_no_turn(
    redis_client: redis.Redis, redis_url: str
) -> None:
    settings = Settings(redis_url=redis_url)
    publish_many(redis_client, chat(), settings)
    broker = Broker()
    broker.die_after_taking = True
    with pytest.raises(Killed):
        sampler(redis_client, broker, settings).step(block_ms=1)
    assert broker.batches  # the broker has the batch; the turns were sent, never answered for
    assert pending(redis_client) == TURNS  # so nothing was acknowledged
    restarted = Broker()
    drain(sampler(redis_client, restarted, settings))  # same name: its pending entries first
    assert pending(redis_client) == 0
    assert sum(len(batch) for batch in restarted.batches) == TURNS
    assert_every_turn_recorded_once(redis_client, settings)


def test_entries_are_not_acknowledged_while_their_turns_cannot_be_recorded(
    redis_client: redis.Redis, redis_url: str
) -> None:
    settings = Settings(redis_url=redis_url)
    publish_many(redis_client, chat(), settings)
    # One session's key holds something else: Redis refuses that session's turns.
    blocked = f"{SESSION_PREFIX}{session_digest('acme', 's3')}"
    redis_client.set(blocked, "not a hash")
    broker = Broker()
    loop = sampler(redis_client, broker, settings)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        loop.step(block_ms=1)
    assert broker.batches and pending(redis_client) == TURNS  # dispatched, yet none acked
    redis_client.delete(blocked)
    loop._recover_own_pending = True  # as the run loop does after an outage
    drain(loop)
    assert pending(redis_client) == 0
    assert_every_turn_recorded_once(redis_client, settings)
