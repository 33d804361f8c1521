"""Judges through the real fleet: sampler and worker subprocesses, the local OpenAI server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis
from helpers import Fleet, fleet_env, make_trace, wait_for
from openai_server import OpenAIServer
from sqlmodel import Session, col, func, select

from evaluator.celery_app import create_app
from evaluator.constants import DEAD_STREAM, JUDGES_QUEUE, JUDGES_TASK
from evaluator.ingest import publish_many
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import JudgeCallRecord, LedgerRecord, ScoreRecord

FleetFactory = Callable[[dict[str, str]], Fleet]


@pytest.fixture
def store(sqlite_url: str) -> Iterator[SQLStore]:
    """These tests need one store only: SQLite (the Postgres paths are covered in test_fleet)."""
    sql = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)
    yield sql
    sql.close()


def judge_env(
    redis_url: str, database_url: str, server: OpenAIServer, **extra: object
) -> dict[str, str]:
    settings: dict[str, object] = {
        "judge_base_url": server.base_url,
        "judge_api_key": "sk-test",
        "enabled_judges": ["answer_relevance"],
        "judge_sample_rate": 1.0,
        "judge_timeout_s": 1,
        "judge_backoff_base_s": 0.02,
        "judge_backoff_max_s": 0.2,
        "judge_batch_size": 10,
    }
    return fleet_env(redis_url, database_url, **{**settings, **extra})


def judge_scores(store: SQLStore, status: str | None = None) -> int:
    with Session(store.engine) as session:
        query = (
            select(func.count())
            .select_from(ScoreRecord)
            .where(ScoreRecord.evaluator == "answer_relevance")
        )
        if status:
            query = query.where(ScoreRecord.status == status)
        return int(session.exec(query).one())


def test_two_workers_share_the_fleet_rate_limit(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    server: OpenAIServer,
    fleet_factory: FleetFactory,
    store: SQLStore,
) -> None:
    n = 100
    env = judge_env(redis_url, sqlite_url, server, judge_requests_per_minute={"gpt-4o-mini": 1200})
    fleet = fleet_factory(env)
    fleet.worker(concurrency=1)  # prefork, both queues
    fleet.worker(concurrency=4, pool="threads", queues="judges")  # the judge-worker of the Procfile
    wait_for(lambda: fleet.logs().count("ready.") == 2, 30, "two workers ready")
    fleet.sampler()
    publish_many(
        redis_client,
        [make_trace(i, output=f"Answer {i} [[score=0.8]]") for i in range(n)],
        Settings(),
    )
    wait_for(lambda: judge_scores(store) == n, 60, lambda: f"{n} judge scores\n{fleet.logs()}")
    times = sorted(r.at for r in server.fake.requests)
    assert len(times) == n
    # 1,200/min = 20/s after a burst of 20, across both workers: the 80 calls after the burst
    # arrive at no more than the limit (10 % allowance for network jitter on arrival times).
    sustained = (len(times) - 21) / (times[-1] - times[20])
    assert sustained <= 20 * 1.1, sustained
    assert max(sum(1 for t in times if s <= t < s + 1) for s in times) <= 20 + 20 + 4
    with Session(store.engine) as session:
        calls = session.exec(select(JudgeCallRecord)).all()
        assert len(calls) == n and all(c.status == "ok" and c.cost_usd for c in calls)
        values = session.exec(
            select(ScoreRecord.value).where(ScoreRecord.evaluator == "answer_relevance")
        ).all()
        assert set(values) == {0.8}


def test_persistent_bad_output_becomes_error_scores_nothing_lost(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    server: OpenAIServer,
    fleet_factory: FleetFactory,
    store: SQLStore,
) -> None:
    n = 12
    server.fake.script.extend(["malformed"] * (2 * n))
    fleet = fleet_factory(judge_env(redis_url, sqlite_url, server))
    fleet.worker(concurrency=1)
    fleet.sampler()
    publish_many(redis_client, [make_trace(i) for i in range(n)], Settings())
    wait_for(lambda: judge_scores(store, "error") == n, 60, lambda: f"error scores\n{fleet.logs()}")
    assert len(server.fake.requests) == 2 * n  # one repair each, no loop
    with Session(store.engine) as session:
        reasons = set(
            session.exec(select(ScoreRecord.reason).where(col(ScoreRecord.status) == "error")).all()
        )
    assert all(r.startswith("judge output failed its schema after one repair") for r in reasons)


def ledger_states(store: SQLStore) -> dict[str, int]:
    with Session(store.engine) as session:
        rows = session.exec(
            select(LedgerRecord.state, func.count())
            .where(LedgerRecord.evaluator == "answer_relevance")
            .group_by(LedgerRecord.state)
        ).all()
    return {state: int(n) for state, n in rows}


def test_thirty_percent_provider_errors_lose_nothing_and_cost_little_time(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    server: OpenAIServer,
    fleet_factory: FleetFactory,
    store: SQLStore,
) -> None:
    """30 % of calls answered 429 (half of them without Retry-After) or 500, errors fast and
    successes slow: the breaker must not open (a 15 % failure rate), nothing is lost, and
    judge_calls.attempts adds up to the requests the server saw, deferrals included."""
    n = 120
    server.fake.latency_s, server.fake.error_latency_s = 0.1, 0.005
    server.fake.error_rate, server.fake.error_actions = 0.3, ("429", "500")
    server.fake.retry_after_s = 0.05
    env = judge_env(
        redis_url, sqlite_url, server, judge_max_attempts=3, judge_batch_size=20,
        judge_max_in_flight=16, judge_backoff_base_s=0.05,
    )  # fmt: skip
    fleet = fleet_factory(env)
    fleet.worker(concurrency=4, pool="threads")
    wait_for(lambda: "ready." in fleet.logs(), 30, "worker ready")
    fleet.sampler()
    publish_many(redis_client, [make_trace(i) for i in range(n)], Settings())
    wait_for(lambda: bool(server.fake.requests), 30, lambda: f"first call\n{fleet.logs()}")
    started = time.time()
    wait_for(lambda: judge_scores(store, "ok") == n, 60, lambda: f"{n} judged\n{fleet.logs()}")
    elapsed = time.time() - started
    # 120 evaluations x ~1.4 calls at 100 ms, 16 at a time: ~1 s of calls; an open breaker
    # (seconds) or a deferral held for a batch-mate (EVALFLEET_JUDGE_BACKOFF_MAX_S) would show.
    assert elapsed < 10, elapsed
    assert judge_scores(store, "error") == 0
    assert ledger_states(store) == {"done": n}
    statuses = [status for _, status in server.fake.statuses]
    assert statuses.count(200) == n and statuses.count(500) > 0 and statuses.count(429) > 0
    with Session(store.engine) as session:
        attempts = session.exec(select(func.sum(JudgeCallRecord.attempts))).one()
    assert attempts == len(server.fake.requests) == len(statuses)


def test_outage_defers_work_then_probes_and_resumes_when_the_endpoint_is_back(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    server: OpenAIServer,
    fleet_factory: FleetFactory,
    store: SQLStore,
) -> None:
    n = 40
    outage_s, open_s, probes = 4.0, 1.0, 2
    server.fake.latency_s, server.fake.error_latency_s = 0.05, 0.005
    server.fake.down = True
    env = judge_env(
        redis_url, sqlite_url, server, judge_max_attempts=2, judge_breaker_min_calls=10,
        judge_breaker_open_s=open_s, judge_breaker_probes=probes,
    )  # fmt: skip
    fleet = fleet_factory(env)
    fleet.worker(concurrency=2, pool="threads")
    fleet.sampler()
    publish_many(redis_client, [make_trace(i) for i in range(n)], Settings())
    wait_for(lambda: bool(server.fake.requests), 30, lambda: f"first call\n{fleet.logs()}")
    time.sleep(outage_s)
    calls_while_down = len(server.fake.requests)
    back_at = time.time()
    server.fake.down = False
    wait_for(lambda: judge_scores(store, "ok") == n, 60, lambda: f"all judged\n{fleet.logs()}")
    done_at = time.time()
    assert judge_scores(store, "error") == 0 and ledger_states(store) == {"done": n}
    # While it was down the open breaker kept the fleet from calling: a few probes per
    # cool-down, not every evaluation's every attempt (40 evaluations x 2 attempts x a retry
    # every ~0.5 s for 4 s would be hundreds).
    assert calls_while_down < 10 + 2 * n + probes * (outage_s / open_s + 1), calls_while_down
    answers = sorted(server.fake.statuses)
    first_ok = next(at for at, status in answers if status == 200)
    # Back within a cool-down and a re-queue of its return...
    assert first_ok - back_at < open_s + 2.5, first_ok - back_at
    # ...by probes first: no more than the probes reached it before the first success...
    arrivals = sorted(r.at for r in server.fake.requests)
    assert sum(1 for at in arrivals if back_at <= at < first_ok - 0.04) <= probes
    # ...then everything, soon.
    assert done_at - back_at < open_s + 10, done_at - back_at


def test_attempts_before_a_deferral_are_counted_and_batch_mates_do_not_wait(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    server: OpenAIServer,
    fleet_factory: FleetFactory,
    store: SQLStore,
) -> None:
    """One attempt per dispatch, and the first two calls fail: those two evaluations are
    deferred and re-queued on their own; the other eight of their batch are stored meanwhile;
    their judge_calls rows count the requests of both dispatches, as the server saw them."""
    n = 10
    server.fake.script.extend(["500", "500"])
    env = judge_env(
        redis_url, sqlite_url, server, judge_max_attempts=1, judge_backoff_base_s=2,
        judge_backoff_max_s=4,
    )  # fmt: skip
    fleet = fleet_factory(env)
    fleet.worker(concurrency=1)
    fleet.sampler()
    publish_many(redis_client, [make_trace(i) for i in range(n)], Settings())
    wait_for(lambda: judge_scores(store, "ok") == n - 2, 30, lambda: f"8 judged\n{fleet.logs()}")
    stored_at = time.time()
    assert ledger_states(store) == {"done": n - 2, "retrying": 2}
    wait_for(lambda: judge_scores(store, "ok") == n, 30, lambda: f"all judged\n{fleet.logs()}")
    # Re-queued after their own delay (half to all of the 2 s base, this being their first).
    assert 0.5 < time.time() - stored_at < 6
    with Session(store.engine) as session:
        rows = session.exec(select(JudgeCallRecord.trace_id, JudgeCallRecord.attempts)).all()
    attempts = {trace_id: n for trace_id, n in rows}
    assert sum(attempts.values()) == len(server.fake.requests) == n + 2
    assert sorted(attempts.values()) == [1] * (n - 2) + [2, 2]


def test_a_bug_in_a_task_dead_letters_its_batch_instead_of_losing_it(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    server: OpenAIServer,
    fleet_factory: FleetFactory,
) -> None:

    fleet = fleet_factory(judge_env(redis_url, sqlite_url, server))
    fleet.worker(concurrency=1)
    # An entry from an incompatible sampler version: no "since" field.
    entry = {"id": "1-0", "trace": make_trace(1).model_dump_json(), "judges": ["answer_relevance"]}
    create_app(Settings(redis_url=redis_url)).send_task(
        JUDGES_TASK, args=[[entry]], queue=JUDGES_QUEUE
    )
    wait_for(
        lambda: redis_client.xlen(DEAD_STREAM) == 1, 30, lambda: f"dead letter\n{fleet.logs()}"
    )
    [(_, fields)] = redis_client.xrange(DEAD_STREAM)
    assert fields[b"reason"] == b"worker: invalid JudgeWork entry (since: Field required)"
    assert fields[b"payload"] == entry["trace"].encode() and fields[b"source_id"] == b"1-0"
