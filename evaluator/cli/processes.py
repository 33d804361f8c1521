"""The fleet's long-running processes (sampler, worker, relay, receivers, review servers) and
the demo that runs them all on an embedded Redis."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from evaluator.cli.app import app
from evaluator.cli.common import (
    HOST_HELP,
    MetricsPort,
    configure_logging,
    console,
    default_host,
    existing_file,
    multiprocess_metrics_dir,
    open_store,
    start_when_available,
    with_metrics_port,
)
from evaluator.models import Level
from evaluator.settings import get_settings
from evaluator.streams import connect


@app.command()
def sampler(
    consumer: Annotated[
        str | None,
        typer.Option(
            help="Consumer name in the group, held by this sampler alone (a Redis lease): "
            "EVALFLEET_SAMPLER_CONSUMER, else <hostname>-<slot>, the first slot no live "
            "sampler holds. Stable, so a restart re-reads its own pending entries at once."
        ),
    ] = None,
    exit_when_idle: Annotated[bool, typer.Option(help="Stop once the stream is drained.")] = False,
    loglevel: str = "INFO",
    metrics_port: MetricsPort = None,
) -> None:
    """Consume evalfleet:traces, validate, decide sampling, dispatch to the workers."""
    from evaluator.celery_app import create_app
    from evaluator.fleet import build_sampler
    from evaluator.ops.health import REDIS

    loop, stop = start_when_available(
        "sampler",
        REDIS,
        lambda settings: build_sampler(settings, create_app(settings), consumer),
        loglevel,
        metrics_port,
    )
    if loop is None:
        return
    logging.getLogger("evaluator.sampling.sampler").info("sampler %s started", loop.consumer)
    counts = loop.run(stop, exit_when_idle=exit_when_idle)
    logging.getLogger("evaluator.sampling.sampler").info("sampler stopped: %s", counts)


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues (live judge work before backfill).")
    ] = "heuristics,judges,judges_backfill",
    loglevel: str = "INFO",
    pool: str = "prefork",
    metrics_port: MetricsPort = None,
) -> None:
    """Run a Celery worker for the evaluation queues."""
    settings = get_settings()
    if settings.log_format == "json":  # text: celery's own format, set up by celery as before
        configure_logging(loglevel, "worker")  # celery's setup_logging keeps it (evaluator.worker)
    port = metrics_port or settings.metrics_port
    if port:
        multiprocess_metrics_dir(settings.metrics_dir)
        # Until celery installs its own handler: SIGTERM exits through atexit, which removes
        # the metrics directory.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    from evaluator.broker import run_worker
    from evaluator.celery_app import serve_queues
    from evaluator.ops.health import serve
    from evaluator.worker import create_worker_app

    celery_app = create_worker_app(settings)
    serve_queues(celery_app, queues.split(","), settings)
    if port:
        serve(port)  # the main process serves the sum of all prefork children, and /readyz
    code = run_worker(
        celery_app,
        [
            "worker",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            f"--queues={queues}",
            f"--loglevel={loglevel}",
            f"--pool={pool}",
            "--without-gossip",
            "--without-mingle",
        ],
    )
    if code:  # e.g. celery's "Unrecoverable error": a supervisor must see a failure
        raise typer.Exit(code)


@app.command()
def relay(
    exit_when_idle: Annotated[bool, typer.Option(help="Stop once nothing is due.")] = False,
    loglevel: str = "INFO",
    metrics_port: MetricsPort = None,
) -> None:
    """Deliver scores from the SQL outbox to the enabled sinks (Langfuse, OpenTelemetry)."""
    from evaluator.ops.health import DATABASE
    from evaluator.sinks.outbox import SinkRelay

    relay_loop, stop = start_when_available(
        "relay", DATABASE, SinkRelay.from_settings, loglevel, metrics_port
    )
    if relay_loop is None:
        return
    log = logging.getLogger("evaluator.relay")
    if not relay_loop.sinks:
        # Idle rather than exit: a Procfile runner stops the whole fleet when one process exits.
        log.warning("no sinks enabled (set LANGFUSE_* keys or EVALFLEET_OTEL_SINK); idling")
    log.info("relay started for sinks: %s", ", ".join(relay_loop.sinks) or "none")
    try:
        counts = relay_loop.run(stop, exit_when_idle=exit_when_idle)
    finally:
        relay_loop.close()
    log.info("relay stopped: %s", counts)


# Files a container runtime leaves in its containers (Docker, Podman); Kubernetes sets
# KUBERNETES_SERVICE_HOST in every container of a pod.


@app.command("otlp-receiver")
def otlp_receiver(
    host: Annotated[str | None, typer.Option(help=HOST_HELP, show_default=False)] = None,
    port: int = 4318,
    loglevel: str = "info",
    flushers: Annotated[
        int, typer.Option(min=0, help="Processes publishing completed traces (0: a thread).")
    ] = 1,
    metrics_port: MetricsPort = None,
) -> None:
    """Receive OTLP/HTTP trace exports (POST /v1/traces) and publish completed GenAI traces."""
    import multiprocessing

    import uvicorn

    from evaluator.ingest.assembly import run_flusher_process
    from evaluator.ingest.receiver import create_receiver_app
    from evaluator.ops.logs import call_configured

    settings = with_metrics_port(get_settings(), metrics_port)
    configure_logging(loglevel, "otlp-receiver")  # uvicorn's records too: log_config=None below
    # Publishing is CPU-bound Python; in their own processes the flushers leave the HTTP side
    # alone (bench/otlp_ingest.py: 15,026 -> 24,744 spans/s accepted with one). Spawned, they
    # do not inherit the logging set-up: call_configured does it again.
    context = multiprocessing.get_context("spawn")
    flusher_logs = (loglevel, settings.log_format, "otlp-flusher")
    children = [
        context.Process(
            target=call_configured,
            args=(*flusher_logs, run_flusher_process, settings, i),
            daemon=True,
        )
        for i in range(flushers)
    ]
    for child in children:
        child.start()
    app_ = create_receiver_app(connect(settings.redis_url), settings, flush=flushers == 0)
    try:
        uvicorn.run(
            app_, host=host or default_host(), port=port, log_level=loglevel, log_config=None
        )
    finally:
        for child in children:
            child.terminate()
            child.join(10)


@app.command()
def review(
    reviewer: Annotated[str, typer.Option(help="Your name, recorded with every label.")],
    evaluator: Annotated[str | None, typer.Option(help="Only this evaluator's items.")] = None,
    tenant: Annotated[list[str] | None, typer.Option(help="Only these tenants; repeat.")] = None,
    level: Annotated[
        Level | None,
        typer.Option(help="Only turns, agent runs or whole sessions.", case_sensitive=False),
    ] = None,
) -> None:
    """Label review items in the terminal: one keystroke per decision."""
    from evaluator.review.queue import QueueFilter, ReviewQueue
    from evaluator.review.terminal import TerminalReview

    settings = get_settings()
    with open_store() as store:
        queue = ReviewQueue(connect(settings.redis_url), store, settings.review_lease_s)
        scope = QueueFilter(frozenset(tenant) if tenant else None, evaluator, level)
        counts = TerminalReview(queue, reviewer, scope, console).run()
    console.print(f"{counts['pass']} pass, {counts['fail']} fail, {counts['skipped']} skipped")


@app.command("review-api")
def review_api(
    host: Annotated[str | None, typer.Option(help=HOST_HELP, show_default=False)] = None,
    port: int = 8080,
    loglevel: str = "info",
    metrics_port: MetricsPort = None,
) -> None:
    """Serve the review API (OpenAPI at /docs) and the reviewers' web page (/review)."""
    import uvicorn

    from evaluator.review.api import review_app

    settings = with_metrics_port(get_settings(), metrics_port)
    configure_logging(loglevel, "review-api")  # uvicorn's records too: log_config=None below
    if not settings.reviewer_tokens:
        logging.getLogger("evaluator.review").warning(
            "no EVALFLEET_REVIEWER_TOKENS: every request gets 401"
        )
    uvicorn.run(
        review_app(settings),
        host=host or default_host(),
        port=port,
        log_level=loglevel,
        log_config=None,
    )


