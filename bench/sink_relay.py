"""How fast the relay moves scores from the SQL outbox to Langfuse, and the cost of the outbox
rows for the workers.

    python bench/sink_relay.py                  # 20,000 scores, SQLite
    python bench/sink_relay.py --database-url postgresql://postgres@127.0.0.1/test

The Langfuse side is the test suite's HTTP server (tests/langfuse_server.py) in this process,
answering its 207 at once: the figure is the relay's own ceiling (read, send, mark delivered),
not a real Langfuse's ingestion rate. ``--invalid-rate`` of the scores (5 % by default) are
refused by the server (a 400 entry in its 207) and ``--transient-rate`` answered with a
per-event 500 once (the server's storage blinked): the benchmark reports the score events sent
per delivered score, which stays near 1 / (1 - invalid rate) when refusals cost no extra sends.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from langfuse_server import FakeLangfuse
from sqlmodel import SQLModel

from evaluator.models import Score, Trace
from evaluator.sinks.langfuse import LangfuseSettings, LangfuseSink
from evaluator.sinks.outbox import SinkRelay, outbox_rows
from evaluator.sinks.sql import SQLStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000, help="scores")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--database-url")
    parser.add_argument("--invalid-rate", type=float, default=0.05, help="scores refused")
    parser.add_argument(
        "--transient-rate", type=float, default=0.0, help="scores failing once with a 500"
    )
    args = parser.parse_args()
    logging.disable(logging.ERROR)  # one "rejected for good" line per refused score otherwise
    refused_every = round(1 / args.invalid_rate) if args.invalid_rate > 0 else 0
    fake = FakeLangfuse(
        reject_names={f"refused.field{k}" for k in range(7)},
        fail_items=int(args.n * args.transient_rate),
    )
    fake.start()
    os.environ.update(fake.env())
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        store = SQLStore(url)
        SQLModel.metadata.drop_all(store.engine)
        SQLModel.metadata.create_all(store.engine)
        sink = LangfuseSink(LangfuseSettings())
        traces = {
            f"t-{i}": Trace(trace_id=f"t-{i}", output="x", span_id=f"obs-{i}")
            for i in range(args.n // 7 + 1)
        }
        scores = [
            Score.for_trace(
                f"t-{i // 7}",
                "refused" if refused_every and i % refused_every == 0 else "groundedness",
                "3",
                f"field{i % 7}",
                value=0.8,
                reason="Supported by context 1." * 4,
            )
            for i in range(args.n)
        ]
        started = time.perf_counter()
        for chunk in range(0, len(scores), 1750):  # one heuristics task's worth of scores
            rows = outbox_rows([sink], scores[chunk : chunk + 1750], traces, datetime.now(UTC))
            store.write_batch([], [], [], [], rows)
        enqueue_s = time.perf_counter() - started
        # Transient rows come back after their backoff: keep it short so the run measures sends.
        relay = SinkRelay(
            store, [sink], batch_size=args.batch_size, backoff_base_s=0.01, backoff_max_s=0.02
        )
        started = time.perf_counter()
        while relay.drain_once() or relay.backlog()["langfuse"][0]:
            pass
        relay_s = time.perf_counter() - started
        counts = relay.counts["langfuse"]
        refused = len(range(0, args.n, refused_every)) if refused_every else 0
        assert len(fake.scores) == counts.delivered == args.n - refused, len(fake.scores)
        assert counts.rejected == refused, counts
        sends = sum(len(post.body) for post in fake.score_posts())
        print(f"store: {store.engine.dialect.name}, {args.n:,} scores, batch {args.batch_size}")
        per_score_us = enqueue_s * 1e6 / args.n
        rate = args.n / enqueue_s
        print(f"outbox rows built and written: {rate:,.0f}/s ({per_score_us:.0f} µs each)")
        print(
            f"relay delivered: {counts.delivered / relay_s:,.0f} scores/s "
            f"({len(fake.score_posts())} POSTs)"
        )
        print(
            f"{counts.delivered:,} delivered, {counts.rejected:,} rejected, "
            f"{counts.transient:,} transient item errors retried: {sends:,} score events sent, "
            f"{sends / counts.delivered:.3f} sends per delivered score"
        )
        relay.close()
    fake.stop()


if __name__ == "__main__":
    main()
