"""Provider errors: the fleet against a bare AsyncOpenAI client, the same server, the same run.

    python bench/judge_errors.py                   # 200 traces, 300 ms, 32 in flight, 60 s outage
    python bench/judge_errors.py --outage 10       # quicker

The server is tests/openai_server.py at ``--latency``; errors answer in ``--error-latency`` (real
providers refuse fast). For each scenario — 0 / 10 / 30 % of calls answered 429 or 500 (half
each), with Retry-After on the 429s and without, and an outage (every call 503 for ``--outage``
seconds, then healthy) — it runs

* bare: one AsyncOpenAI client (the SDK's own retries, 2 by default) behind a semaphore of
  ``--in-flight``, one groundedness judgement per trace, the prompts the fleet sends;
* fleet: the same traces published to a real sampler and judge worker (subprocesses, threads
  pool, one process with ``--in-flight`` calls at most), with the Redis limiter, pause and
  breaker, until every evaluation has its judge_calls row.

evaluations/s count successful evaluations from the first request to the last answer; lost are
evaluations without a result (bare: retries used up) or with an error result (fleet); calls/eval
is what the server saw per evaluation; resume is the time from the provider's return to its
first successful answer, probes the requests that reached it before that answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import openai  # noqa: E402
import redis  # noqa: E402
from helpers import make_trace  # noqa: E402
from openai.types.chat import ChatCompletionMessageParam  # noqa: E402
from openai.types.shared_params import ResponseFormatJSONSchema  # noqa: E402
from openai_server import FakeOpenAI, OpenAIServer  # noqa: E402
from sqlmodel import Session, col, func, select  # noqa: E402

from evaluator.constants import CIRCUIT_PREFIX, RATE_LIMIT_PREFIX, RATE_PAUSE_PREFIX  # noqa: E402
from evaluator.ingest import publish_many  # noqa: E402
from evaluator.judging.files import JudgeSpec, default_judges_dir, load_judges, render_messages  # noqa: E402
from evaluator.models import Trace  # noqa: E402
from evaluator.ops.embedded import EmbeddedRedis  # noqa: E402
from evaluator.settings import Settings  # noqa: E402
from evaluator.sinks.sql import SQLStore  # noqa: E402
from evaluator.store.tables import JudgeCallRecord, LedgerRecord  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    name: str
    error_rate: float = 0.0
    retry_after_s: float | None = 0.2
    outage_s: float = 0.0


@dataclass
class Run:
    ok: int
    lost: int
    elapsed_s: float
    calls: int
    resume_s: float | None = None
    probes: int | None = None
    drain_s: float | None = None
    requeued: int = 0  # evaluations that were deferred and re-queued at least once
    p90_s: float | None = None  # when 90 % of the evaluations were done

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0


def configure(fake: FakeOpenAI, scenario: Scenario) -> None:
    fake.reset()
    fake.error_rate, fake.retry_after_s = scenario.error_rate, scenario.retry_after_s
    fake.down = scenario.outage_s > 0


def outage(fake: FakeOpenAI, scenario: Scenario) -> float | None:
    """Waits out the outage from the first request on; returns when the provider came back."""
    if not scenario.outage_s:
        return None
    while not fake.requests:
        time.sleep(0.01)
    time.sleep(scenario.outage_s)
    fake.down = False
    return time.time()


def after_return(fake: FakeOpenAI, run: Run, back_at: float | None, done_at: float) -> Run:
    if back_at is None:
        return run
    answers = sorted(fake.statuses)
    first_ok = next((at for at, status in answers if status == 200 and at >= back_at), None)
    if first_ok is not None:
        run.resume_s = first_ok - back_at
        run.probes = sum(
            1 for r in fake.requests if back_at <= r.at < first_ok - 0.9 * fake.latency_s
        )
    run.drain_s = done_at - back_at
    return run


def elapsed(fake: FakeOpenAI, done_at: float) -> float:
    return done_at - min(r.at for r in fake.requests)


# -- bare ---------------------------------------------------------------------------------------


async def bare_run(
    base_url: str, spec: JudgeSpec, traces: list[Trace], in_flight: int
) -> tuple[int, int]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", timeout=30)
    semaphore = asyncio.Semaphore(in_flight)

    async def one(trace: Trace) -> bool:
        messages = render_messages(spec, trace, False, None)
        async with semaphore:
            try:
                response = await client.chat.completions.create(
                    model=spec.model,
                    messages=cast("list[ChatCompletionMessageParam]", messages),
                    temperature=spec.temperature,
                    max_tokens=spec.max_tokens,
                    response_format=cast("ResponseFormatJSONSchema", spec.response_format()),
                )
            except openai.APIError:
                return False
        spec.output_model.model_validate_json(response.choices[0].message.content or "")
        return True

    try:
        results = await asyncio.gather(*(one(t) for t in traces))
    finally:
        await client.close()
    return sum(results), len(traces) - sum(results)


def bare(
    server: OpenAIServer, scenario: Scenario, spec: JudgeSpec, traces: list[Trace], in_flight: int
) -> Run:
    configure(server.fake, scenario)
    outcome: list[tuple[int, int]] = []

    def run_bare() -> None:
        outcome.append(asyncio.run(bare_run(server.base_url, spec, traces, in_flight)))

    runner = threading.Thread(target=run_bare, daemon=True)
    runner.start()
    back_at = outage(server.fake, scenario)
    runner.join()
    done_at = time.time()
    ok, lost = outcome[0]
    run = Run(ok, lost, elapsed(server.fake, done_at), len(server.fake.requests))
    return after_return(server.fake, run, back_at, done_at)


# -- fleet --------------------------------------------------------------------------------------


def results(store: SQLStore, prefix: str) -> tuple[int, int]:
    """(judge_calls rows, of which ok) of this scenario's traces."""
    with Session(store.engine) as session:
        rows = session.exec(
            select(JudgeCallRecord.status, func.count())
            .where(col(JudgeCallRecord.trace_id).startswith(prefix))
            .group_by(col(JudgeCallRecord.status))
        ).all()
    counts = {status: int(n) for status, n in rows}
    return sum(counts.values()), counts.get("ok", 0)


