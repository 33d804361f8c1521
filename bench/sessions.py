"""Session completion tracking: turns/s observed with many sessions open, and Redis memory per
open session.

    python bench/sessions.py                      # 100,000 open sessions, 200,000 more turns
    python bench/sessions.py --sessions 10000 --turns 50000 --redis-url redis://127.0.0.1:6379/9
    python bench/sessions.py --through-sampler   # the sampler's rate with and without tracking

Uses a throwaway Redis unless --redis-url is given (that database is flushed). Turns are observed
in batches the size of a sampler batch, as the sampler does; trace ids look like real ones
(32 hex characters).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from evaluator.ops.embedded import EmbeddedRedis
from evaluator.sessions.tracker import CompletedSession, SessionPolicy, SessionTracker, TurnSeen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--turns", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--redis-url")
    parser.add_argument("--through-sampler", action="store_true")
    args = parser.parse_args()
    if args.through_sampler:
        with ExitStack() as stack:
            url = args.redis_url or stack.enter_context(EmbeddedRedis()).url
            through_sampler(url, args.sessions)
        return
    with ExitStack() as stack:
        url = args.redis_url or stack.enter_context(EmbeddedRedis()).url
        client = redis.Redis.from_url(url)
        client.flushdb()
        policy = SessionPolicy(quiet_s=1800, max_age_s=86_400, retention_s=86_400, max_turns=1000)
        tracker = SessionTracker(client, policy)
        rng = random.Random(7)
        used_before = int(client.info("memory")["used_memory"])

        def batches(turns: list[TurnSeen]) -> float:
            started = time.perf_counter()
            for start in range(0, len(turns), args.batch):
                tracker.observe(turns[start : start + args.batch])
            return time.perf_counter() - started

        opening = [
            TurnSeen(f"tenant-{n % 20}", f"session-{n:08d}", f"{rng.getrandbits(128):032x}",
                     n % 25 == 0)
            for n in range(args.sessions)
        ]  # fmt: skip
        opened_s = batches(opening)
        used_open = int(client.info("memory")["used_memory"])
        more = [
            TurnSeen(f"tenant-{k % 20}", f"session-{k:08d}", f"{rng.getrandbits(128):032x}", False)
            for k in (rng.randrange(args.sessions) for _ in range(args.turns))
        ]
        more_s = batches(more)
        used_after = int(client.info("memory")["used_memory"])
        redelivered_s = batches(more[: args.turns // 4])  # a redelivered quarter: no change

        # Completion: every session due at once (the worst case for the chore).
        later = int(time.time() * 1000) + int(policy.max_age_s * 1000) + 1
        finished = 0
        handed = 0

        def count(sessions: list[CompletedSession]) -> None:
            nonlocal handed
            handed += len(sessions)

        started = time.perf_counter()
        while True:
            done = tracker.complete_due(count, now_ms=later, limit=500)
            if not done:
                break
            finished += done
        completed_s = time.perf_counter() - started

    total_turns = args.sessions + args.turns
    print(f"sessions opened: {args.sessions:,} in {opened_s:.2f} s "
          f"({args.sessions / opened_s:,.0f} turns/s)")  # fmt: skip
    print(f"turns into open sessions: {args.turns:,} in {more_s:.2f} s "
          f"({args.turns / more_s:,.0f} turns/s, {args.sessions:,} sessions open)")  # fmt: skip
    print(f"redelivered turns: {args.turns // 4:,} in {redelivered_s:.2f} s "
          f"({args.turns // 4 / redelivered_s:,.0f} turns/s)")  # fmt: skip
    per_session = (used_open - used_before) / args.sessions
    per_turn = (used_after - used_open) / args.turns
    print(f"Redis memory: {per_session:,.0f} B per open session (one turn), "
          f"+{per_turn:,.0f} B per further turn; {total_turns:,} turns held "
          f"{(used_after - used_before) / 2**20:,.1f} MiB")  # fmt: skip
    print(f"completion: {finished:,} sessions finished ({handed:,} handed over) in "
          f"{completed_s:.2f} s ({finished / completed_s:,.0f} sessions/s)")  # fmt: skip


def through_sampler(url: str, open_sessions: int, n: int = 10_000) -> None:
    """Sampler alone (Celery dispatch, as ``throughput.bench_sampler``) on 10,000 chat turns,
    with ``open_sessions`` sessions already open in the tracker, against the same run without
    tracking; alternated twice."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from throughput import traces  # type: ignore[import-not-found]

    from evaluator.celery_app import celery_dispatch, create_app
    from evaluator.ingest import publish_many
    from evaluator.sampling.sampler import Sampler
    from evaluator.settings import Settings

    settings = Settings(redis_url=url, max_heuristics_queue_depth=10**9)
    client = redis.Redis.from_url(url)
    rng = random.Random(3)
    turns = [
        t.model_copy(update={"session_id": f"session-{rng.randrange(open_sessions):08d}"})
        for t in traces(n, "turn")
    ]
    for tracked in (True, False, True, False):
        client.flushdb()
        tracker = SessionTracker.from_settings(client, settings)
        if tracked:
            for start in range(0, open_sessions, 500):
                tracker.observe(
                    [TurnSeen(None, f"session-{k:08d}", f"open-{k}", False)
                     for k in range(start, min(start + 500, open_sessions))]
                )  # fmt: skip
        publish_many(client, turns, settings)
        loop = Sampler(client, settings, celery_dispatch(create_app(settings)), consumer="bench",
                       sessions=tracker if tracked else None)  # fmt: skip
        started = time.perf_counter()
        while loop.step(block_ms=1):
            pass
        rate = n / (time.perf_counter() - started)
        label = f"tracking, {tracker.open_count():,} sessions open" if tracked else "no tracking"
        print(f"sampler, {n:,} chat turns: {rate:,.0f} traces/s ({label})")
    client.flushdb()


if __name__ == "__main__":
    main()
