"""Prometheus metrics scraped over HTTP from a real sampler and a prefork worker of 2 children,
and a worker's session series."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import redis
from helpers import Fleet, fleet_env, make_trace, wait_for
from langfuse_server import FakeLangfuse
from prometheus_client.parser import text_string_to_metric_families

from evaluator.celery_app import create_app, session_dispatch
from evaluator.ingest import publish_many
from evaluator.models import Trace
from evaluator.ops.embedded import free_port
from evaluator.sessions.tracker import CompletedSession, session_digest
from evaluator.settings import Settings
from evaluator.sinks.langfuse import LangfuseSettings, LangfuseSink
from evaluator.sinks.outbox import SinkRelay
from evaluator.sinks.sql import SQLStore, payload_row
from evaluator.store.tables import TraceRecord

FleetFactory = Callable[[dict[str, str]], Fleet]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def healthz(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return str(response.read().decode())


def test_metrics_are_summed_across_prefork_children(
    redis_client: redis.Redis, redis_url: str, sqlite_url: str, fleet_factory: FleetFactory
) -> None:
    n = 300
    fleet = fleet_factory(fleet_env(redis_url, sqlite_url, heuristics_batch_size=25))
    worker_port, sampler_port = free_port(), free_port()
    fleet.worker(concurrency=2, metrics_port=worker_port)
    fleet.sampler(metrics_port=sampler_port, claim_interval_s=0.2)
    traces = [
        make_trace(i, output="Mail maria@fjordlab.dk." if i % 10 == 0 else "Rotate it in Settings.")
        for i in range(n)
    ]
    publish_many(redis_client, traces, Settings())
    store = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)
    wait_for(lambda: store.count(TraceRecord) == n, 60, lambda: f"scored\n{fleet.logs()}")
    store.close()

    assert healthz(worker_port) == "ok\n" and healthz(sampler_port) == "ok\n"
    worker = scrape(worker_port)
    assert (
        worker[("evalfleet_evaluations_total", (("evaluator", "pii_leak"), ("status", "ok")))] == n
    )
    assert worker[("evalfleet_review_routed_total", (("evaluator", "pii_leak"),))] == n // 10
    assert worker[("evalfleet_publish_to_score_seconds_count", ())] == n
    leak_scores = (
        ("evaluator", "pii_leak"),
        ("le", "0.0"),
        ("prompt_version", "none"),
        ("score", "pii_leak"),
    )
    assert worker[("evalfleet_score_value_bucket", leak_scores)] == n // 10  # value 0.0 = leaked

    def sampler_caught_up() -> bool:
        # The gauges are refreshed every claim interval (0.2 s here): they settle at "all done".
        sampler = scrape(sampler_port)
        return (
            sampler[("evalfleet_traces_consumed_total", ())] == n
            and sampler[("evalfleet_stream_length", ())] == n
            and sampler[("evalfleet_pending_entries", ())] == 0
            and sampler[("evalfleet_oldest_unscored_age_seconds", ())] == 0
        )

    wait_for(sampler_caught_up, 10, lambda: str(scrape(sampler_port)))
    assert scrape(sampler_port)[("evalfleet_traces_dead_lettered_total", ())] == 0


def test_a_worker_counts_session_scores_in_the_session_series_and_queues_them_for_langfuse(
    redis_url: str, sqlite_url: str, fleet_factory: FleetFactory, langfuse: FakeLangfuse
) -> None:
    """The real worker process: a completed session handed to it (as the sampler's chore does)
    is scored, its scores counted under evalfleet_session_scores_total (not in the trace series)
    and queued for Langfuse in the outbox, which the relay delivers as session scores."""
    asked = ["Where is my order A-7?", "where is my order A-7"]
    turns = [
        Trace(trace_id=f"chat-{n}", input=q, output="Sorry, try later.", session_id="s-9",
              tenant="acme", started_at=datetime(2026, 12, 3, 9, n, tzinfo=UTC))
        for n, q in enumerate(asked)
    ]  # fmt: skip
    store = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)
    rows = [payload_row(t, t.model_dump_json(exclude_none=True), t.started_at) for t in turns]  # type: ignore[arg-type]
    store.write_batch([], [], [], payloads=rows)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    done = CompletedSession(session_digest("acme", "s-9"), "acme", "s-9",
                            tuple(t.trace_id for t in turns), now_ms - 60_000, now_ms - 30_000,
                            False, False, "0")  # fmt: skip
    fleet = fleet_factory({**fleet_env(redis_url, sqlite_url), **langfuse.env()})
    port = free_port()
    fleet.worker(concurrency=1, queues="heuristics", metrics_port=port)
    session_dispatch(create_app(Settings(redis_url=redis_url, database_url=sqlite_url)))(
        [done.wire()]
    )
    try:
        wait_for(lambda: store.outbox_counts().get("langfuse", {}).get("pending", 0) >= 4, 60,
                 lambda: f"session scores queued\n{fleet.logs()}")  # fmt: skip

        def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            return scrape(port)

        wait_for(lambda: ("evalfleet_sessions_evaluated_total", ()) in counted(), 10, "scraped")
        worker = counted()
        assert worker[("evalfleet_sessions_evaluated_total", ())] == 1
        repeats = (("evaluator", "user_repeats"), ("outcome", "failed"))
        assert worker[("evalfleet_session_scores_total", repeats)] == 1
        assert not [k for k in worker if k[0] == "evalfleet_evaluations_total"
                    and ("evaluator", "user_repeats") in k[1]]  # fmt: skip

        with pytest.MonkeyPatch.context() as patch:
            for key, value in langfuse.env().items():
                patch.setenv(key, value)
            relay = SinkRelay(store, [LangfuseSink(LangfuseSettings())], backoff_base_s=0.01)
            wait_for(lambda: relay.drain_once() == 0, 20, "relayed")
            relay.close()
        on_session = langfuse.session_scores("s-9")
        assert "user_repeats" in {s["name"] for s in on_session.values()}
        assert all("traceId" not in s for s in on_session.values())
    finally:
        store.close()