def fleet(
    server: OpenAIServer,
    scenario: Scenario,
    redis_url: str,
    store: SQLStore,
    traces: list[Trace],
    limit_s: float,
) -> Run:
    configure(server.fake, scenario)
    client = redis.Redis.from_url(redis_url)
    for pattern in (CIRCUIT_PREFIX, RATE_LIMIT_PREFIX, RATE_PAUSE_PREFIX):  # a fresh start
        for key in client.scan_iter(f"{pattern}*"):
            client.delete(key)
    publish_many(client, traces, Settings(redis_url=redis_url))
    client.close()
    back_at = outage(server.fake, scenario)
    prefix = traces[0].trace_id.split("-")[0] + "-"
    deadline = time.time() + limit_s
    while (done := results(store, prefix))[0] < len(traces) and time.time() < deadline:
        time.sleep(0.05)
    done_at = time.time()
    ok = done[1]
    run = Run(ok, len(traces) - ok, elapsed(server.fake, done_at), len(server.fake.requests))
    started = min(r.at for r in server.fake.requests)
    run.requeued, run.p90_s = requeued_and_p90(store, prefix, started)
    return after_return(server.fake, run, back_at, done_at)


def requeued_and_p90(store: SQLStore, prefix: str, started: float) -> tuple[int, float | None]:
    with Session(store.engine) as session:
        requeued = session.exec(
            select(func.count())
            .select_from(LedgerRecord)
            .where(col(LedgerRecord.trace_id).startswith(prefix), col(LedgerRecord.attempt) > 1)
        ).one()
        created = sorted(
            c.timestamp() - started
            for c in session.exec(
                select(JudgeCallRecord.created_at).where(
                    col(JudgeCallRecord.trace_id).startswith(prefix)
                )
            )
        )
    return int(requeued), created[int(len(created) * 0.9)] if created else None


