"""`evalfleet demo`: the whole pipeline on this machine, with nothing running beforehand.

Starts a throwaway Redis, a SQLite file in a temp dir, a sampler and a Celery worker as
subprocesses; replays the sample traces; waits until each is scored or dead-lettered, and until
every conversation in them (the traces with a ``session_id``) has been evaluated as a session;
reports. The fleet runs with a short session quiet period (``DEMO_SESSION_QUIET_S``), so the
conversations complete a moment after their last turn instead of half an hour later.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from evaluator.console.levels import LevelSummary, level_summary, sessions_scored
from evaluator.console.stats import FleetStats, fleet_stats
from evaluator.constants import DEAD_STREAM
from evaluator.ingest import publish_many, read_lines
from evaluator.models import Trace, parse_trace
from evaluator.ops.dlq import DeadLetter, list_dead
from evaluator.ops.embedded import EmbeddedRedis
from evaluator.ops.errors import EXIT_USAGE, CLIError
from evaluator.resources import PACKAGE, resource
from evaluator.sessions.tracker import session_digest
from evaluator.settings import Settings
from evaluator.sinks.outbox import enabled_sinks
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import ReviewItemRecord, TraceRecord
from evaluator.streams import connect

_PACKAGED_SAMPLES = PACKAGE / "_data" / "sample_traces.jsonl"
# A conversation is complete this long after its last turn (production default: 30 minutes),
# looked for this often: the demo's sessions are evaluated within seconds.
DEMO_SESSION_QUIET_S = 1.0
DEMO_SESSION_CHECK_INTERVAL_S = 0.2
# A session handed over before its last turns are stored looks again every second (a tenth of
# this), not every 30 s as with the production default.
DEMO_SESSION_PATIENCE_S = 10.0
# The sampler runs its chores (the sessions one among them) between reads: an idle read waits
# at most this long, so a quiet session is noticed within a fifth of a second.
DEMO_SAMPLER_BLOCK_MS = 200


_COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
)


def default_sample_file() -> Path:
    """The sample traces in a source checkout, else the copy packaged into the wheel."""
    return resource("datasets/sample_traces.jsonl", "sample_traces.jsonl")


@dataclass
class DemoResult:
    published: int
    judges_on: bool
    seconds: float
    stats: FleetStats
    dead_letters: list[DeadLetter]
    review_queue: list[ReviewItemRecord]
    levels: LevelSummary

    @property
    def traces_per_second(self) -> float:
        return self.published / self.seconds if self.seconds else 0.0


class _Fleet:
    """Sampler and worker subprocesses with their logs in a directory; stopped on exit."""

    def __init__(
        self, env: dict[str, str], log_dir: Path, worker_concurrency: int, relay: bool
    ) -> None:
        cli = [sys.executable, "-m", "evaluator.cli"]
        self.commands = {
            "worker": [
                *cli,
                "worker",
                "--concurrency",
                str(worker_concurrency),
                "--loglevel",
                "WARNING",
            ],
            "sampler": [*cli, "sampler"],
        }
        if relay:
            self.commands["relay"] = [*cli, "relay", "--loglevel", "WARNING"]
        self.env = env
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        for name, command in self.commands.items():
            with (self.log_dir / f"{name}.log").open("wb") as log:
                self.processes[name] = subprocess.Popen(
                    command, env=self.env, stdout=log, stderr=subprocess.STDOUT
                )

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with code {process.returncode}:\n{tail}")

    def stop(self) -> None:
        # SIGTERM: the sampler finishes its batch, Celery does a warm shutdown.
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_demo(
    traces_file: Path, console: Console, worker_concurrency: int = 2, timeout_s: float = 300.0
) -> DemoResult:
    try:
        lines = list(read_lines(traces_file))
    except ValueError as exc:  # bytes that are not UTF-8, with the file and line
        raise CLIError(f"error: {exc}", EXIT_USAGE) from exc
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory(prefix="evalfleet-demo-") as tmp:
        database_url = f"sqlite:///{tmp}/evalfleet.db"
        console.print(f"[dim]Redis {server.url} ({server.binary}); SQLite {database_url}[/dim]")
        env = {
            **os.environ,
            "EVALFLEET_REDIS_URL": server.url,
            "EVALFLEET_BROKER_URL": server.url,
            "EVALFLEET_DATABASE_URL": database_url,
            "EVALFLEET_SESSION_QUIET_S": str(DEMO_SESSION_QUIET_S),
            "EVALFLEET_SESSION_CHECK_INTERVAL_S": str(DEMO_SESSION_CHECK_INTERVAL_S),
            "EVALFLEET_SESSION_PATIENCE_S": str(DEMO_SESSION_PATIENCE_S),
            "EVALFLEET_SAMPLER_BLOCK_MS": str(DEMO_SAMPLER_BLOCK_MS),
        }
        settings = Settings(redis_url=server.url, database_url=database_url)
        client = connect(server.url)
        store = SQLStore(database_url)  # tables exist before the worker's first write
        sinks = enabled_sinks(settings)
        fleet = _Fleet(env, Path(tmp), worker_concurrency, relay=bool(sinks))
        try:
            fleet.start()
            started = time.monotonic()
            _replay_and_wait(lines, client, store, settings, fleet, console, timeout_s)
            seconds = time.monotonic() - started
            if sinks:
                _wait_for_sinks(store, console, fleet, timeout_s=60)
        finally:
            fleet.stop()
            client.close()
        client = connect(server.url)
        result = DemoResult(
            published=len(lines),
            judges_on=settings.judge_endpoint_configured,
            seconds=seconds,
            stats=fleet_stats(client, store),
            dead_letters=list_dead(client, limit=20),
            review_queue=store.review_queue(limit=10),
            levels=level_summary(store),
        )
        client.close()
        store.close()
    return result


def _wait_for_sinks(store: SQLStore, console: Console, fleet: _Fleet, timeout_s: float) -> None:
    """Give the relay a moment to deliver; a sink that is down keeps its rows (see stats)."""
    with Progress(*_COLUMNS, console=console) as progress:
        counts = store.outbox_counts()
        total = sum(sum(statuses.values()) for statuses in counts.values())
        task = progress.add_task("delivered to sinks", total=total)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            counts = store.outbox_counts()
            pending = sum(statuses.get("pending", 0) for statuses in counts.values())
            progress.update(task, completed=total - pending)
            if not pending:
                return
            fleet.check_alive()
            time.sleep(0.2)


def _replay_and_wait(
    lines: list[bytes],
    client: redis.Redis,
    store: SQLStore,
    settings: Settings,
    fleet: _Fleet,
    console: Console,
    timeout_s: float,
) -> None:
    with Progress(*_COLUMNS, console=console) as progress:
        publishing = progress.add_task("published", total=len(lines))
        for start in range(0, len(lines), 50):
            chunk = lines[start : start + 50]
            publish_many(client, chunk, settings)
            progress.advance(publishing, len(chunk))
        deadline = time.monotonic() + timeout_s
        _wait_until(
            lambda: store.count(TraceRecord) + int(client.xlen(DEAD_STREAM)),
            len(lines), "traces", "scored or dead-lettered", progress, fleet, deadline, timeout_s,
        )  # fmt: skip
        expected = len(_sessions_in(lines, settings.max_trace_bytes))
        if expected:  # then until every conversation has gone quiet and been scored
            _wait_until(
                lambda: sessions_scored(store), expected, "sessions", "evaluated", progress,
                fleet, deadline, timeout_s,
            )  # fmt: skip


def _wait_until(
    count: Callable[[], int],
    total: int,
    noun: str,
    done_as: str,
    progress: Progress,
    fleet: _Fleet,
    deadline: float,
    timeout_s: float,
) -> None:
    """Poll ``count`` with a progress bar until it reaches ``total``, while the fleet lives."""
    task = progress.add_task(f"{noun} {done_as}", total=total)
    while True:
        done = count()
        progress.update(task, completed=done)
        if done >= total:
            return
        fleet.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done} of {total} {noun} {done_as} in {timeout_s:.0f}s")
        time.sleep(0.2)


def _sessions_in(lines: list[bytes], max_bytes: int) -> set[str]:
    """The sessions the valid traces belong to (as the tracker names them: tenant and id)."""
    parsed = (parse_trace(line, max_bytes) for line in lines)
    return {
        session_digest(t.tenant, t.session_id)
        for t in parsed
        if isinstance(t, Trace) and t.session_id is not None
    }
