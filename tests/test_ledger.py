"""The evaluation ledger: states written by the workers, rows only moving forward, transient
failures staying open while retries remain, spend caps, and the reaper."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from helpers import Fleet, fleet_env, make_trace, wait_for
from openai_server import OpenAIServer
from sqlmodel import Session, select
from typer.testing import CliRunner

from evaluator.cli import app
from evaluator.evaluation.scoring import ScoringContext, judge_batch, score_batch
from evaluator.evaluators import heuristic_evaluators
from evaluator.ingest import publish_many
from evaluator.judging.files import default_judges_dir, load_judges
from evaluator.ledger import (
    HEURISTICS,
    LedgerState,
    ledger_row,
    open_count,
    prune,
    reap,
    redrive,
    rows_for_trace,
    summary,
    write_rows,
)
from evaluator.models import SampleDecision
from evaluator.review import ReviewRouter
from evaluator.sampling.budget import SpendMeter
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import LedgerRecord, ScoreRecord

JUDGES = dict(load_judges(default_judges_dir()))
RELEVANCE = JUDGES["answer_relevance"]


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[SQLStore]:
    """For the tests whose CLI or subprocesses use ``sqlite_url``; the others run on SQLite and
    PostgreSQL (conftest's ``store``)."""
    sql = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)
    yield sql
    sql.close()


def judge_settings(server: OpenAIServer, redis_url: str, **extra: Any) -> Settings:
    return Settings(
        redis_url=redis_url,
        judge_base_url=server.base_url,
        judge_api_key="sk-test",  # type: ignore[arg-type]
        judge_timeout_s=0.5,
        judge_backoff_base_s=0.01,
        judge_backoff_max_s=0.05,
        judge_max_attempts=3,
        **extra,
    )


class Requeued(list[tuple[list[dict[str, Any]], float]]):
    def __call__(self, entries: list[dict[str, Any]], delay_s: float) -> None:
        self.append((entries, delay_s))


def context(
    store: SQLStore, client: redis.Redis, settings: Settings, requeue: Requeued | None = None
) -> ScoringContext:
    return ScoringContext(
        heuristic_evaluators(settings),
        store,
        ReviewRouter(),
        client,
        settings,
        judges={"answer_relevance": RELEVANCE},
        requeue=requeue,
        spend=SpendMeter(client, settings, store.judge_spend_since),
    )


def judge_entry(index: int, since: float | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"{1763630000000 + index}-0",
        "trace": make_trace(index).model_dump_json(),
        "judges": ["answer_relevance"],
        "inclusion": {"answer_relevance": 0.5},
        "since": time.time() if since is None else since,
        **extra,
    }


def state_of(store: SQLStore, trace_id: str, evaluator: str = "answer_relevance") -> LedgerRecord:
    [row] = [r for r in rows_for_trace(store, trace_id) if r.evaluator == evaluator]
    return row


def test_transient_failure_stays_retrying_while_retries_remain_then_done(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, server: OpenAIServer
) -> None:
    settings = judge_settings(server, redis_url)
    requeue = Requeued()
    ctx = context(store, redis_client, settings, requeue)
    server.fake.script.extend(["500"] * settings.judge_max_attempts)  # every attempt of one call
    result = judge_batch([judge_entry(1)], ctx)
    assert result.deferred == 1 and result.scores == 0
    row = state_of(store, "t-000001")
    assert (row.state, row.terminal, row.attempt) == ("retrying", False, 1)
    assert row.reason.startswith("transient: ") and row.next_attempt_at is not None
    [(again, _delay)] = requeue
    assert again[0]["attempt"] == 2
    # The endpoint is back: the requeued work finishes.
    judge_batch(again, ctx)
    row = state_of(store, "t-000001")
    assert (row.state, row.terminal, row.attempt, row.reason) == ("done", True, 2, "")
    assert row.inclusion_probability == 0.5
    with Session(store.engine) as session:
        score = session.exec(select(ScoreRecord)).one()
    assert score.inclusion_probability == 0.5


def test_transient_failure_fails_only_after_the_give_up_time(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, server: OpenAIServer
) -> None:
    settings = judge_settings(server, redis_url, judge_give_up_after_s=60)
    ctx = context(store, redis_client, settings, Requeued())
    server.fake.script.extend(["500"] * settings.judge_max_attempts)
    judge_batch([judge_entry(1, since=time.time() - 61)], ctx)
    row = state_of(store, "t-000001")
    assert row.state == "failed"
    assert "gave up after" in row.reason


