"""Sampler consumer names against real Redis (issue 18): a restarted sampler takes its name back
and handles its own pending entries at once, two samplers never hold one name, and dead
consumers with nothing pending leave the group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import make_trace, wait_for
from test_sampler import Collect

from evaluator.constants import SAMPLER_GROUP, SAMPLER_LEASE_PREFIX, TRACES_STREAM
from evaluator.ingest import publish_many
from evaluator.sampling.sampler import Sampler
from evaluator.settings import Settings
from evaluator.streams import (
    ConsumerLease,
    ConsumerNameTaken,
    ensure_group,
    lease_consumer_name,
    prune_consumers,
    text,
)

ROOT = Path(__file__).resolve().parent.parent

# A sampler that leases a default name, reads a batch and hangs in the dispatch: killed there,
# it leaves its entries read and not acknowledged under its name.
HANGING_SAMPLER = """
import threading, time
from evaluator.sampling.sampler import Sampler
from evaluator.settings import Settings
from evaluator.streams import connect, lease_consumer_name

settings = Settings(sampler_block_ms=10, claim_interval_s=0.05)
client = connect(settings.redis_url)
lease = lease_consumer_name(client, None, 30, 4)
print(lease.name, flush=True)

def hang(queue, entries, batch_id):
    time.sleep(3600)

Sampler(client, settings, hang, lease=lease).run(threading.Event())
"""


def consumers(client: redis.Redis) -> dict[str, int]:
    """The group's consumers and their pending entries (none before the group exists)."""
    try:
        listed = client.xinfo_consumers(TRACES_STREAM, SAMPLER_GROUP)
    except redis.ResponseError:
        return {}
    return {text(c["name"]): int(c["pending"]) for c in listed}


def test_a_killed_sampler_restarted_under_its_name_handles_its_pending_entries_at_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    publish_many(redis_client, [make_trace(i) for i in range(30)], Settings())
    with subprocess.Popen(
        [sys.executable, "-c", HANGING_SAMPLER],
        cwd=ROOT,
        env={**os.environ, "EVALFLEET_REDIS_URL": redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as process:
        try:
            assert process.stdout is not None
            name = process.stdout.readline().decode().strip()
            assert name == f"{socket.gethostname()}-0"
            wait_for(lambda: consumers(redis_client).get(name) == 30, 30, "the batch read")
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert redis_client.exists(f"{SAMPLER_LEASE_PREFIX}{name}")  # its lease outlived it

    # The restart: same host, the dead holder's lease is taken over and its name comes back.
    lease = lease_consumer_name(redis_client, None, 30, 4)
    assert lease.name == name
    dispatch = Collect()
    settings = Settings(sampler_block_ms=10, claim_interval_s=0.05)  # idle reclaim: 60 s
    restarted = Sampler(redis_client, settings, dispatch, lease=lease)
    stop = threading.Event()
    started = time.monotonic()
    runner = threading.Thread(target=restarted.run, args=(stop,))
    runner.start()
    try:
        wait_for(lambda: len(dispatch.entries) == 30, 2, "own pending entries handled")
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        runner.join(5)
    assert elapsed < 2 and restarted.counts.reclaimed == 0  # re-read, not reclaimed
    assert {json.loads(e["trace"])["trace_id"] for e in dispatch.entries} == {
        make_trace(i).trace_id for i in range(30)
    }
    assert consumers(redis_client) == {name: 0}
    assert not redis_client.exists(lease.key)  # a clean stop frees the name


def test_a_second_sampler_cannot_take_a_held_name(redis_client: redis.Redis) -> None:
    held = lease_consumer_name(redis_client, "sampler-a", 30, 4)
    with pytest.raises(ConsumerNameTaken, match="'sampler-a' is held by a live sampler"):
        lease_consumer_name(redis_client, "sampler-a", 30, 4)
    # A holder on another host cannot be checked: refused until its lease lapses.
    redis_client.set(f"{SAMPLER_LEASE_PREFIX}sampler-b", "other-host|b|n|1|1|x", px=30_000)
    with pytest.raises(ConsumerNameTaken, match="host other-host, pid 1"):
        lease_consumer_name(redis_client, "sampler-b", 30, 4)
    # Default names take the next free slot, and say so when none is left.
    host = socket.gethostname()
    first, second = (lease_consumer_name(redis_client, None, 30, 2) for _ in range(2))
    assert (first.name, second.name) == (f"{host}-0", f"{host}-1")
    with pytest.raises(ConsumerNameTaken, match="all held by live samplers"):
        lease_consumer_name(redis_client, None, 30, 2)
    held.release()
    assert lease_consumer_name(redis_client, "sampler-a", 30, 4).name == "sampler-a"


def test_a_sampler_whose_name_was_taken_meanwhile_stops(redis_client: redis.Redis) -> None:
    lease = ConsumerLease(redis_client, "sampler-c", ttl_s=0.3)
    assert lease.acquire()
    loop = Sampler(redis_client, Settings(sampler_block_ms=10), Collect(), lease=lease)
    assert loop.consumer == "sampler-c"
    # Its lease lapsed (Redis out of reach for longer than the TTL) and another took the name.
    redis_client.set(lease.key, "other-host|b|n|7|1|y", px=30_000)
    with pytest.raises(ConsumerNameTaken, match="was taken by another sampler"):
        loop.run(threading.Event())
    assert text(redis_client.get(lease.key) or b"") == "other-host|b|n|7|1|y"  # left alone


def test_the_lease_is_renewed_while_the_sampler_runs(redis_client: redis.Redis) -> None:
    lease = ConsumerLease(redis_client, "sampler-d", ttl_s=0.3)
    assert lease.acquire()
    loop = Sampler(redis_client, Settings(sampler_block_ms=10), Collect(), lease=lease)
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stop,))
    runner.start()
    try:
        time.sleep(1.0)  # three TTLs
        assert text(redis_client.get(lease.key) or b"") == lease.token
    finally:
        stop.set()
        runner.join(5)
    assert not redis_client.exists(lease.key)


