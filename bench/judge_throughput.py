"""Judge evaluations per second through one worker process, against an OpenAI-protocol server
with a fixed latency (the test server from tests/openai_server.py).

    python bench/judge_throughput.py                 # 2,000 traces, 300 ms, 64 in flight
    python bench/judge_throughput.py --latency 0.1 --in-flight 32

The ideal is in_flight / latency evaluations/s; the target is 80 % of it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from openai_server import OpenAIServer  # noqa: E402

from evaluator.ingest import publish_many  # noqa: E402
from evaluator.models import Trace  # noqa: E402
from evaluator.ops.embedded import EmbeddedRedis  # noqa: E402
from evaluator.settings import Settings  # noqa: E402
from evaluator.sinks.sql import SQLStore  # noqa: E402
from evaluator.store.tables import JudgeCallRecord  # noqa: E402
from evaluator.streams import connect  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128, help="traces per judge task")
    parser.add_argument("--judge", default="answer_relevance")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="pool size (children or threads)"
    )
    parser.add_argument("--pool", default="prefork", help="prefork, or threads (one process)")
    args = parser.parse_args()

    with (
        OpenAIServer() as server,
        EmbeddedRedis() as redis_server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        server.fake.latency_s = args.latency
        database_url = f"sqlite:///{tmp}/bench.db"
        env = {
            **os.environ,
            "EVALFLEET_REDIS_URL": redis_server.url,
            "EVALFLEET_DATABASE_URL": database_url,
            "EVALFLEET_JUDGE_BASE_URL": server.base_url,
            "EVALFLEET_JUDGE_API_KEY": "bench",
            "EVALFLEET_ENABLED_JUDGES": json.dumps([args.judge]),
            "EVALFLEET_JUDGE_SAMPLE_RATE": "1.0",
            "EVALFLEET_JUDGE_MAX_IN_FLIGHT": str(args.in_flight),
            "EVALFLEET_JUDGE_BATCH_SIZE": str(args.batch),
        }
        store = SQLStore(database_url)
        cli = [sys.executable, "-m", "evaluator.cli"]
        with open(Path(tmp) / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                [
                    *cli,
                    "worker",
                    "--concurrency",
                    str(args.concurrency),
                    "--pool",
                    args.pool,
                    "--loglevel",
                    os.environ.get("BENCH_LOGLEVEL", "WARNING"),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            sampler = subprocess.Popen(
                [*cli, "sampler", "--loglevel", "WARNING"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        time.sleep(4)
        traces = [
            Trace(
                trace_id=f"j-{i:06d}",
                input="How do I rotate my API key?",
                output=f"Open Settings > Security > API keys and click Rotate. ({i})",
            )
            for i in range(args.n)
        ]
        publish_many(connect(redis_server.url), traces, Settings(redis_url=redis_server.url))
        while not server.fake.requests:
            time.sleep(0.01)
        started = time.time()
        while store.count(JudgeCallRecord) < args.n:
            if worker.poll() is not None:
                raise SystemExit((Path(tmp) / "worker.log").read_text())
            time.sleep(0.05)
        elapsed = time.time() - started
        for process in (sampler, worker):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        store.close()
        if os.environ.get("BENCH_LOGLEVEL"):
            print((Path(tmp) / "worker.log").read_text()[-3000:])
        rate = args.n / elapsed
        processes = args.concurrency if args.pool == "prefork" else 1
        ideal = args.in_flight * processes / args.latency
        print(
            f"{args.n:,} {args.judge} evaluations, latency {args.latency * 1000:.0f} ms, "
            f"in-flight limit {args.in_flight} per process (max seen {server.fake.max_in_flight}), "
            f"one worker process, {args.pool} x{args.concurrency}: {rate:,.0f} evaluations/s = "
            f"{100 * rate / ideal:.0f} % of the ideal {ideal:,.0f}/s"
        )


if __name__ == "__main__":
    main()