def test_schema_failure_is_failed_with_the_reason(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, server: OpenAIServer
) -> None:
    ctx = context(store, redis_client, judge_settings(server, redis_url))
    server.fake.script.extend(["malformed", "malformed"])
    judge_batch([judge_entry(1)], ctx)
    row = state_of(store, "t-000001")
    assert row.state == "failed" and row.reason


def test_rows_only_move_forward(store: SQLStore) -> None:
    now = datetime.now(UTC)

    def write(state: LedgerState, attempt: int) -> str:
        write_rows(store, [ledger_row("t1", "j", "1", state, now, attempt=attempt)])
        return state_of(store, "t1", "j").state

    assert write(LedgerState.RUNNING, 1) == "running"
    assert write(LedgerState.QUEUED, 1) == "running"  # the heuristics worker's late "queued"
    assert write(LedgerState.RETRYING, 1) == "retrying"
    assert write(LedgerState.RUNNING, 2) == "running"  # the retry's attempt
    assert write(LedgerState.DONE, 2) == "done"
    assert write(LedgerState.RUNNING, 3) == "done"  # a redelivered batch changes nothing
    assert write(LedgerState.FAILED, 3) == "done"


def test_heuristics_batch_records_every_judge(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, server: OpenAIServer
) -> None:
    settings = judge_settings(server, redis_url)
    ctx = context(store, redis_client, settings)
    ctx.judges = {name: JUDGES[name] for name in ("answer_relevance", "correctness", "safety")}
    sampled = SampleDecision(
        judge=True,
        stratum="error",
        rate=1.0,
        judges=["answer_relevance"],
        inclusion={"answer_relevance": 1.0},
        sampled_out=["safety"],
        filtered={"correctness": "needs a reference answer"},
    )
    unsampled = SampleDecision(
        judge=False, rate=0.1, sampled_out=["answer_relevance", "correctness", "safety"]
    )
    batch = [
        {"id": "1763630000000-0", "trace": make_trace(1).model_dump_json(),
         "decision": sampled.model_dump()},
        {"id": "1763630000001-0", "trace": make_trace(2).model_dump_json(),
         "decision": unsampled.model_dump()},
    ]  # fmt: skip
    score_batch(batch, ctx)
    states = {r.evaluator: (r.state, r.reason) for r in rows_for_trace(store, "t-000001")}
    assert states == {
        HEURISTICS: ("done", ""),
        "answer_relevance": ("queued", ""),
        "correctness": ("filtered", "needs a reference answer"),
        "safety": ("sampled_out", "thinned out by the judge's budget"),
    }
    unsampled_states = {r.evaluator: r.state for r in rows_for_trace(store, "t-000002")}
    assert unsampled_states == {
        HEURISTICS: "done",
        "answer_relevance": "sampled_out",
        "correctness": "sampled_out",
        "safety": "sampled_out",
    }
    assert state_of(store, "t-000002", "safety").reason == "stratum control at rate 0.1"
    assert summary(store)["answer_relevance"] == {"queued": 1, "sampled_out": 1}


def test_spend_cap_moves_judge_work_to_over_budget_heuristics_keep_running(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, server: OpenAIServer
) -> None:
    settings = judge_settings(server, redis_url, judge_budgets_usd={"answer_relevance": 0.001})
    ctx = context(store, redis_client, settings)
    judge_batch([judge_entry(1)], ctx)  # one call: spend recorded
    assert ctx.spend is not None and ctx.spend.today()["answer_relevance"] > 0
    ctx.spend.record([{"judge": "answer_relevance", "cost_usd": 0.01}])  # over the cap now
    calls_before = len(server.fake.requests)
    judge_batch([judge_entry(2), judge_entry(3)], ctx)
    assert len(server.fake.requests) == calls_before  # not run
    for trace_id in ("t-000002", "t-000003"):
        row = state_of(store, trace_id)
        assert row.state == "over_budget"
        assert "of its $0.001 daily budget" in row.reason
    decision = SampleDecision(judge=False, rate=0.1).model_dump()
    heuristics = score_batch(
        [{"id": "1763630000009-0", "trace": make_trace(9).model_dump_json(), "decision": decision}],
        ctx,
    )
    assert heuristics.scores > 0
    # Raised budget: redrive reopens them and the reaper dispatches them again.
    assert redrive(store, LedgerState.OVER_BUDGET) == 2
    sent: list[tuple[list[dict[str, Any]], str | None]] = []
    counts = reap(store, JUDGES, settings, lambda e, run: sent.append((e, run)))
    # These judge-only entries never had their trace stored: the reaper waits for the
    # heuristics batch (it may still be on its way), then gives up with the reason.
    assert (counts.failed, counts.redispatched) == (0, 0)
    hours_later = datetime.now(UTC) + timedelta(hours=6)
    counts = reap(store, JUDGES, settings, lambda e, run: sent.append((e, run)), now=hours_later)
    assert counts.failed == 2
    assert all("never stored" in r for r in counts.reasons)


