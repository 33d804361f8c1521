"""Prometheus metrics scraped over HTTP from a real sampler and a prefork worker of 2 children."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import redis
from helpers import Fleet, fleet_env, make_trace, wait_for
from prometheus_client.parser import text_string_to_metric_families

from evaluator.ingest import publish_many
from evaluator.ops.embedded import free_port
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
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
