"""Re-evaluation: the cost preview, new-version scores beside the old ones, comparing versions,
its own spend cap, and live judge work served ahead of it."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from helpers import Fleet, fleet_env, make_trace, wait_for
from langfuse_server import FakeLangfuse
from openai_server import OpenAIServer
from sqlmodel import Session, col, select
from test_backfill_langfuse import observations
from typer.testing import CliRunner

from evaluator.celery_app import create_app, judges_queue
from evaluator.cli import app
from evaluator.evaluation import reeval
from evaluator.evaluation.scoring import ScoringContext, judge_batch, score_batch
from evaluator.evaluators import heuristic_evaluators
from evaluator.ingest import publish_many
from evaluator.judging.files import default_judges_dir, load_judges
from evaluator.ledger import summary
from evaluator.models import ReviewLabel, SampleDecision, Verdict
from evaluator.review import ReviewRouter
from evaluator.sampling.budget import SpendMeter
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import ScoreRecord, TracePayloadRecord, TraceRecord
from evaluator.timeparse import parse_since

JUDGES = dict(load_judges(default_judges_dir()))
RELEVANCE = JUDGES["answer_relevance"]
OLD = RELEVANCE.model_copy(update={"version": "0-old"})


@pytest.fixture
def store(sqlite_url: str) -> Iterator[SQLStore]:
    sql = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)
    yield sql
    sql.close()


def settings_for(server: OpenAIServer, redis_url: str, database_url: str, **extra: Any) -> Settings:
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        judge_base_url=server.base_url,
        judge_api_key="sk-test",  # type: ignore[arg-type]
        judge_backoff_base_s=0.01,
        judge_backoff_max_s=0.05,
        **extra,
    )


def scored_history(
    store: SQLStore, client: redis.Redis, settings: Settings, n: int
) -> ScoringContext:
    """n stored traces, half sampled for judges (stratum control at 0.5) and judged by the old
    version of answer_relevance, which passes everything."""
    old_ctx = ScoringContext(
        heuristic_evaluators(settings), store, ReviewRouter(), client, settings,
        judges={"answer_relevance": OLD}, requeue=lambda *_: None,
        spend=SpendMeter(client, settings, store.judge_spend_since),
    )  # fmt: skip
    now_ms = int(time.time() * 1000)
    entries = []
    for i in range(n):
        sampled = i % 2 == 0
        decision = SampleDecision(
            judge=sampled, rate=0.5, judges=["answer_relevance"] if sampled else [],
            inclusion={"answer_relevance": 0.5} if sampled else {},
            sampled_out=[] if sampled else ["answer_relevance"],
        )  # fmt: skip
        trace = make_trace(i, output=f"Answer {i} [[score=0.9]]", prompt_version=f"p{i % 3}")
        entries.append({"id": f"{now_ms - n + i}-0", "trace": trace.model_dump_json(),
                        "decision": decision.model_dump()})  # fmt: skip
    score_batch(entries, old_ctx)
    judged = [
        {"id": e["id"], "trace": e["trace"], "judges": ["answer_relevance"],
         "inclusion": {"answer_relevance": 0.5}, "since": time.time()}
        for e in entries[::2]
    ]  # fmt: skip
    judge_batch(judged, old_ctx)
    return ScoringContext(**{**vars(old_ctx), "judges": {"answer_relevance": RELEVANCE}})


def test_preview_counts_filters_and_prices(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, sqlite_url: str,
    server: OpenAIServer,
) -> None:  # fmt: skip
    settings = settings_for(
        server, redis_url, sqlite_url, judge_requests_per_minute={"gpt-4o-mini": 600}
    )
    scored_history(store, redis_client, settings, 40)
    spec = reeval.parse_target(f"answer_relevance@{RELEVANCE.version}", JUDGES)
    planned = reeval.plan(store, settings, spec, parse_since("1d"))
    assert (planned.considered, planned.count, planned.already) == (20, 20, 0)
    assert all(p == 0.5 for _, _, p in planned.selected)  # the sampler's probabilities carry over
    assert planned.tokens_from.startswith("the average of its 20 calls")
    per_call = settings.cost_usd(
        "gpt-4o-mini", round(planned.input_tokens_per_call), round(planned.output_tokens_per_call)
    )
    assert per_call is not None and planned.usd == pytest.approx(20 * per_call)
    assert planned.seconds == pytest.approx(20 / 600 * 60)
    only = reeval.plan(store, settings, spec, parse_since("1d"), prompt_version="p0", limit=3)
    assert only.count == 3
    everything = reeval.plan(store, settings, spec, parse_since("1d"), all_traces=True)
    assert everything.count == 40 and {p for *_, p in everything.selected} == {1.0}
    with pytest.raises(reeval.ReevalError, match="is at version"):
        reeval.parse_target("answer_relevance@999", JUDGES)
    with pytest.raises(reeval.ReevalError, match="unknown judge"):
        reeval.parse_target("nonsense@1", JUDGES)


def test_reeval_writes_beside_the_old_version_and_compare_reports_agreement(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, sqlite_url: str,
    server: OpenAIServer,
) -> None:  # fmt: skip
    settings = settings_for(server, redis_url, sqlite_url)
    ctx = scored_history(store, redis_client, settings, 40)

    # The new version is stricter: it fails every answer whose number is divisible by 4.
    def stricter(body: dict[str, Any]) -> float | None:
        match = re.search(r"Answer (\d+)", str(body["messages"]))
        return 0.2 if match and int(match.group(1)) % 4 == 0 else None

    server.fake.scorer = stricter
    spec = reeval.parse_target("answer_relevance", JUDGES)
    planned = reeval.plan(store, settings, spec, parse_since("1d"))
    sent: list[tuple[list[dict[str, Any]], str | None]] = []
    run = reeval.start(store, settings, planned, lambda e, r: sent.append((e, r)), cap_usd=5.0)
    assert run.dispatched == 20 and all(r == run.run for _, r in sent)
    assert judges_queue(run.run) == "judges_backfill" and judges_queue(None) == "judges"
    assert summary(store)["answer_relevance"]["queued"] == 20
    for entries, _ in sent:
        judge_batch(entries, ctx)
    with Session(store.engine) as session:
        versions = session.exec(
            select(ScoreRecord.evaluator_version).where(ScoreRecord.evaluator == "answer_relevance")
        ).all()
    assert versions.count("0-old") == versions.count(RELEVANCE.version) == 20  # beside, not over
    # Resuming the same run judges nothing twice.
    assert reeval.plan(store, settings, spec, parse_since("1d")).count == 0
    # Human labels on four traces: the new version agrees with them, the old one does not.
    labels = [
        ReviewLabel(
            id=f"label-{i}", trace_id=make_trace(i).trace_id, evaluator="answer_relevance",
            evaluator_version=OLD.version, reviewer="ana", verdict=Verdict.FAIL,
            trace=make_trace(i),
        )
        for i in (0, 4, 8, 12)
    ]  # fmt: skip
    store.add_labels(labels)
    result = reeval.compare(store, "answer_relevance", "0-old", RELEVANCE.version)
    assert result.both == 20
    assert result.verdicts.confusion["pass"]["fail"] == 10  # 0, 4, 8, ... 36
    assert result.verdicts.accuracy == pytest.approx(0.5)
    assert result.humans_a is not None and result.humans_a.accuracy == 0.0
    assert result.humans_b is not None and result.humans_b.accuracy == 1.0
    output = CliRunner().invoke(
        app, ["compare", "answer_relevance@0-old", f"answer_relevance@{RELEVANCE.version}"],
        env={"EVALFLEET_DATABASE_URL": sqlite_url, "COLUMNS": "200"},
    )  # fmt: skip
    assert output.exit_code == 0, output.output
    assert "verdicts agree on 50.0 %" in output.output
    assert "vs human labels (4): 0-old 0.0 % agreement" in output.output


def test_run_cap_moves_the_rest_of_a_run_over_budget(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, sqlite_url: str,
    server: OpenAIServer,
) -> None:  # fmt: skip
    settings = settings_for(server, redis_url, sqlite_url)
    ctx = scored_history(store, redis_client, settings, 40)
    planned = reeval.plan(store, settings, RELEVANCE, parse_since("1d"))  # type: ignore[arg-type]
    sent: list[list[dict[str, Any]]] = []
    tiny = 1e-9  # the first batch's calls reach it
    reeval.start(store, settings, planned, lambda e, r: sent.append(e), cap_usd=tiny)
    for entries in sent:
        judge_batch(entries, ctx)
    states = summary(store)["answer_relevance"]
    assert states["over_budget"] == 20 - settings.judge_backfill_batch_size
    assert states["done"] == 20 + settings.judge_backfill_batch_size  # 20 from the old version


def test_cli_dry_run_then_confirmed_run(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, sqlite_url: str,
    server: OpenAIServer,
) -> None:  # fmt: skip
    settings = settings_for(server, redis_url, sqlite_url)
    scored_history(store, redis_client, settings, 12)
    env = {
        "EVALFLEET_DATABASE_URL": sqlite_url,
        "EVALFLEET_REDIS_URL": redis_url,
        "EVALFLEET_BROKER_URL": redis_url,
        "COLUMNS": "200",
    }
    runner = CliRunner()
    args = ["reeval", "--evaluator", "answer_relevance", "--since", "7d"]
    preview = runner.invoke(app, [*args, "--dry-run"], env=env)
    assert preview.exit_code == 0, preview.output
    assert "traces: 6 to judge of 6 in the window" in preview.output
    assert "estimated:" in preview.output and "$" in preview.output
    refused = runner.invoke(app, args, env=env, input="n\n")
    assert refused.exit_code == 1 and "Start re-evaluating 6 traces" in refused.output
    started = runner.invoke(app, [*args, "--yes", "--max-usd", "1"], env=env)
    assert started.exit_code == 0, started.output
    assert "6 evaluations queued on judges_backfill" in started.output
    # The tasks are on the backfill queue of the broker, not the live one.
    assert redis_client.llen("judges_backfill") == 1 and redis_client.llen("judges") == 0


FleetFactory = Callable[[dict[str, str]], Fleet]


def test_live_judge_work_is_served_ahead_of_a_large_reeval(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, sqlite_url: str,
    server: OpenAIServer, fleet_factory: FleetFactory,
) -> None:  # fmt: skip
    settings = settings_for(server, redis_url, sqlite_url)
    scored_history(store, redis_client, settings, 1000)  # 500 sampled traces to re-judge
    server.fake.latency_s = 0.3
    planned = reeval.plan(store, settings, RELEVANCE, parse_since("1d"))  # type: ignore[arg-type]
    celery = create_app(settings)

    def dispatch(entries: list[dict[str, Any]], run: str | None) -> None:
        celery.send_task("evalfleet.judge_batch", args=[entries], queue=judges_queue(run))

    reeval.start(store, settings, planned, dispatch, cap_usd=None)  # 63 tasks of 8 waiting
    env = fleet_env(
        redis_url, sqlite_url, judge_base_url=server.base_url, judge_api_key="sk-test",
        enabled_judges=["answer_relevance"], judge_sample_rate=1.0, judge_batch_size=4,
    )  # fmt: skip
    fleet = fleet_factory(env)
    fleet.worker(concurrency=2, pool="threads", queues="heuristics,judges,judges_backfill")
    fleet.sampler()
    wait_for(lambda: "ready." in fleet.logs(), 30, "worker ready")
    time.sleep(0.5)  # the re-evaluation is under way
    live = [make_trace(1000 + i, output=f"Answer {1000 + i} [[score=0.9]]") for i in range(12)]
    publish_many(redis_client, live, Settings())
    live_ids = [t.trace_id for t in live]

    def live_scores() -> list[ScoreRecord]:
        with Session(store.engine) as session:
            query = select(ScoreRecord).where(
                ScoreRecord.evaluator == "answer_relevance",
                col(ScoreRecord.trace_id).in_(live_ids),
            )
            return list(session.exec(query))

    wait_for(lambda: len(live_scores()) == 12, 60, lambda: f"live scores\n{fleet.logs()}")
    backfill_left = summary(store)["answer_relevance"].get("queued", 0)
    with Session(store.engine) as session:
        published = {
            t.trace_id: t.published_at
            for t in session.exec(
                select(TraceRecord).where(col(TraceRecord.trace_id).in_(live_ids))
            )
        }
    delays = [(s.created_at - published[s.trace_id]).total_seconds() for s in live_scores()]
    # Live work overtook the queued re-evaluation: it finished while most of the run waited.
    assert backfill_left > 200, backfill_left
    assert statistics.median(delays) < 5, delays


def test_reeval_reads_traces_back_from_langfuse(
    store: SQLStore, redis_client: redis.Redis, redis_url: str, sqlite_url: str,
    server: OpenAIServer,
) -> None:  # fmt: skip
    """Traces the store never held (or no longer holds), read from Langfuse's public API."""
    fake = FakeLangfuse()
    for i in range(1, 6):
        fake.observations += observations(i)
    fake.observations += observations(20, day=10)  # before --since
    fake.start()
    try:
        env = {
            **fake.env(),
            "EVALFLEET_DATABASE_URL": sqlite_url,
            "EVALFLEET_REDIS_URL": redis_url,
            "EVALFLEET_BROKER_URL": redis_url,
            "COLUMNS": "200",
        }
        args = ["reeval", "--evaluator", "answer_relevance", "--from-langfuse"]
        args += ["--since", "2026-11-20T00:00:00+00:00", "--tenant", "acme"]
        result = CliRunner().invoke(app, [*args, "--yes", "--max-usd", "1"], env=env)
    finally:
        fake.stop()
    assert result.exit_code == 0, result.output
    assert "traces: 5 to judge of 5 in the window" in result.output
    assert "its prompt rendered for 5 of the traces" in result.output  # no calls recorded yet
    assert "5 evaluations queued on judges_backfill" in result.output
    assert summary(store)["answer_relevance"] == {"queued": 5}
    with Session(store.engine) as session:
        kept = session.exec(select(TracePayloadRecord.trace_id)).all()
    assert sorted(kept) == [f"{i:032x}" for i in range(1, 6)]  # for the reaper
    assert redis_client.llen("judges_backfill") == 1