def test_spend_is_read_back_from_sql_when_redis_lost_it(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, server: OpenAIServer
) -> None:
    settings = judge_settings(server, redis_url)
    ctx = context(store, redis_client, settings)
    judge_batch([judge_entry(1), judge_entry(2)], ctx)
    assert ctx.spend is not None
    before = ctx.spend.today()
    redis_client.flushdb()
    after = ctx.spend.today()
    assert after["calls:answer_relevance"] == 2
    assert after["answer_relevance"] == pytest.approx(before["answer_relevance"])


def test_reaper_redispatches_stuck_rows_then_fails_them(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, server: OpenAIServer
) -> None:
    settings = judge_settings(server, redis_url, ledger_max_dispatches=2)
    ctx = context(store, redis_client, settings)
    decision = SampleDecision(
        judge=True, rate=1.0, judges=["answer_relevance"], inclusion={"answer_relevance": 1.0}
    )
    entry = {"id": f"{int(time.time() * 1000)}-0", "trace": make_trace(1).model_dump_json(),
             "decision": decision.model_dump()}  # fmt: skip
    score_batch([entry], ctx)  # queued, the payload stored; the judge task is "lost"
    sent: list[tuple[list[dict[str, Any]], str | None]] = []
    later = datetime.now(UTC) + timedelta(seconds=settings.ledger_queued_deadline_s + 1)
    assert reap(store, JUDGES, settings, lambda e, r: sent.append((e, r))).redispatched == 0
    counts = reap(store, JUDGES, settings, lambda e, r: sent.append((e, r)), now=later)
    assert counts.redispatched == 1
    [(entries, run)] = sent
    assert run is None and entries[0]["judges"] == ["answer_relevance"]
    assert entries[0]["attempt"] == 2
    row = state_of(store, "t-000001")
    assert (row.state, row.attempt) == ("queued", 2)
    even_later = later + timedelta(seconds=settings.ledger_queued_deadline_s + 1)
    counts = reap(store, JUDGES, settings, lambda e, r: sent.append((e, r)), now=even_later)
    assert counts.failed == 1
    row = state_of(store, "t-000001")
    assert row.state == "failed" and "after 2 dispatches" in row.reason
    # The re-dispatched entry runs like any judge entry.
    judge_batch(entries, ctx)
    assert state_of(store, "t-000001").state == "failed"  # terminal stays terminal


def test_prune_drops_old_settled_rows_and_payloads_not_open_rows(store: SQLStore) -> None:
    settings = Settings(ledger_retention_s=3600, trace_retention_s=7200)
    now = datetime.now(UTC)
    old = now - timedelta(hours=3)
    write_rows(
        store,
        [
            ledger_row("t1", "safety", "2", LedgerState.DONE, old),
            ledger_row("t2", "safety", "2", LedgerState.QUEUED, old, attempt=1),
            ledger_row("t3", "safety", "2", LedgerState.DONE, now),
        ],
    )
    payload = {"trace_id": "t1", "tenant": None, "prompt_version": None, "payload": "{}"}
    store.write_batch([], [], [], payloads=[{**payload, "published_at": old}])
    assert prune(store, settings, now) == 1
    assert [r.trace_id for r in rows_for_trace(store, "t1")] == []
    assert [r.state for r in rows_for_trace(store, "t2")] == ["queued"]  # the reaper's to settle
    assert [r.state for r in rows_for_trace(store, "t3")] == ["done"]


