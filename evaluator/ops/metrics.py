"""Prometheus metrics: definitions, recording helpers, and the /metrics + /healthz endpoint.

Celery prefork children each count in their own files when ``PROMETHEUS_MULTIPROC_DIR`` is set
(``evalfleet worker --metrics-port`` sets it before anything imports prometheus_client; set
later it is silently ignored) and the worker's main process serves the sum of all children.
Labels stay bounded: evaluator, score name, judge, version, model, queue, app prompt version.

Scores count by level: turn and trajectory scores (a trace's) in ``evalfleet_evaluations_total``
and ``evalfleet_score_value``, session scores in ``evalfleet_session_scores_total`` only, so
the existing series and the alert rules over them (deploy/prometheus/alerts.yml: which evaluator
names are heuristics, what a judge error rate is) mean what they meant before sessions existed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from evaluator.models import Level, Score, ScoreStatus

# A session's scores are on "session:<digest>" (models.Level): one whose judge left the default
# level is still a session score, as in every sink.
_SCORE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

TRACES_CONSUMED = Counter("evalfleet_traces_consumed_total", "Stream entries the sampler handled.")
TRACES_DEAD_LETTERED = Counter("evalfleet_traces_dead_lettered_total", "Entries dead-lettered.")
TRACES_SAMPLED = Counter("evalfleet_traces_sampled_for_judges_total", "Traces sent to judges.")
EVALUATIONS = Counter(
    "evalfleet_evaluations_total",
    "Scores written, by evaluator and status.",
    ["evaluator", "status"],
)
SCORE_VALUE = Histogram(
    "evalfleet_score_value",
    "Score values by evaluator, score name and the app's prompt version.",
    ["evaluator", "score", "prompt_version"],
    buckets=_SCORE_BUCKETS,
)
PUBLISH_TO_SCORE = Histogram(
    "evalfleet_publish_to_score_seconds", "From XADD to the score's commit.", buckets=_DELAY_BUCKETS
)
JUDGE_LATENCY = Histogram(
    "evalfleet_judge_latency_seconds", "Judge call latency.", ["judge", "judge_version", "model"]
)
JUDGE_TOKENS = Counter(
    "evalfleet_judge_tokens_total",
    "Judge tokens by direction: input, output, and cached (the part of input read from cache).",
    ["judge", "model", "direction"],
)
JUDGE_COST = Counter("evalfleet_judge_cost_usd_total", "Judge spend in USD.", ["judge", "model"])
REVIEW_ROUTED = Counter(
    "evalfleet_review_routed_total", "Review items added to the stream.", ["evaluator"]
)
REVIEW_LABELLED = Counter(
    "evalfleet_review_labelled_total",
    "Human labels, by evaluator and verdict.",
    ["evaluator", "verdict"],
)
OTLP_REQUESTS = Counter(
    "evalfleet_otlp_requests_total", "OTLP export requests, by outcome.", ["outcome"]
)
OTLP_SPANS = Counter("evalfleet_otlp_spans_total", "Spans received, by outcome.", ["outcome"])
OTLP_TRACES = Counter(
    "evalfleet_otlp_traces_total", "Assembled traces: published, partial, dropped.", ["outcome"]
)
OTLP_LOG_RECORDS = Counter(
    "evalfleet_otlp_log_records_total",
    "Log records received on /v1/logs: GenAI events kept, others ignored, refused.",
    ["outcome"],
)
OTLP_PENDING = Gauge(
    "evalfleet_otlp_pending_traces", "Traces waiting to complete.", multiprocess_mode="mostrecent"
)
SQL_WRITES = Counter(
    "evalfleet_sql_writes_total", "Score batches written to SQL, by outcome.", ["outcome"]
)
SINK_DELIVERIES = Counter(
    "evalfleet_sink_deliveries_total",
    "Outbox rows handled by the relay: delivered, rejected (permanent) or retried, per sink.",
    ["sink", "outcome"],
)
SINK_TRANSIENT_ITEMS = Counter(
    "evalfleet_sink_transient_items_total",
    "Outbox rows a sink answered with a transient per-item error (a 5xx or 429 entry of "
    "Langfuse's 207) while taking the rest of the batch: left pending for a retry, never "
    "rejected. Also counted as retried in evalfleet_sink_deliveries_total.",
    ["sink"],
)
SINK_SKIPPED = Counter(
    "evalfleet_sink_skipped_total", "Scores a sink does not take, by reason.", ["sink", "reason"]
)
SINK_BACKLOG = Gauge(
    "evalfleet_sink_backlog", "Outbox rows undelivered.", ["sink"], multiprocess_mode="mostrecent"
)
SINK_OLDEST_PENDING_AGE = Gauge(
    "evalfleet_sink_oldest_pending_age_seconds",
    "Age of the oldest undelivered outbox row per sink.",
    ["sink"],
    multiprocess_mode="mostrecent",
)
SAMPLER_CONSUMERS_REMOVED = Counter(
    "evalfleet_sampler_consumers_removed_total",
    "Dead consumers removed from the sampler group: nothing pending, idle past "
    "EVALFLEET_SAMPLER_CONSUMER_PRUNE_IDLE_MS, no sampler holding the name.",
)
# Fleet state, set by the sampler (one writer; the newest value wins across processes).
STREAM_LENGTH = Gauge(
    "evalfleet_stream_length", "Entries in evalfleet:traces.", multiprocess_mode="mostrecent"
)
PENDING = Gauge(
    "evalfleet_pending_entries", "Read, not acknowledged.", multiprocess_mode="mostrecent"
)
QUEUE_DEPTH = Gauge(
    "evalfleet_queue_depth", "Tasks waiting per queue.", ["queue"], multiprocess_mode="mostrecent"
)
HEURISTICS_IN_FLIGHT = Gauge(
    "evalfleet_heuristics_in_flight",
    "Heuristics batches dispatched and not finished (stored or dead-lettered) yet.",
    multiprocess_mode="mostrecent",
)
HEURISTICS_REDISPATCHED = Counter(
    "evalfleet_heuristics_redispatched_total",
    "Heuristics batches dispatched again because they did not finish in time (lost by the "
    "broker, or very slow).",
)
TASKS_UNACKED = Gauge(
    "evalfleet_tasks_unacked",
    "Tasks taken by a worker and not acknowledged (running, or held by a killed worker).",
    ["role"],
    multiprocess_mode="mostrecent",
)
OLDEST_UNSCORED_AGE = Gauge(
    "evalfleet_oldest_unscored_age_seconds",
    "Age of the oldest stream entry not yet handed to the workers.",
    multiprocess_mode="mostrecent",
)

# Sampling strata, budget and the evaluation ledger.
STRATUM_TRACES = Counter(
    "evalfleet_stratum_traces_total", "Traces by stratum and judged.", ["stratum", "judged"]
)
STRATUM_RATE = Gauge(
    "evalfleet_stratum_rate",
    "Sampling rate per stratum after the budget.",
    ["stratum"],
    multiprocess_mode="mostrecent",
)
JUDGE_BUDGET_FACTOR = Gauge(
    "evalfleet_judge_budget_factor",
    "Per-judge thinning factor from its budget (1 = not thinned).",
    ["judge"],
    multiprocess_mode="mostrecent",
)
PROJECTED_SPEND = Gauge(
    "evalfleet_judge_projected_spend_usd",
    "Judge spend projected for today (UTC) under the current rates.",
    multiprocess_mode="mostrecent",
)
LEDGER_TRANSITIONS = Counter(
    "evalfleet_ledger_transitions_total",
    "Evaluation ledger writes by evaluator and state.",
    ["evaluator", "state"],
)
LEDGER_REAPED = Counter(
    "evalfleet_ledger_reaped_total",
    "Stuck ledger rows the reaper re-dispatched or failed.",
    ["evaluator", "action"],
)
JUDGE_DEFERRED = Counter(
    "evalfleet_judge_deferred_total",
    "Judge evaluations re-queued to wait (breaker open, rate limited, attempts used up...).",
    ["judge", "reason"],
)
OVER_BUDGET = Counter(
    "evalfleet_judge_over_budget_total",
    "Judge evaluations not run because a spend cap was reached (ledger: over_budget).",
    ["judge"],
)
ESTIMATED_SCORE = Gauge(
    "evalfleet_estimated_score",
    "Population estimate (inverse-probability weighted) of a score's mean or pass rate over "
    "the last hour, with its 95% interval.",
    ["evaluator", "score", "statistic", "bound"],
    multiprocess_mode="mostrecent",
)


def session_outcome(score: Score) -> str:
    """passed / failed (the check said no) / error (the evaluator could not score the session) /
    scored (a value without a verdict)."""
    if score.status is ScoreStatus.ERROR:
        return "error"
    if score.passed is None:
        return "scored"
    return "passed" if score.passed else "failed"


def record_scores(scores: Iterable[Score], prompt_versions: dict[str, str | None]) -> None:
    """Count written scores: a session score in the session series, any other in the trace
    series (see the module docstring)."""
    for score in scores:
        if score.level is Level.SESSION:
            SESSION_SCORES.labels(score.evaluator, session_outcome(score)).inc()
            continue
        EVALUATIONS.labels(score.evaluator, score.status.value).inc()
        if score.status is ScoreStatus.OK and score.value is not None:
            version = prompt_versions.get(score.trace_id) or "none"
            SCORE_VALUE.labels(score.evaluator, score.name, version).observe(score.value)


def record_judge_calls(calls: Iterable[dict[str, Any]]) -> None:
    for call in calls:
        judge, model = call["judge"], call["model"]
        JUDGE_LATENCY.labels(judge, call["judge_version"], model).observe(call["latency_ms"] / 1000)
        JUDGE_TOKENS.labels(judge, model, "input").inc(call["input_tokens"])
        JUDGE_TOKENS.labels(judge, model, "output").inc(call["output_tokens"])
        if call.get("cached_tokens"):  # of the input: read from the provider's prompt cache
            JUDGE_TOKENS.labels(judge, model, "cached").inc(call["cached_tokens"])
        if call["cost_usd"]:
            JUDGE_COST.labels(judge, model).inc(call["cost_usd"])


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        if self.path.startswith("/healthz"):
            body, content_type, status = b"ok\n", "text/plain", 200
        elif self.path.startswith("/metrics"):
            body, content_type, status = generate_latest(_registry()), CONTENT_TYPE_LATEST, 200
        else:
            body, content_type, status = b"not found\n", "text/plain", 404
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve_metrics(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve /metrics and /healthz from a daemon thread of this process."""
    server = ThreadingHTTPServer((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def process_exited(pid: int) -> None:
    """Drop a dead prefork child's live gauges (its counters keep counting in the sum)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        prometheus_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


# Sessions (issue 15)
SESSIONS_OBSERVED = Counter(
    "evalfleet_session_turns_total", "Turns of sessions the sampler recorded (redeliveries too)."
)
SESSIONS_COMPLETED = Counter(
    "evalfleet_sessions_completed_total", "Sessions found complete (quiet or at their maximum age)."
)
SESSIONS_EVALUATED = Counter(
    "evalfleet_sessions_evaluated_total", "Completed sessions evaluated by a worker."
)
SESSION_SCORES = Counter(
    "evalfleet_session_scores_total",
    "Session-level scores written (session heuristics and session judges), by evaluator and "
    "outcome: passed, failed (the check failed: the session's failures), error (the evaluator "
    "could not score the session), scored (a value without a verdict). Redelivered batches "
    "count again, as for evalfleet_evaluations_total.",
    ["evaluator", "outcome"],
)
SESSIONS_OPEN = Gauge(
    "evalfleet_sessions_open",
    "Sessions waiting for their quiet period to end.",
    multiprocess_mode="mostrecent",
)
