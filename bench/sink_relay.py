"""How fast the relay moves scores from the SQL outbox to Langfuse, and the cost of the outbox
rows for the workers.

    python bench/sink_relay.py                  # 20,000 scores, SQLite
    python bench/sink_relay.py --database-url postgresql://postgres@127.0.0.1/test

The Langfuse side is the test suite's HTTP server (tests/langfuse_server.py) in this process,
answering 202 at once: the figure is the relay's own ceiling (read, send, mark delivered), not
a real Langfuse's ingestion rate.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    fake = FakeLangfuse()
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
                "groundedness",
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
        relay = SinkRelay(store, [sink], batch_size=args.batch_size)
        started = time.perf_counter()
        while relay.drain_once():
            pass
        relay_s = time.perf_counter() - started
        assert len(fake.scores) == args.n, len(fake.scores)
        print(f"store: {store.engine.dialect.name}, {args.n:,} scores, batch {args.batch_size}")
        per_score_us = enqueue_s * 1e6 / args.n
        rate = args.n / enqueue_s
        print(f"outbox rows built and written: {rate:,.0f}/s ({per_score_us:.0f} µs each)")
        print(
            f"relay delivered: {args.n / relay_s:,.0f} scores/s ({len(fake.score_posts())} POSTs)"
        )
        relay.close()
    fake.stop()


if __name__ == "__main__":
    main()
