"""Session completion tracking: turns/s observed with many sessions open, and Redis memory per
open session.

    python bench/sessions.py                      # 100,000 open sessions, 200,000 more turns
    python bench/sessions.py --sessions 10000 --turns 50000 --redis-url redis://127.0.0.1:6379/9
    python bench/sessions.py --through-sampler   # the sampler's rate with and without tracking
    python bench/sessions.py --through-sampler --runs 6 --sampler-turns 10000

Uses a throwaway Redis unless --redis-url is given (that database is flushed). Turns are observed
in batches the size of a sampler batch, as the sampler does; trace ids look like real ones
(32 hex characters). Redis memory per open session is given twice: the INFO used_memory delta,
and MEMORY USAGE of a sample of the session keys plus the due set's share. Through the sampler,
every turn goes into one of the sessions already open; tracked and untracked runs alternate,
after one warm-up pair, and each pair's ratio is printed with the sampler's CPU time and the
time Redis spent on commands (INFO commandstats) a trace.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from evaluator.constants import SESSIONS_DUE
from evaluator.ops.embedded import EmbeddedRedis
from evaluator.sessions.tracker import CompletedSession, SessionPolicy, SessionTracker, TurnSeen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--turns", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--redis-url")
    parser.add_argument("--through-sampler", action="store_true")
    parser.add_argument("--sampler-turns", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.through_sampler:
        with ExitStack() as stack:
            url = args.redis_url or stack.enter_context(EmbeddedRedis()).url
            through_sampler(url, args.sessions, args.sampler_turns, args.runs)
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
        sampled_open = sampled_bytes_per_session(client, args.sessions)
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
    print(f"MEMORY USAGE sampled: {sampled_open:,.0f} B per open session (one turn): its keys "
          f"and its share of the due set")  # fmt: skip
    print(f"completion: {finished:,} sessions finished ({handed:,} handed over) in "
          f"{completed_s:.2f} s ({finished / completed_s:,.0f} sessions/s)")  # fmt: skip


def sampled_bytes_per_session(client: redis.Redis, sessions: int, sample: int = 2000) -> float:
    """MEMORY USAGE of a sample of the per-session keys (whatever keys a session has), scaled to
    all of them, plus the due set's, per session."""
    keys, sizes = 0, []
    for key in client.scan_iter(match="evalfleet:session*", count=1000):
        if key == SESSIONS_DUE.encode():
            continue
        keys += 1
        if len(sizes) < sample:
            sizes.append(int(client.memory_usage(key) or 0))
    due = int(client.memory_usage(SESSIONS_DUE, samples=0) or 0)
    return (statistics.fmean(sizes) * keys + due) / sessions


def through_sampler(url: str, open_sessions: int, n: int, runs: int) -> None:
    """Sampler alone (Celery dispatch, as ``throughput.bench_sampler``) on ``n`` chat turns into
    ``open_sessions`` sessions already open in the tracker, against the same turns without
    tracking; alternated ``runs`` times, each pair's ratio printed (a shared machine's speed
    drifts between runs, much less within a pair)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from throughput import traces  # type: ignore[import-not-found]

    from evaluator.celery_app import celery_dispatch, create_app
    from evaluator.ingest import publish_many
    from evaluator.sampling.sampler import Sampler
    from evaluator.settings import Settings

    settings = Settings(redis_url=url, max_heuristics_queue_depth=10**9)
    client = redis.Redis.from_url(url)
    rng = random.Random(3)
    tenants = 7  # throughput.traces gives turn i the tenant f"tenant-{i % 7}"
    turns = []
    for i, trace in enumerate(traces(n, "turn")):
        k = rng.randrange(open_sessions // tenants) * tenants + i % tenants  # the turn's tenant
        turns.append(trace.model_copy(update={"session_id": f"session-{k:08d}"}))
    ratios, cpu_ratios, redis_added = [], [], []
    for run in range(runs + 1):  # the first pair warms up (imports, connections) uncounted
        rates, cpu, redis_cpu = {}, {}, {}
        for tracked in (True, False):
            client.flushdb()
            tracker = SessionTracker.from_settings(client, settings)
            if tracked:  # every turn below goes into one of these
                for start in range(0, open_sessions, 500):
                    tracker.observe(
                        [TurnSeen(f"tenant-{k % tenants}", f"session-{k:08d}", f"open-{k}", False)
                         for k in range(start, min(start + 500, open_sessions))]
                    )  # fmt: skip
            publish_many(client, turns, settings)
            loop = Sampler(client, settings, celery_dispatch(create_app(settings)),
                           consumer="bench", sessions=tracker if tracked else None)  # fmt: skip
            client.config_resetstat()
            started, cpu_started = time.perf_counter(), time.process_time()
            while loop.step(block_ms=1):
                pass
            rates[tracked] = n / (time.perf_counter() - started)
            cpu[tracked] = (time.process_time() - cpu_started) / n * 1e6
            redis_cpu[tracked] = redis_busy_us(client) / n
            label = (
                f"tracking, {tracker.open_count():,} sessions open" if tracked else "no tracking"
            )
            print(f"sampler, {n:,} chat turns: {rates[tracked]:,.0f} traces/s, "
                  f"{cpu[tracked]:.1f} µs sampler CPU and {redis_cpu[tracked]:.1f} µs in Redis "
                  f"a trace ({label}){' (warm-up)' if run == 0 else ''}")  # fmt: skip
        if run:
            ratios.append(rates[True] / rates[False])
            cpu_ratios.append(cpu[True] / cpu[False])
            redis_added.append(redis_cpu[True] - redis_cpu[False])
            print(f"  tracked / untracked: {ratios[-1]:.3f} traces/s, {cpu_ratios[-1]:.3f} "
                  f"sampler CPU; tracking adds {redis_added[-1]:.1f} µs in Redis")  # fmt: skip
    print(f"tracked / untracked, median of {runs}: {statistics.median(ratios):.3f} traces/s, "
          f"{statistics.median(cpu_ratios):.3f} sampler CPU a trace, "
          f"+{statistics.median(redis_added):.1f} µs in Redis a trace "
          f"(redis-py parser: {parser_name()})")  # fmt: skip
    client.flushdb()


def redis_busy_us(client: redis.Redis) -> float:
    """Microseconds Redis spent executing commands since the last CONFIG RESETSTAT."""
    stats: dict[str, dict[str, Any]] = client.info("commandstats")
    return float(sum(stat["usec"] for stat in stats.values()))


def parser_name() -> str:
    from redis.utils import HIREDIS_AVAILABLE

    return "hiredis" if HIREDIS_AVAILABLE else "pure Python"


if __name__ == "__main__":
    main()