@app.command()
def demo(
    traces: Annotated[
        Path | None, typer.Option(callback=existing_file, help="JSONL of traces to replay.")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Celery worker processes.")] = 2,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for scoring.")] = 300.0,
) -> None:
    """Run the whole fleet locally (embedded Redis + SQLite) on the sample traces."""
    from evaluator.console.demo import default_sample_file, run_demo
    from evaluator.console.report import (
        render_dead_letters,
        render_levels,
        render_review_queue,
        render_stats,
    )
    from evaluator.ops.embedded import find_redis_server

    if find_redis_server() is None:
        from evaluator.ops.embedded import INSTALL_HINT

        console.print(f"[red]error:[/red] {INSTALL_HINT}")
        raise typer.Exit(1)
    result = run_demo(traces or default_sample_file(), console, concurrency, timeout)
    render_stats(result.stats, console)
    render_levels(result.levels, console)
    render_dead_letters(result.dead_letters, console)
    render_review_queue(result.review_queue, console)
    if not result.judges_on:
        console.print(
            f"LLM judges: off — no endpoint configured; {result.stats.judge_sampled} traces were "
            "sampled for them. Set EVALFLEET_JUDGE_BASE_URL (any OpenAI-compatible server) and "
            "EVALFLEET_JUDGE_API_KEY to run them."
        )
    console.print(
        f"[bold green]{result.published:,} traces published[/bold green] and processed in "
        f"{result.seconds:.1f}s ({result.traces_per_second:,.0f} traces/s, with fleet start-up)"
    )
