"""Judges through the real fleet: sampler and worker subprocesses, the local OpenAI server."""

from __future__ import annotations

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
from evaluator.sinks.sql import JudgeCallRecord, ScoreRecord, SQLStore

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
    return fleet_env(
        redis_url,
        database_url,
        judge_base_url=server.base_url,
        judge_api_key="sk-test",
        enabled_judges=["answer_relevance"],
        judge_sample_rate=1.0,
        judge_timeout_s=1,
        judge_backoff_base_s=0.02,
        judge_backoff_max_s=0.2,
        judge_batch_size=10,
        **extra,
    )


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


def test_outage_defers_work_until_the_endpoint_is_back(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    server: OpenAIServer,
    fleet_factory: FleetFactory,
    store: SQLStore,
) -> None:
    n = 10
    server.fake.script.extend(["500"] * 12)  # down for a while, then healthy
    env = judge_env(
        redis_url,
        sqlite_url,
        server,
        judge_max_attempts=2,
        judge_circuit_failures=3,
        judge_circuit_open_s=1,
    )
    fleet = fleet_factory(env)
    fleet.worker(concurrency=1)
    fleet.sampler()
    publish_many(redis_client, [make_trace(i) for i in range(n)], Settings())
    wait_for(
        lambda: judge_scores(store, "ok") == n,
        60,
        lambda: f"all judged after the outage\n{fleet.logs()}",
    )
    assert judge_scores(store, "error") == 0
    failed = sum(1 for r in server.fake.requests) - n
    assert failed == 12


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
