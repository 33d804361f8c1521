"""Re-evaluating 10,000 stored traces while live traffic flows: the run's wall time, and the live
traces' judge latency (publish -> judge score) with and without it.

    python bench/reeval.py [--n 10000] [--latency 0.2] [--live-rate 5] [--threads 8] [--rpm N]
                           [--backfill-worker]

One judge worker process (threads pool, queues heuristics,judges,judges_backfill), or with
--backfill-worker the Procfile's two (live and backfill), and one sampler against a throwaway
Redis, a SQLite file and the OpenAI-protocol test server with a fixed latency. Live traces are
published at --live-rate per second, all sampled for the judge.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from openai_server import OpenAIServer  # noqa: E402
from sqlmodel import Session, col, select  # noqa: E402

from evaluator.celery_app import create_app, judge_dispatch  # noqa: E402
from evaluator.evaluation import reeval  # noqa: E402
from evaluator.evaluation.scoring import ScoringContext, score_batch  # noqa: E402
from evaluator.evaluators import heuristic_evaluators  # noqa: E402
from evaluator.ingest import publish  # noqa: E402
from evaluator.judging.files import judge_registry  # noqa: E402
from evaluator.ledger import open_count  # noqa: E402
from evaluator.models import SampleDecision, Trace  # noqa: E402
from evaluator.ops.embedded import EmbeddedRedis  # noqa: E402
from evaluator.review import ReviewRouter  # noqa: E402
from evaluator.settings import Settings  # noqa: E402
from evaluator.sinks.sql import SQLStore  # noqa: E402
from evaluator.store.tables import LedgerRecord, ScoreRecord, TraceRecord  # noqa: E402
from evaluator.streams import connect  # noqa: E402
from evaluator.timeparse import parse_since  # noqa: E402

JUDGE = "answer_relevance"


def trace(i: int, prefix: str) -> Trace:
    return Trace(
        trace_id=f"{prefix}-{i:06d}",
        input="How do I rotate my API key without downtime?",
        output=f"Go to Settings > Security > API keys and click Rotate ({i}).",
        contexts=["API keys are rotated under Settings > Security > API keys."],
        retrieval=True,
        model="gpt-4o-mini",
        finish_reason="stop",
    )


def store_history(store: SQLStore, settings: Settings, n: int) -> None:
    """n traces through the heuristics, as the fleet would have stored them."""
    ctx = ScoringContext(
        heuristic_evaluators(settings), store, ReviewRouter(), connect(settings.redis_url), settings
    )
    decision = SampleDecision(judge=False, rate=0.1).model_dump()
    now_ms = int(time.time() * 1000) - n
    for start in range(0, n, 500):
        score_batch(
            [
                {"id": f"{now_ms + i}-0", "trace": trace(i, "old").model_dump_json(),
                 "decision": decision}
                for i in range(start, min(n, start + 500))
            ],
            ctx,
        )  # fmt: skip


def live_traffic(
    settings: Settings, rate: float, stop: threading.Event, out: list[str], prefix: str
) -> None:
    client = connect(settings.redis_url)
    i = 0
    while not stop.is_set():
        t = trace(i, prefix)
        publish(client, t, settings)
        out.append(t.trace_id)
        i += 1
        stop.wait(1 / rate)


def live_latencies(store: SQLStore, trace_ids: list[str]) -> list[float]:
    with Session(store.engine) as session:
        published = dict(
            session.exec(
                select(TraceRecord.trace_id, TraceRecord.published_at).where(
                    col(TraceRecord.trace_id).in_(trace_ids)
                )
            ).all()
        )
        scored = session.exec(
            select(ScoreRecord.trace_id, ScoreRecord.created_at).where(
                ScoreRecord.evaluator == JUDGE, col(ScoreRecord.trace_id).in_(trace_ids)
            )
        ).all()
    return sorted((at - published[t]).total_seconds() for t, at in scored if t in published)


def wait_scored(store: SQLStore, trace_ids: list[str], timeout: float = 120) -> list[float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        delays = live_latencies(store, trace_ids)
        if len(delays) == len(trace_ids):
            return delays
        time.sleep(0.5)
    raise SystemExit(f"live traces not all judged: {len(live_latencies(store, trace_ids))}")


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--live-rate", type=float, default=5.0)
    parser.add_argument("--live-seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rpm", type=int, default=None, help="fleet rate limit for the model")
    parser.add_argument(
        "--backfill-worker",
        action="store_true",
        help="a second worker process for judges_backfill (the Procfile's layout)",
    )
    args = parser.parse_args()
    with (
        OpenAIServer() as server,
        EmbeddedRedis() as redis_server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        server.fake.latency_s = args.latency
        database_url = f"sqlite:///{tmp}/bench.db"
        overrides = {
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": database_url,
            "JUDGE_BASE_URL": server.base_url,
            "JUDGE_API_KEY": "sk-bench",
            "ENABLED_JUDGES": f'["{JUDGE}"]',
            "JUDGE_SAMPLE_RATE": "1.0",
            "JUDGE_BATCH_SIZE": "8",
        }
        if args.rpm:
            overrides["JUDGE_REQUESTS_PER_MINUTE"] = f'{{"gpt-4o-mini": {args.rpm}}}'
        env = {**os.environ, **{f"EVALFLEET_{k}": v for k, v in overrides.items()}}
        settings = Settings(
            redis_url=redis_server.url,
            database_url=database_url,
            judge_base_url=server.base_url,
        )
        store = SQLStore(settings.sqlalchemy_url)
        started = time.perf_counter()
        store_history(store, settings, args.n)
        print(f"stored {args.n:,} traces in {time.perf_counter() - started:.1f}s")
        logs = Path(tmp)
        threads = ["--pool", "threads", "--concurrency", str(args.threads), "--loglevel", "WARNING"]
        commands = [("sampler", ["sampler", "--loglevel", "WARNING"])]
        if args.backfill_worker:
            commands += [
                ("worker", ["worker", "--queues", "heuristics,judges", *threads]),
                ("backfill", ["worker", "--queues", "judges_backfill", *threads]),
            ]
        else:
            commands += [
                ("worker", ["worker", "--queues", "heuristics,judges,judges_backfill", *threads])
            ]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "evaluator.cli", *cmd],
                env=env,
                stdout=(logs / f"{name}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            for name, cmd in commands
        ]
        try:
            time.sleep(4)  # worker start-up
            # Without a re-evaluation.
            ids: list[str] = []
            stop = threading.Event()
            feeder = threading.Thread(
                target=live_traffic, args=(settings, args.live_rate, stop, ids, "alone")
            )
            feeder.start()
            time.sleep(args.live_seconds)
            stop.set()
            feeder.join()
            alone = wait_scored(store, ids)
            print(
                f"live alone: {len(alone)} traces at {args.live_rate:g}/s, judge latency "
                f"p50 {statistics.median(alone) * 1000:,.0f} ms, "
                f"p99 {pct(alone, 0.99) * 1000:,.0f} ms"
            )
            # With one.
            spec = reeval.parse_target(JUDGE, judge_registry(settings))
            planned = reeval.plan(store, settings, spec, parse_since("1d"), all_traces=True)
            planned.selected = [s for s in planned.selected if s[0].startswith("old-")]
            dispatch = judge_dispatch(create_app(settings))
            ids2: list[str] = []
            stop = threading.Event()
            feeder = threading.Thread(
                target=live_traffic, args=(settings, args.live_rate, stop, ids2, "during")
            )
            run_started = time.perf_counter()
            run = reeval.start(store, settings, planned, dispatch, cap_usd=None)
            queued_s = time.perf_counter() - run_started
            feeder.start()
            while True:
                with Session(store.engine) as session:
                    left = len(
                        session.exec(
                            select(LedgerRecord.id).where(
                                LedgerRecord.run == run.run, col(LedgerRecord.terminal).is_(False)
                            )
                        ).all()
                    )
                if not left:
                    break
                time.sleep(1)
            wall = time.perf_counter() - run_started
            stop.set()
            feeder.join()
            during = wait_scored(store, ids2)
            print(
                f"re-evaluation of {run.dispatched:,} traces: {wall:.1f}s wall "
                f"({run.dispatched / wall:,.0f} evaluations/s; queued in {queued_s:.1f}s), "
                f"{args.threads} threads, {args.latency * 1000:.0f} ms per call"
            )
            print(
                f"live during it: {len(during)} traces, judge latency p50 "
                f"{statistics.median(during) * 1000:,.0f} ms, "
                f"p99 {pct(during, 0.99) * 1000:,.0f} ms"
            )
            print(f"open ledger rows left: {open_count(store)}")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
            store.close()


if __name__ == "__main__":
    main()