def test_dead_consumers_with_nothing_pending_are_removed(redis_client: redis.Redis) -> None:
    ensure_group(redis_client)
    publish_many(redis_client, [make_trace(i) for i in range(4)], Settings())

    def read(consumer: str, ack: bool) -> None:
        response: Any = redis_client.xreadgroup(
            SAMPLER_GROUP, consumer, {TRACES_STREAM: ">"}, count=1
        )
        [(_, entries)] = response
        if ack:
            redis_client.xack(TRACES_STREAM, SAMPLER_GROUP, entries[0][0])

    read("dead-empty", ack=True)
    read("dead-holding", ack=False)
    live = ConsumerLease(redis_client, "live-empty", 30)
    assert live.acquire()
    read("live-empty", ack=True)
    time.sleep(0.3)
    read("recent-empty", ack=True)
    assert prune_consumers(redis_client, idle_ms=250) == ["dead-empty"]
    assert consumers(redis_client) == {"dead-holding": 1, "live-empty": 0, "recent-empty": 0}
    # The one holding entries stays however long it idles: XAUTOCLAIM moves its entries.
    time.sleep(0.3)
    assert prune_consumers(redis_client, idle_ms=250) == ["recent-empty"]
    assert consumers(redis_client) == {"dead-holding": 1, "live-empty": 0}
    assert redis_client.xpending(TRACES_STREAM, SAMPLER_GROUP)["pending"] == 1


def test_the_production_sampler_leases_its_name_and_prunes_consumers(
    redis_url: str, sqlite_url: str, redis_client: redis.Redis
) -> None:
    from evaluator.celery_app import create_app
    from evaluator.fleet import build_sampler

    settings = Settings(redis_url=redis_url, database_url=sqlite_url)
    app = create_app(settings)
    first, second = build_sampler(settings, app), build_sampler(settings, app)
    host = socket.gethostname()
    assert (first.consumer, second.consumer) == (f"{host}-0", f"{host}-1")
    assert "evalfleet:chore:consumers" in {getattr(c, "key", "") for c in first.chores}
    named = Settings(redis_url=redis_url, database_url=sqlite_url, sampler_consumer="s-x")
    assert build_sampler(named, app).consumer == "s-x"  # EVALFLEET_SAMPLER_CONSUMER
    with pytest.raises(ConsumerNameTaken):
        build_sampler(settings, app, "s-x")  # --consumer


def test_a_taken_name_is_a_one_line_usage_error() -> None:
    from evaluator.ops.errors import EXIT_USAGE, describe

    message = "consumer name 'a' is held by a live sampler (host h, pid 1)"
    found = describe(ConsumerNameTaken(message))
    assert found is not None and found.code == EXIT_USAGE
    assert found.message == f"error: {message}"