def start_fleet(
    args: argparse.Namespace, base_url: str, redis_url: str, database_url: str, log: Path
) -> list[subprocess.Popen[bytes]]:
    env = {
        **{k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"},
        "EVALFLEET_REDIS_URL": redis_url,
        "EVALFLEET_DATABASE_URL": database_url,
        "EVALFLEET_JUDGE_BASE_URL": base_url,
        "EVALFLEET_JUDGE_API_KEY": "bench",
        "EVALFLEET_ENABLED_JUDGES": json.dumps([args.judge]),
        "EVALFLEET_JUDGE_SAMPLE_RATE": "1.0",
        "EVALFLEET_JUDGE_MAX_IN_FLIGHT": str(args.in_flight),
        "EVALFLEET_JUDGE_BATCH_SIZE": str(args.batch),
    }
    cli = [sys.executable, "-m", "evaluator.cli"]
    loglevel = os.environ.get("BENCH_LOGLEVEL", "WARNING")
    commands = [
        [*cli, "worker", "--queues", "heuristics", "--loglevel", loglevel],
        [*cli, "worker", "--queues", "judges", "--pool", "threads", "--concurrency",
         str(args.concurrency), "--loglevel", loglevel],
        [*cli, "sampler", "--loglevel", loglevel],
    ]  # fmt: skip
    with log.open("wb") as out:
        return [
            subprocess.Popen(c, env=env, stdout=out, stderr=subprocess.STDOUT) for c in commands
        ]


# -- the table ----------------------------------------------------------------------------------


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    chosen = [
        Scenario("0 %"),
        Scenario("10 %, Retry-After", 0.1),
        Scenario("10 %, no Retry-After", 0.1, None),
        Scenario("30 %, Retry-After", 0.3),
        Scenario("30 %, no Retry-After", 0.3, None),
        Scenario(f"outage {args.outage:g} s", outage_s=args.outage),
    ]
    return [s for s in chosen if not args.only or any(o in s.name for o in args.only)]


def row(name: str, bare_run: Run, fleet_run: Run, n: int) -> str:
    def resume(run: Run) -> str:
        if run.resume_s is None:
            return "-"
        return f"{run.resume_s:.1f} s ({run.probes} probes, all in {run.drain_s:.1f} s)"

    ratio = fleet_run.rate / bare_run.rate if bare_run.rate else float("inf")
    return (
        f"| {name} | {bare_run.rate:.1f} | {fleet_run.rate:.1f} | {100 * ratio:.0f} % "
        f"| {bare_run.lost} | {fleet_run.lost} "
        f"| {bare_run.calls / n:.2f} | {fleet_run.calls / n:.2f} "
        f"| {fleet_run.requeued} | {fleet_run.p90_s or 0:.1f} s "
        f"| {resume(bare_run)} | {resume(fleet_run)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--error-latency", type=float, default=0.02)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="traces per judge task")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="judge worker threads (the Procfile's 8)"
    )
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the provider is down")
    parser.add_argument("--judge", default="groundedness")
    parser.add_argument("--limit", type=float, default=600.0, help="give a fleet run up")
    parser.add_argument("--only", nargs="*", help="scenarios whose name contains one of these")
    args = parser.parse_args()
    spec = load_judges(default_judges_dir())[args.judge]
    assert isinstance(spec, JudgeSpec)
    header = (
        "| errors | bare evals/s | fleet evals/s | fleet/bare | bare lost | fleet lost "
        "| bare calls/eval | fleet calls/eval | fleet re-queued | fleet 90 % done "
        "| bare resume | fleet resume |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = []
    with (
        OpenAIServer() as server,
        EmbeddedRedis() as redis_server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        server.fake.latency_s, server.fake.error_latency_s = args.latency, args.error_latency
        database_url = f"sqlite:///{tmp}/bench.db"
        store = SQLStore(database_url)
        log = Path(tmp) / "fleet.log"
        processes = start_fleet(args, server.base_url, redis_server.url, database_url, log)
        try:
            time.sleep(5)
            for number, scenario in enumerate(scenarios(args)):
                traces = [make_trace(i, trace_id=f"s{number}-{i:06d}") for i in range(args.n)]
                bare_run_ = bare(server, scenario, spec, traces, args.in_flight)
                fleet_run = fleet(server, scenario, redis_server.url, store, traces, args.limit)
                lines.append(row(scenario.name, bare_run_, fleet_run, args.n))
                print(lines[-1], flush=True)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=60)
            store.close()
            if os.environ.get("BENCH_LOGLEVEL"):
                print(log.read_text()[-5000:])
    print(
        f"\n{args.n} {args.judge} evaluations per scenario, latency {args.latency * 1000:.0f} ms "
        f"(errors {args.error_latency * 1000:.0f} ms), {args.in_flight} in flight, 429s and "
        f"500s half each; judge worker: threads x{args.concurrency}, {args.batch} per task\n"
    )
    print(header)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