def test_ledger_cli(
    sqlite_store: SQLStore, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = sqlite_store
    monkeypatch.setenv("EVALFLEET_DATABASE_URL", sqlite_url)
    now = datetime.now(UTC)
    write_rows(
        store,
        [
            ledger_row("t1", "groundedness", "3", LedgerState.DONE, now),
            ledger_row("t1", "safety", "2", LedgerState.OVER_BUDGET, now, reason="fleet spent"),
            ledger_row("t2", "groundedness", "3", LedgerState.SAMPLED_OUT, now),
        ],
    )
    runner = CliRunner()
    shown = runner.invoke(app, ["ledger", "--trace", "t1"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "over_budget" in shown.output and "fleet spent" in shown.output
    assert "sampled_out" not in shown.output  # t2's row
    missing = runner.invoke(app, ["ledger", "--trace", "nope"])
    assert missing.exit_code == 1 and "no ledger rows for trace 'nope'" in missing.output
    counted = runner.invoke(app, ["ledger", "summary", "--since", "1h", "--json"])
    assert counted.exit_code == 0, counted.output
    assert '"over_budget": 1' in counted.output and '"sampled_out": 1' in counted.output


FleetFactory = Callable[[dict[str, str]], Fleet]


def test_workers_killed_at_random_every_row_ends_terminal(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    server: OpenAIServer,
    fleet_factory: FleetFactory,
    sqlite_store: SQLStore,
) -> None:
    store = sqlite_store
    n = 60
    server.fake.latency_s = 0.1
    env = fleet_env(
        redis_url,
        sqlite_url,
        judge_base_url=server.base_url,
        judge_api_key="sk-test",
        enabled_judges=["answer_relevance", "safety"],
        judge_sample_rate=0.5,
        judge_batch_size=4,
        judge_timeout_s=2,
        reaper_interval_s=1,
        claim_interval_s=0.5,
        ledger_running_deadline_s=4,
        ledger_queued_deadline_s=6,
        broker_visibility_timeout_s=5,
    )
    fleet = fleet_factory(env)
    fleet.sampler()
    worker = fleet.worker(concurrency=1, pool="threads")
    publish_many(redis_client, [make_trace(i) for i in range(n)], Settings())
    rng = random.Random(5)
    for _ in range(3):  # kill the worker at random points while it holds judge work
        time.sleep(rng.uniform(0.3, 1.5))
        Fleet.kill(worker, signal.SIGKILL)
        worker = fleet.worker(concurrency=1, pool="threads")

    def settled() -> bool:
        rows = store.count(LedgerRecord)
        return rows == n * 3 and open_count(store) == 0

    wait_for(settled, 90, lambda: f"ledger {summary(store)}\n{fleet.logs()[-3000:]}")
    states = summary(store)
    with Session(store.engine) as session:
        unsettled = [
            (r.trace_id, r.evaluator, r.state, r.attempt, r.reason)
            for r in session.exec(select(LedgerRecord))
            if r.state not in ("done", "sampled_out")
        ]
    assert states[HEURISTICS] == {"done": n}, unsettled
    judged = states["answer_relevance"]
    assert set(judged) <= {"done", "sampled_out"}, unsettled
    assert judged.get("done", 0) > 0


def test_reaper_does_not_count_deferrals_as_dispatches(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, server: OpenAIServer
) -> None:
    # A judge worker killed after deferring an evaluation many times (each deferral bumps the
    # attempt): the reaper re-dispatches it, because it dispatched it only once so far.
    settings = judge_settings(server, redis_url, ledger_max_dispatches=2)
    ctx = context(store, redis_client, settings)
    decision = SampleDecision(
        judge=True, rate=1.0, judges=["answer_relevance"], inclusion={"answer_relevance": 1.0}
    )
    entry = {"id": f"{int(time.time() * 1000)}-0", "trace": make_trace(1).model_dump_json(),
             "decision": decision.model_dump()}  # fmt: skip
    score_batch([entry], ctx)
    version = JUDGES["answer_relevance"].version
    now = datetime.now(UTC)
    deferred = ledger_row(
        "t-000001", "answer_relevance", version, LedgerState.RETRYING, now,
        attempt=7, reason="429 from the provider", deadline_at=now,
    )  # fmt: skip
    write_rows(store, [deferred])
    sent: list[tuple[list[dict[str, Any]], str | None]] = []
    later = now + timedelta(seconds=1)
    counts = reap(store, JUDGES, settings, lambda e, r: sent.append((e, r)), now=later)
    assert (counts.redispatched, counts.failed) == (1, 0)
    row = state_of(store, "t-000001")
    assert (row.state, row.attempt, row.dispatches) == ("queued", 8, 2)
    # The next time it is stuck, it has used up its two dispatches.
    even_later = later + timedelta(seconds=settings.ledger_queued_deadline_s + 1)
    counts = reap(store, JUDGES, settings, lambda e, r: sent.append((e, r)), now=even_later)
    assert counts.failed == 1 and "after 2 dispatches" in counts.reasons[0]
