"""Recovery after kill -9 of a heuristics worker, with the default settings.

    python bench/kill_recovery.py [--traces 20000] [--redis-url redis://127.0.0.1:6379/2]

Starts a sampler and a heuristics-only worker (SQLite in a temporary directory), publishes the
traces, kills the worker's process group with SIGKILL while it holds a task, starts a new one,
and prints how long after the kill every trace was scored, and what `stats` showed meanwhile.
Takes about the visibility timeout (4 minutes by default).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluator.console.stats import unacked_tasks  # noqa: E402
from evaluator.constants import HEURISTICS_QUEUE, UNACKED_PREFIX  # noqa: E402
from evaluator.ingest import publish_many  # noqa: E402
from evaluator.models import Trace  # noqa: E402
from evaluator.sampling import inflight  # noqa: E402
from evaluator.settings import Settings  # noqa: E402
from evaluator.sinks.sql import SQLStore  # noqa: E402
from evaluator.store.tables import TraceRecord  # noqa: E402
from evaluator.streams import connect  # noqa: E402


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "evaluator.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _run(
    client: redis.Redis,
    processes: list[subprocess.Popen[bytes]],
    worker_args: list[str],
    env: dict[str, str],
    log: Path,
    n: int,
    database_url: str,
) -> None:
    traces = [
        Trace(trace_id=f"k-{i}", output="Rotate it under Settings > API keys.") for i in range(n)
    ]
    publish_many(client, traces, Settings())
    key = f"{UNACKED_PREFIX}{HEURISTICS_QUEUE}"
    while not client.hlen(key):
        time.sleep(0.01)
    os.killpg(processes[0].pid, signal.SIGKILL)
    killed = time.monotonic()
    processes[0].wait()
    store = SQLStore(Settings(database_url=database_url).sqlalchemy_url)
    print(
        f"killed the worker holding {client.hlen(key)} task(s); "
        f"{store.count(TraceRecord):,} of {n:,} traces scored"
    )
    print(
        f"stats meanwhile: taken, not acked = {unacked_tasks(client)}; "
        f"heuristics batches in flight = {inflight.count(client)}"
    )
    processes.append(_start(worker_args, env, log))
    while store.count(TraceRecord) < n:
        time.sleep(1)
    settings = Settings()
    print(
        f"every trace scored {time.monotonic() - killed:.0f} s after the kill "
        f"(visibility timeout {settings.visibility_timeout_s(heuristics_only=True)} s; "
        f"batches in flight re-dispatched after {inflight.due_in_s(settings):.0f} s)"
    )
    store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=20_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/2")
    args = parser.parse_args()
    client = connect(args.redis_url)
    client.flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        database_url = f"sqlite:///{tmp}/evalfleet.db"
        env = {
            **os.environ,
            "EVALFLEET_REDIS_URL": args.redis_url,
            "EVALFLEET_BROKER_URL": args.redis_url,
            "EVALFLEET_DATABASE_URL": database_url,
        }
        log = Path(tmp) / "fleet.log"
        worker_args = ["worker", "--queues", "heuristics", "--concurrency", "2"]
        processes = [_start(worker_args, env, log), _start(["sampler"], env, log)]
        try:
            _run(client, processes, worker_args, env, log, args.traces, database_url)
        finally:
            for process in processes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
