"""End-to-end and sampler-only throughput, and publish->score delay.

    python bench/throughput.py                 # 20,000 traces, both measurements
    python bench/throughput.py --n 5000 --database-url postgresql://postgres@127.0.0.1/test
    python bench/throughput.py --rate 1000     # paced publishing: delay at a steady load

Uses the Redis at --redis-url (default: a throwaway server) and a fresh SQLite file unless
--database-url is given. One sampler process and one worker process, as in production.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlmodel import SQLModel

from evaluator.celery_app import celery_dispatch, create_app
from evaluator.ingest import publish_many
from evaluator.models import Trace
from evaluator.ops.embedded import EmbeddedRedis
from evaluator.sampling.budget import BudgetPlanner, SpendMeter
from evaluator.sampling.sampler import Sampler
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import TraceRecord
from evaluator.streams import connect


def traces(n: int, prefix: str) -> list[Trace]:
    """Realistic RAG traces (~1 KB each); every 20th leaks an email, every 50th is truncated."""
    context = (
        "API keys are rotated under Settings > Security > API keys. Click 'Rotate', confirm, and "
        "the old key keeps working for 24 hours. Docs: https://docs.northwind.example/security"
    )
    out = []
    for i in range(n):
        output = (
            "Go to Settings > Security > API keys and click 'Rotate'. The old key stays valid for "
            "24 hours. Details: https://docs.northwind.example/security"
        )
        if i % 20 == 0:
            output += " Or ask maria@fjordlab.dk."
        out.append(
            Trace(
                trace_id=f"{prefix}-{i:07d}",
                input="How do I rotate my API key? " * 3,
                output=output,
                contexts=[context, context.upper()],
                retrieval=True,
                model="gpt-4o-mini",
                prompt_version="support-v8",
                tenant=f"tenant-{i % 7}",
                feature="support-chat",
                latency_ms=800.0 + i % 300,
                finish_reason="length" if i % 50 == 0 else "stop",
            )
        )
    return out


def bench_sampler(client_url: str, n: int, budget: bool = False) -> float:
    """Sampler alone: validation, strata and sampling decision, Celery publish, XACK. With
    ``budget``: four judges decided per sampled trace and a daily budget the planner enforces
    (spend already recorded, so the plan lowers rates). Returns traces/s."""
    extra: dict[str, object] = {}
    if budget:
        extra = {
            "judge_base_url": "http://127.0.0.1:9/v1",  # judges on, never called here
            "judge_daily_budget_usd": 5.0,
            "judge_budgets_usd": {"safety": 1.0},
        }
    settings = Settings(redis_url=client_url, max_heuristics_queue_depth=10**9, **extra)  # type: ignore[arg-type]
    client = connect(client_url)
    client.flushdb()
    planner = None
    if budget:
        meter = SpendMeter(client, settings)
        meter.record([{"judge": "safety", "cost_usd": 0.0004}] * 2000)  # $0.80 spent today
        planner = BudgetPlanner(client, settings, meter)
    publish_many(client, traces(n, "s"), settings)
    loop = Sampler(
        client, settings, celery_dispatch(create_app(settings)), consumer="bench", budget=planner
    )
    started = time.perf_counter()
    while loop.step(block_ms=1):
        pass
    elapsed = time.perf_counter() - started
    assert loop.counts.consumed == n, loop.counts
    client.flushdb()
    return n / elapsed


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "evaluator.cli", *args],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


# Judges enabled (so the heuristics worker records each judge's ledger row) but never sampled:
# the ledger's cost without judge calls in the measurement.
JUDGES_DECIDED_NOT_RUN = {
    "EVALFLEET_JUDGE_BASE_URL": "http://127.0.0.1:9/v1",
    "EVALFLEET_JUDGE_SAMPLE_RATE": "0",
    "EVALFLEET_STRATUM_RATES": json.dumps(
        dict.fromkeys(
            ["error", "negative_feedback", "truncated", "high_latency", "high_cost", "canary",
             "short_output"],
            0.0,
        )
    ),
}  # fmt: skip


def bench_end_to_end(
    redis_url: str,
    database_url: str,
    n: int,
    rate: float | None,
    worker_args: list[str],
    extra_env: dict[str, str] | None = None,
) -> dict[str, float]:
    client = connect(redis_url)
    client.flushdb()
    settings = Settings(redis_url=redis_url, database_url=database_url)
    store = SQLStore(settings.sqlalchemy_url)
    SQLModel.metadata.drop_all(store.engine)  # a reused database must start empty
    SQLModel.metadata.create_all(store.engine)
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "EVALFLEET_REDIS_URL": redis_url,
            "EVALFLEET_BROKER_URL": redis_url,
            "EVALFLEET_DATABASE_URL": database_url,
            **(extra_env or {}),
        }
        worker = _spawn(["worker", "--loglevel", "WARNING", *worker_args], env, Path(tmp, "w.log"))
        sampler = _spawn(["sampler", "--loglevel", "WARNING"], env, Path(tmp, "s.log"))
        time.sleep(4)  # both processes up before the clock starts
        batch = traces(n, "e")
        started = time.perf_counter()
        if rate:
            for start in range(0, n, 100):
                publish_many(client, batch[start : start + 100], settings)
                time.sleep(max(0.0, started + (start + 100) / rate - time.perf_counter()))
        else:
            threading.Thread(target=publish_many, args=(client, batch, settings)).start()
        while store.count(TraceRecord) < n:
            if worker.poll() is not None or sampler.poll() is not None:
                raise RuntimeError(Path(tmp, "w.log").read_text() + Path(tmp, "s.log").read_text())
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        for process in (sampler, worker):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    delays = store.publish_to_score_delays_ms()
    client.flushdb()
    return {
        "traces_per_s": n / elapsed,
        "p50_ms": statistics.median(delays),
        "p99_ms": delays[int(len(delays) * 0.99) - 1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--redis-url", default=None, help="default: a throwaway redis-server")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--rate", type=float, default=None, help="publish at this many traces/s")
    parser.add_argument("--skip-sampler", action="store_true")
    parser.add_argument("--concurrency", type=int, default=1, help="worker child processes")
    parser.add_argument("--pool", default="prefork", help="Celery pool: prefork or solo")
    parser.add_argument(
        "--judges-decided",
        action="store_true",
        help="4 judges enabled, none sampled: every trace gets 4 sampled_out ledger rows",
    )
    args = parser.parse_args()
    server = None if args.redis_url else EmbeddedRedis().start()
    redis_url = args.redis_url or (server.url if server else "")
    with tempfile.TemporaryDirectory() as tmp:
        database_url = args.database_url or f"sqlite:///{tmp}/bench.db"
        try:
            db = database_url.split("@")[-1]
            print(f"n={args.n:,}  redis={redis_url}  db={db}  cores={os.cpu_count()}")
            if not args.skip_sampler:
                rate = bench_sampler(redis_url, args.n)
                print(f"sampler only (dispatch to Celery): {rate:,.0f} traces/s")
                rate = bench_sampler(redis_url, args.n, budget=True)
                print(f"sampler only, 4 judges + strata + daily budget: {rate:,.0f} traces/s")
            worker_args = ["--concurrency", str(args.concurrency), "--pool", args.pool]
            extra = JUDGES_DECIDED_NOT_RUN if args.judges_decided else None
            result = bench_end_to_end(
                redis_url, database_url, args.n, args.rate, worker_args, extra
            )
            mode = f"paced at {args.rate:,.0f}/s" if args.rate else "burst"
            print(
                f"end to end ({mode}, 1 sampler, worker {args.pool} x{args.concurrency}): "
                f"{result['traces_per_s']:,.0f} traces/s; "
                f"publish->score delay p50 {result['p50_ms']:,.0f} ms, "
                f"p99 {result['p99_ms']:,.0f} ms"
            )
        finally:
            if server:
                server.stop()


if __name__ == "__main__":
    main()
