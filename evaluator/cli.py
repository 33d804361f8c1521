"""The `evalfleet` command. Each command parses options and calls a function that does the work."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from typer.core import TyperGroup

from evaluator.errors import (
    EXIT_USAGE,
    CLIError,
    check_database_url,
    debug_enabled,
    describe,
    enable_debug,
    require_file,
)
from evaluator.judges import JudgeSpec
from evaluator.settings import Settings, get_settings, unknown_variables
from evaluator.streams import connect

if TYPE_CHECKING:
    from evaluator.sinks.sql import SQLStore


_WITHOUT_SETTINGS = {"schema"}  # commands that work whatever the environment holds


class _Commands(TyperGroup):
    """The root command: a known failure of any command (a setting that does not parse, Redis or
    the database out of reach, a missing file) ends as one line on stderr and its exit code
    (evaluator/errors.py); anything else, or any failure with --debug, keeps its traceback."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        if name not in _WITHOUT_SETTINGS and "--help" not in rest and not ctx.resilient_parsing:
            get_settings()  # a setting that does not parse: say so before any work
        return name, command, rest

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            failure = describe(exc)
            if failure is None or debug_enabled() or ctx.params.get("debug"):
                raise
            typer.echo(failure.message, err=True)
            raise typer.Exit(failure.code) from None


app = typer.Typer(
    cls=_Commands,
    help="Evalfleet: evaluate LLM traces from Redis Streams.\n\nExit codes: 0 success, 1 a "
    "runtime failure or an unavailable dependency (Redis, the database), 2 a usage or "
    "configuration error.",
    no_args_is_help=True,
)
dlq_app = typer.Typer(help="Inspect and redrive dead-lettered traces.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
backfill_app = typer.Typer(help="Publish historical traces for evaluation.", no_args_is_help=True)
app.add_typer(backfill_app, name="backfill")
dataset_app = typer.Typer(help="Golden datasets: export and import labels.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
judges_app = typer.Typer(
    help="Judge files: list, show, render, validate, lock.", no_args_is_help=True
)
app.add_typer(judges_app, name="judges")
ledger_app = typer.Typer(
    help="The evaluation ledger: where each (trace, evaluator, version) stands. "
    "`evalfleet ledger --trace ID` shows one trace.",
)
app.add_typer(ledger_app, name="ledger")
console = Console()


@app.callback()
def _root(
    debug: Annotated[
        bool,
        typer.Option("--debug", help="On an error, the full traceback (also: EVALFLEET_DEBUG=1)."),
    ] = False,
) -> None:
    if debug:
        enable_debug()


def _existing_file(ctx: typer.Context, path: Path | None) -> Path | None:
    """Typer callback of file arguments: one line naming a file that is not there."""
    return path if path is None or ctx.resilient_parsing else require_file(path)


def _open_store(must_exist: bool = True) -> SQLStore:
    """The configured store. Commands that read what the fleet stored refuse a SQLite file that
    does not exist rather than create an empty one (SQLStore creates the tables of a new
    database; evalfleet.db in whatever directory the command ran in)."""
    from evaluator.sinks.sql import SQLStore

    url = get_settings().sqlalchemy_url
    check_database_url(url, must_exist)
    return SQLStore(url)


def _logging(level: str, process: str | None = None) -> None:
    """Text or JSON lines (EVALFLEET_LOG_FORMAT); records name the process (the command)."""
    import click

    from evaluator import logs

    if process is None and (context := click.get_current_context(silent=True)) is not None:
        process = context.info_name
    logs.configure(level, get_settings().log_format, process=process)


def _long_running(loglevel: str, metrics_port: int | None) -> tuple[Settings, threading.Event]:
    """Logging, /metrics, /healthz and /readyz when a port is given, and an event set by
    SIGTERM/SIGINT."""
    from evaluator.health import serve

    _logging(loglevel)
    settings = get_settings()
    if port := metrics_port or settings.metrics_port:
        serve(port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return settings, stop


@app.command()
def sampler(
    consumer: Annotated[str | None, typer.Option(help="Consumer name (default host-pid).")] = None,
    exit_when_idle: Annotated[bool, typer.Option(help="Stop once the stream is drained.")] = False,
    loglevel: str = "INFO",
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /metrics, /healthz and /readyz.")
    ] = None,
) -> None:
    """Consume evalfleet:traces, validate, decide sampling, dispatch to the workers."""
    from evaluator.celery_app import create_app
    from evaluator.fleet import build_sampler
    from evaluator.health import PROCESS, REDIS, Backoff, until_available

    settings, stop = _long_running(loglevel, metrics_port)
    PROCESS.process = "sampler"
    PROCESS.expect(REDIS)
    # Started during an outage: wait for Redis and the database rather than exit.
    loop = until_available(
        lambda: build_sampler(settings, create_app(settings), consumer),
        stop,
        PROCESS,
        Backoff(max_s=settings.outage_backoff_max_s),
    )
    if loop is None:
        return
    logging.getLogger("evaluator.sampler").info("sampler %s started", loop.consumer)
    counts = loop.run(stop, exit_when_idle=exit_when_idle)
    logging.getLogger("evaluator.sampler").info("sampler stopped: %s", counts)


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues (live judge work before backfill).")
    ] = "heuristics,judges,judges_backfill",
    loglevel: str = "INFO",
    pool: str = "prefork",
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /metrics, /healthz and /readyz.")
    ] = None,
) -> None:
    """Run a Celery worker for the evaluation queues."""
    settings = get_settings()
    if settings.log_format == "json":  # text: celery's own format, set up by celery as before
        _logging(loglevel, "worker")  # celery's setup_logging keeps it (evaluator.worker)
    port = metrics_port or settings.metrics_port
    if port:
        _multiprocess_metrics_dir(settings.metrics_dir)
        # Until celery installs its own handler: SIGTERM exits through atexit, which removes
        # the metrics directory.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    from evaluator.broker import run_worker
    from evaluator.celery_app import serve_queues
    from evaluator.health import serve
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
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /metrics, /healthz and /readyz.")
    ] = None,
) -> None:
    """Deliver scores from the SQL outbox to the enabled sinks (Langfuse, OpenTelemetry)."""
    from evaluator.health import DATABASE, PROCESS, Backoff, until_available
    from evaluator.sinks.outbox import SinkRelay

    settings, stop = _long_running(loglevel, metrics_port)
    PROCESS.process = "relay"
    PROCESS.expect(DATABASE)
    # Started during a database outage: wait for it rather than exit.
    relay_loop = until_available(
        lambda: SinkRelay.from_settings(settings),
        stop,
        PROCESS,
        Backoff(max_s=settings.outage_backoff_max_s),
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
_CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")
_HOST_HELP = (
    "Address to listen on. Default: 127.0.0.1 (this machine only), so a server started on a "
    "laptop or a shared host is not open to the network; inside a container (Docker, Podman, "
    "Kubernetes) 0.0.0.0, all interfaces, since only the published port reaches it. "
    "--host 0.0.0.0 listens on all interfaces anywhere."
)


def _default_host() -> str:
    """127.0.0.1 outside containers, 0.0.0.0 inside one (see _HOST_HELP)."""
    in_container = "KUBERNETES_SERVICE_HOST" in os.environ or any(
        Path(marker).exists() for marker in _CONTAINER_MARKERS
    )
    return "0.0.0.0" if in_container else "127.0.0.1"


@app.command("otlp-receiver")
def otlp_receiver(
    host: Annotated[str | None, typer.Option(help=_HOST_HELP, show_default=False)] = None,
    port: int = 4318,
    loglevel: str = "info",
    flushers: Annotated[
        int, typer.Option(min=0, help="Processes publishing completed traces (0: a thread).")
    ] = 1,
) -> None:
    """Receive OTLP/HTTP trace exports (POST /v1/traces) and publish completed GenAI traces."""
    import multiprocessing

    import uvicorn

    from evaluator.ingest.assembly import run_flusher_process
    from evaluator.ingest.receiver import create_receiver_app
    from evaluator.logs import call_configured

    settings = get_settings()
    _logging(loglevel, "otlp-receiver")  # uvicorn's records too: log_config=None below
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
            app_, host=host or _default_host(), port=port, log_level=loglevel, log_config=None
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
) -> None:
    """Label review items in the terminal: one keystroke per decision."""
    from evaluator.review.queue import QueueFilter, ReviewQueue
    from evaluator.review.terminal import TerminalReview

    settings = get_settings()
    store = _open_store()
    queue = ReviewQueue(connect(settings.redis_url), store, settings.review_lease_s)
    scope = QueueFilter(frozenset(tenant) if tenant else None, evaluator)
    counts = TerminalReview(queue, reviewer, scope, console).run()
    store.close()
    console.print(f"{counts['pass']} pass, {counts['fail']} fail, {counts['skipped']} skipped")


@app.command("review-api")
def review_api(
    host: Annotated[str | None, typer.Option(help=_HOST_HELP, show_default=False)] = None,
    port: int = 8080,
    loglevel: str = "info",
) -> None:
    """Serve the review API (OpenAPI at /docs) and the reviewers' web page (/review)."""
    import uvicorn

    from evaluator.review.api import review_app

    settings = get_settings()
    _logging(loglevel, "review-api")  # uvicorn's records too: log_config=None below
    if not settings.reviewer_tokens:
        logging.getLogger("evaluator.review").warning(
            "no EVALFLEET_REVIEWER_TOKENS: every request gets 401"
        )
    uvicorn.run(
        review_app(settings),
        host=host or _default_host(),
        port=port,
        log_level=loglevel,
        log_config=None,
    )


@dataset_app.command("export")
def dataset_export(
    judge: Annotated[str, typer.Option(help="The judge whose labels to export.")],
    out: Annotated[Path | None, typer.Option(help="Default datasets/golden/<judge>.jsonl.")] = None,
) -> None:
    """Merge the labels in SQL into the judge's golden dataset (deduplicated by trace)."""
    from evaluator.golden import export, golden_path
    from evaluator.ledger import inclusion_probabilities

    store = _open_store()
    path = out or golden_path(judge)
    labels = store.labels(judge)
    inclusion = inclusion_probabilities(store, judge, [label.trace_id for label in labels])
    total, merged = export(labels, path, inclusion)
    store.close()
    console.print(f"{path}: {total} examples ({merged} labels from the store merged)")


@dataset_app.command("import")
def dataset_import(
    file: Annotated[Path, typer.Argument(callback=_existing_file, help="JSONL or CSV.")],
    judge: Annotated[str, typer.Option(help="The judge these labels answer.")],
) -> None:
    """Load labels made elsewhere (golden JSONL, or CSV) into the store; then export."""
    from evaluator.golden import DatasetError, read_any

    try:
        examples = read_any(file)
    except DatasetError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    store = _open_store(must_exist=False)  # labels made elsewhere may come before the fleet
    store.add_labels([e.to_label(judge, f"import:{file.name}") for e in examples], replace=True)
    store.close()
    console.print(
        f"imported {len(examples)} labels for {judge}; `evalfleet dataset export "
        f"--judge {judge}` writes them to the golden set"
    )


def _judge_spec(name: str) -> JudgeSpec:
    from evaluator.judges import JudgeFileError, judges_dir, load_judge

    path = judges_dir(get_settings()) / f"{name}.yaml"
    if not path.exists():
        console.print(f"[red]error:[/red] no judge file {path}")
        raise typer.Exit(2)
    try:
        return load_judge(path)
    except JudgeFileError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _require_judge_endpoint() -> None:
    if not get_settings().judge_endpoint_configured:
        console.print(
            "[red]error:[/red] no judge endpoint: set EVALFLEET_JUDGE_BASE_URL (any "
            "OpenAI-compatible server) and EVALFLEET_JUDGE_API_KEY"
        )
        raise typer.Exit(2)


@app.command()
def calibrate(
    judge: Annotated[str, typer.Option(help="The judge to calibrate.")],
    dataset: Annotated[
        Path | None,
        typer.Option(callback=_existing_file, help="Default datasets/golden/<judge>.jsonl."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="JSON report; default calibration-<judge>.json.")
    ] = None,
) -> None:
    """Run a judge over its golden set and report agreement with the human labels.

    Exits 1 when agreement is under the judge file's calibration thresholds."""
    from evaluator.calibrate import calibrate as run_calibration
    from evaluator.embedded import redis_or_embedded
    from evaluator.golden import (
        DatasetError,
        default_golden_dir,
        golden_path,
        read_examples,
        record_disagreements,
    )
    from evaluator.report import render_calibration

    settings = get_settings()
    spec = _judge_spec(judge)
    _require_judge_endpoint()
    path = dataset or golden_path(judge, settings.golden_dir or default_golden_dir())
    try:
        examples = read_examples(path)
    except DatasetError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if not examples:
        console.print(f"[red]error:[/red] no examples in {path}")
        raise typer.Exit(2)
    with redis_or_embedded(settings.redis_url) as redis_url, Progress(console=console) as progress:
        task = progress.add_task(f"judging {len(examples)} examples", total=len(examples))
        result = run_calibration(
            spec,
            examples,
            settings.model_copy(update={"redis_url": redis_url}),
            lambda: progress.advance(task),
        )
    render_calibration(result, console)
    if dataset is None:  # the judge's own golden set: judges with few_shot use these first
        ids = [d.trace_id for d in result.disagreements]
        record_disagreements(judge, spec.version, ids, path.parent)
    out = report or Path(f"calibration-{judge}.json")
    out.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    console.print(f"report: {out}")
    if not result.passed:
        raise typer.Exit(1)


@app.command()
def gate(
    base: Annotated[str, typer.Option(help="Git revision to compare with (e.g. origin/main).")],
    tolerance: Annotated[float, typer.Option(help="Allowed drop in kappa and agreement.")] = 0.05,
    golden_dir: Annotated[Path | None, typer.Option(help="Default: datasets/golden")] = None,
) -> None:
    """Fail when a judge changed since BASE agrees less with humans than its old version."""
    from evaluator.calibrate import GateError
    from evaluator.calibrate import gate as run_gate
    from evaluator.embedded import redis_or_embedded
    from evaluator.golden import default_golden_dir
    from evaluator.judges import judges_dir
    from evaluator.report import render_gate

    _require_judge_endpoint()
    settings = get_settings()
    try:
        with (
            redis_or_embedded(settings.redis_url) as redis_url,
            Progress(console=console) as progress,
        ):
            task = progress.add_task("judging golden sets", total=None)
            results = run_gate(
                base,
                settings.model_copy(update={"redis_url": redis_url}),
                judges_dir(settings),
                golden_dir or settings.golden_dir or default_golden_dir(),
                tolerance,
                lambda: progress.advance(task),
            )
    except GateError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if not results:
        console.print(f"no judge file changed since {base}")
        return
    if render_gate(results, console):
        raise typer.Exit(1)


def _time_option(value: str | None, option: str) -> datetime | None:
    from evaluator.timeparse import parse_since

    try:
        return parse_since(value) if value else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


@backfill_app.command("langfuse")
def backfill_langfuse(
    since: Annotated[str, typer.Option(help="Start: a duration back (7d, 24h) or an ISO time.")],
    until: Annotated[str | None, typer.Option(help="End (exclusive); default now.")] = None,
    name: Annotated[str | None, typer.Option(help="Only traces with this name.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="Only traces with this tag (repeat).")
    ] = None,
    user: Annotated[str | None, typer.Option(help="Only traces of this user id.")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after about this many traces.")] = None,
    page_size: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    restart: Annotated[bool, typer.Option(help="Ignore the saved position; start over.")] = False,
) -> None:
    """Read traces from Langfuse's public API and publish them to evalfleet:traces.

    Resumable: the position is saved after every page, so running the same command again
    continues where it stopped (use --restart to begin again)."""
    import httpx

    from evaluator.ingest.langfuse import BackfillQuery, BackfillResult, LangfuseBackfill
    from evaluator.sinks.langfuse import LangfuseSettings, langfuse_api

    langfuse = LangfuseSettings()
    if not langfuse.enabled:
        console.print(
            "[red]error:[/red] set LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY, LANGFUSE_HOST"
        )
        raise typer.Exit(2)
    start = _time_option(since, "--since")
    assert start is not None
    query = BackfillQuery(start, _time_option(until, "--until"), name, tuple(tag or ()), user)
    settings = get_settings()
    with httpx.Client(timeout=langfuse.timeout) as http, Progress(console=console) as progress:
        task = progress.add_task("published from Langfuse", total=None)

        def on_page(result: BackfillResult) -> None:
            progress.update(task, completed=result.published)

        backfill = LangfuseBackfill(
            langfuse_api(langfuse, http), connect(settings.redis_url), settings, page_size
        )
        result = backfill.run(query, restart=restart, limit=limit, on_page=on_page)
    if result.finished and result.pages == 0 and result.resumed:
        console.print("this backfill already finished; --restart runs it again")
    for reason in result.skip_reasons[:10]:
        console.print(f"[yellow]skipped[/yellow] {reason}")
    state = "finished" if result.finished else "stopped (run again to continue)"
    console.print(
        f"{result.published:,} traces published in total, {result.skipped} skipped, "
        f"{result.pages} pages this run; {state}"
    )


def _multiprocess_metrics_dir(configured: Path | None) -> None:
    """Point prometheus-client at a fresh directory before anything imports it (set later, it is
    silently ignored); stale files from an earlier run would be summed in.

    A configured directory (EVALFLEET_METRICS_DIR) is kept: only its *.db files are removed,
    as prometheus-client advises. Otherwise the worker makes /tmp/evalfleet-metrics-<pid> and
    removes it on exit (SIGTERM included: celery's warm shutdown returns, then atexit runs),
    and removes those of earlier workers no longer alive (kill -9 leaves them behind)."""
    import atexit
    import shutil
    import tempfile

    if configured is not None:
        configured.mkdir(parents=True, exist_ok=True)
        for stale in configured.glob("*.db"):
            stale.unlink(missing_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(configured)
        return
    owner = os.getpid()
    temp = Path(tempfile.gettempdir())
    for left in temp.glob("evalfleet-metrics-*"):
        pid = left.name.removeprefix("evalfleet-metrics-")
        if not pid.isdigit() or int(pid) == owner:
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its worker is gone
            shutil.rmtree(left, ignore_errors=True)
        except OSError:  # alive, another user's
            continue
    directory = temp / f"evalfleet-metrics-{owner}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)

    def remove() -> None:
        if os.getpid() == owner:  # not in a forked child that runs atexit handlers
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(remove)


class ReplayFormat(StrEnum):
    jsonl = "jsonl"
    otel = "otel"


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(callback=_existing_file)],
    format: Annotated[
        ReplayFormat, typer.Option(help="jsonl (Trace per line) or otel (OTLP/JSON).")
    ] = ReplayFormat.jsonl,
    validate: Annotated[
        bool, typer.Option(help="Refuse the file if any line is invalid (the sampler's rules).")
    ] = False,
) -> None:
    """Publish a file of traces to evalfleet:traces; the sampler dead-letters invalid lines.
    A line over EVALFLEET_MAX_TRACE_BYTES refuses the whole file."""
    from evaluator.ingest import publish_many, read_lines, read_otlp, read_traces

    settings = get_settings()
    client = connect(settings.redis_url)
    try:
        if format is ReplayFormat.otel:
            items: list[object] = list(read_otlp(file))
        elif validate:
            items = list(read_traces(file, settings.max_trace_bytes))
        else:
            items = list(read_lines(file, settings.max_trace_bytes))
    except ValueError as exc:  # a line the sampler would refuse, bytes that are not UTF-8
        raise CLIError(f"error: {exc}", EXIT_USAGE) from exc
    client.ping()  # Redis out of reach: say so before a progress bar starts
    with Progress(console=console) as progress:
        task = progress.add_task(f"publishing {file.name}", total=len(items))
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            publish_many(client, chunk, settings)  # type: ignore[arg-type]
            progress.advance(task, len(chunk))
    console.print(f"published {len(items):,} traces")


@app.command()
def reeval(
    evaluator: Annotated[str, typer.Option(help="NAME@VERSION (or NAME: its current version).")],
    since: Annotated[str, typer.Option(help="Traces published since: 7d, 12h, or an ISO time.")],
    until: Annotated[str | None, typer.Option(help="...and before this.")] = None,
    prompt_version: Annotated[str | None, typer.Option(help="Only this prompt version.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many traces.")] = None,
    all_traces: Annotated[
        bool,
        typer.Option(help="Every stored trace, not only those the sampler chose for judges."),
    ] = False,
    max_usd: Annotated[
        float | None, typer.Option(min=0, help="This run's spend cap (default: 1.5 x estimate).")
    ] = None,
    from_langfuse: Annotated[
        bool,
        typer.Option(help="Read the traces back from Langfuse (LANGFUSE_*) instead of the store."),
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the preview only.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Re-run a judge version over stored traces, priced first; runs after live judge work."""
    from evaluator import reeval as re_evaluation
    from evaluator.celery_app import create_app, judge_dispatch
    from evaluator.judges import judge_registry
    from evaluator.timeparse import parse_since

    settings = get_settings()
    store = _open_store()
    start, end = parse_since(since), parse_since(until) if until else None
    try:
        spec = re_evaluation.parse_target(evaluator, judge_registry(settings))
        with contextlib.ExitStack() as resources:
            candidates = (
                _langfuse_candidates(resources, settings, start, end, prompt_version, tenant)
                if from_langfuse
                else None
            )
            planned = re_evaluation.plan(
                store, settings, spec, start, end, prompt_version, tenant, limit, all_traces,
                candidates,
            )  # fmt: skip
    except ValueError as exc:
        store.close()
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    render_reeval_plan(planned)
    if dry_run or planned.count == 0:
        store.close()
        return
    cap = max_usd if max_usd is not None else (planned.usd * 1.5 if planned.usd else None)
    question = f"Start re-evaluating {planned.count:,} traces" + (
        f" with a ${cap:.2f} cap?" if cap is not None else " without a spend cap?"
    )
    if not yes and not typer.confirm(question):
        store.close()
        raise typer.Exit(1)
    with Progress(console=console) as progress:
        task = progress.add_task("dispatching", total=planned.count)
        run = re_evaluation.start(
            store, settings, planned, judge_dispatch(create_app(settings)), cap,
            lambda n: progress.advance(task, n),
        )  # fmt: skip
    store.close()
    console.print(
        f"run {run.run}: {run.dispatched:,} evaluations queued on judges_backfill; follow with "
        f"`evalfleet ledger summary`, then `evalfleet compare {spec.name}@OLD {spec.name}@"
        f"{spec.version}`"
    )


def _langfuse_candidates(
    resources: contextlib.ExitStack,
    settings: Settings,
    since: datetime,
    until: datetime | None,
    prompt_version: str | None,
    tenant: str | None,
) -> Any:
    import httpx

    from evaluator.ingest.langfuse import BackfillQuery, LangfuseBackfill
    from evaluator.reeval import ReevalError, langfuse_candidates
    from evaluator.sinks.langfuse import LangfuseSettings, langfuse_api

    langfuse = LangfuseSettings()
    if not langfuse.enabled:
        raise ReevalError("--from-langfuse needs LANGFUSE_PUBLIC_KEY, _SECRET_KEY and _HOST")
    http = resources.enter_context(httpx.Client(timeout=langfuse.timeout))
    backfill = LangfuseBackfill(langfuse_api(langfuse, http), connect(settings.redis_url), settings)
    return langfuse_candidates(backfill, BackfillQuery(since, until), prompt_version, tenant)


def render_reeval_plan(planned: Any) -> None:
    spec = planned.spec
    console.print(f"[bold]{spec.name}@{spec.version}[/bold] ({spec.model})")
    console.print(
        f"  traces: {planned.count:,} to judge of {planned.considered:,} in the window "
        f"({planned.already:,} already scored by this version, {planned.filtered:,} outside "
        "its applies_when)"
    )
    console.print(
        f"  tokens per call: {planned.input_tokens_per_call:,.0f} in + "
        f"{planned.output_tokens_per_call:,.0f} out, from {planned.tokens_from or 'nothing'}"
    )
    total_tokens = planned.count * (planned.input_tokens_per_call + planned.output_tokens_per_call)
    usd = f"${planned.usd:,.2f}" if planned.usd is not None else "unknown"
    console.print(f"  estimated: {total_tokens:,.0f} tokens, {usd}")
    if planned.seconds is not None:
        console.print(f"  time: ~{planned.seconds / 60:,.1f} min ({planned.pace})")
    for note in planned.notes:
        console.print(f"  [yellow]note:[/yellow] {note}")


@app.command()
def compare(
    first: Annotated[str, typer.Argument(help="NAME@VERSION")],
    second: Annotated[str, typer.Argument(help="NAME@VERSION")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Agreement between two versions of a judge on the traces both scored, and with human
    labels where there are some."""
    from evaluator.reeval import compare as compare_versions

    name_a, _, version_a = first.partition("@")
    name_b, _, version_b = second.partition("@")
    if name_a != name_b or not version_a or not version_b:
        raise typer.BadParameter("give two versions of one judge: NAME@V1 NAME@V2")
    store = _open_store()
    result = compare_versions(store, name_a, version_a, version_b)
    store.close()
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    v = result.verdicts
    console.print(
        f"{name_a}: {result.traces_a:,} traces scored by {version_a}, {result.traces_b:,} by "
        f"{version_b}, {result.both:,} by both"
    )
    if not result.both:
        return
    kappa = f"{v.kappa:.3f}" if v.kappa is not None else "n/a"
    console.print(f"verdicts agree on {100 * v.accuracy:.1f} % (Cohen's kappa {kappa})")
    console.print(
        f"  {version_a} pass / {version_b} fail: {v.confusion['pass']['fail']:,}; "
        f"{version_a} fail / {version_b} pass: {v.confusion['fail']['pass']:,}"
    )
    for f in result.fields:
        rho = f"{f.spearman:.3f}" if f.spearman is not None else "n/a"
        console.print(
            f"  {f.name}: Spearman {rho} over {f.n:,}; mean {f.mean_a:.3f} -> {f.mean_b:.3f}"
        )
    for version, humans in ((version_a, result.humans_a), (version_b, result.humans_b)):
        if humans is not None:
            k = f"{humans.kappa:.3f}" if humans.kappa is not None else "n/a"
            console.print(
                f"  vs human labels ({humans.n:,}): {version} {100 * humans.accuracy:.1f} % "
                f"agreement, kappa {k}"
            )


@ledger_app.callback(invoke_without_command=True)
def ledger_trace(
    context: typer.Context,
    trace: Annotated[
        str | None, typer.Option(help="Every evaluator's state for this trace id.")
    ] = None,
) -> None:
    """The evaluation ledger: one trace (--trace), or a subcommand."""
    if context.invoked_subcommand is not None:
        return
    if trace is None:
        typer.echo(context.get_help())
        raise typer.Exit(2)
    from evaluator.ledger import rows_for_trace

    store = _open_store()
    rows = rows_for_trace(store, trace)
    store.close()
    if not rows:
        console.print(f"no ledger rows for trace {trace!r}")
        raise typer.Exit(1)
    table = Table("evaluator", "version", "state", "attempt", "stratum", "P(incl.)", "updated",
                  "reason")  # fmt: skip
    for r in rows:
        p = f"{r.inclusion_probability:g}" if r.inclusion_probability is not None else ""
        updated = r.updated_at.strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(r.evaluator, r.evaluator_version, r.state, str(r.attempt), r.stratum or "",
                      p, updated, r.reason)  # fmt: skip
    console.print(table)


@ledger_app.command("summary")
def ledger_summary(
    since: Annotated[str, typer.Option(help="Rows updated since: 1h, 7d, or an ISO time.")] = "1h",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Counts by evaluator and state."""
    from evaluator.ledger import OPEN_RANK, summary
    from evaluator.timeparse import parse_since

    store = _open_store()
    counts = summary(store, parse_since(since))
    store.close()
    if as_json:
        typer.echo(json.dumps(counts, indent=2, sort_keys=True))
        return
    states = sorted({state for per in counts.values() for state in per})
    table = Table("evaluator", *states, "open")
    for evaluator, per in sorted(counts.items()):
        still_open = sum(n for state, n in per.items() if state in OPEN_RANK)
        table.add_row(evaluator, *[str(per.get(s, "")) for s in states], str(still_open))
    console.print(table)


@ledger_app.command("reap")
def ledger_reap() -> None:
    """Re-dispatch evaluations stuck past their deadline, or fail them with a reason (the
    sampler does this every EVALFLEET_REAPER_INTERVAL_S)."""
    from evaluator.celery_app import create_app, judge_dispatch
    from evaluator.judges import judge_registry
    from evaluator.ledger import reap

    settings = get_settings()
    store = _open_store()
    counts = reap(store, judge_registry(settings), settings, judge_dispatch(create_app(settings)))
    store.close()
    console.print(f"re-dispatched {counts.redispatched}, failed {counts.failed}")
    for reason in sorted(set(counts.reasons)):
        console.print(f"  failed: {reason}")


@ledger_app.command("redrive")
def ledger_redrive(
    state: Annotated[str, typer.Option(help="over_budget or failed.")] = "over_budget",
    evaluator: Annotated[str | None, typer.Option(help="Only this evaluator.")] = None,
) -> None:
    """Reopen over-budget (or failed) evaluations, e.g. after raising a budget; the reaper
    dispatches them."""
    from evaluator.ledger import LedgerState, redrive

    allowed = {LedgerState.OVER_BUDGET.value, LedgerState.FAILED.value}
    if state not in allowed:
        raise typer.BadParameter(
            f"choose one of {', '.join(sorted(allowed))}", param_hint="--state"
        )
    store = _open_store()
    count = redrive(store, LedgerState(state), evaluator)
    store.close()
    console.print(
        f"reopened {count} evaluations; `evalfleet ledger reap` or the sampler sends them"
    )


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    since: Annotated[
        str | None, typer.Option(help="Estimates and ledger over this window: 1h, 7d, ISO time.")
    ] = None,
) -> None:
    """Stream length, pending, queue depths, dead letters, scores and pass rates, population
    estimates of the sampled scores, and the evaluation ledger."""
    from dataclasses import asdict

    from evaluator.report import render_stats
    from evaluator.stats import fleet_stats
    from evaluator.timeparse import parse_since

    settings = get_settings()
    store = _open_store()
    client = connect(settings.redis_url)
    broker = connect(settings.celery_broker_url)
    try:
        result = fleet_stats(client, store, parse_since(since) if since else None, broker)
    finally:
        store.close()
        client.close()
        broker.close()
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=2))
    else:
        render_stats(result, console)


class SchemaName(StrEnum):
    trace = "trace"
    score = "score"
    review_item = "review-item"


@app.command()
def schema(name: Annotated[SchemaName, typer.Argument()] = SchemaName.trace) -> None:
    """Print the JSON Schema of a wire model (what apps publish: `trace`)."""
    from pydantic import BaseModel

    from evaluator.models import ReviewItem, Score, Trace

    models: dict[str, type[BaseModel]] = {"trace": Trace, "score": Score, "review-item": ReviewItem}
    model = models[name.value]
    typer.echo(json.dumps(model.model_json_schema(), indent=2))


@dlq_app.command("list")
def dlq_list(limit: int = 50) -> None:
    """The oldest dead letters and why they failed."""
    from evaluator.dlq import list_dead

    letters = list_dead(connect(get_settings().redis_url), limit)
    table = Table("id", "failed at", "reason", "bytes")
    for letter in letters:
        table.add_row(letter.id, letter.failed_at, letter.reason, f"{letter.payload_bytes:,}")
    console.print(table)
    console.print(f"{len(letters)} shown")


@dlq_app.command("show")
def dlq_show(dead_id: str) -> None:
    """One dead letter with its payload (as much as was kept)."""
    from evaluator.dlq import get_dead

    letter = get_dead(connect(get_settings().redis_url), dead_id)
    if letter is None:
        console.print(f"[red]error:[/red] no dead letter with id {dead_id}")
        raise typer.Exit(1)
    console.print(f"[bold]reason[/bold]    {letter.reason}")
    console.print(
        f"[bold]source id[/bold] {letter.source_id}   [bold]failed at[/bold] {letter.failed_at}"
    )
    if letter.truncated:
        console.print(
            f"[bold]payload[/bold]   first {len(letter.payload):,} of {letter.payload_bytes:,} "
            f"bytes kept; sha256 {letter.payload_sha256}"
        )
    sys.stdout.write(letter.payload_text + "\n")


@dlq_app.command("redrive")
def dlq_redrive(
    dead_ids: Annotated[list[str] | None, typer.Argument(help="Dead letter ids.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Redrive every dead letter.")] = False,
    payload_file: Annotated[
        Path | None,
        typer.Option(
            callback=_existing_file, help="Replace the payload (one id only) with this file."
        ),
    ] = None,
) -> None:
    """Put dead letters back on the traces stream after fixing the cause."""
    from evaluator.dlq import TruncatedPayload, list_dead, redrive

    settings = get_settings()
    client = connect(settings.redis_url)
    ids = [d.id for d in list_dead(client, limit=1_000_000)] if all_ else list(dead_ids or [])
    if not ids:
        console.print("[red]error:[/red] give dead letter ids or --all")
        raise typer.Exit(2)
    if payload_file is not None and len(ids) != 1:
        console.print("[red]error:[/red] --payload-file needs exactly one dead letter id")
        raise typer.Exit(2)
    payload = payload_file.read_bytes().strip() if payload_file else None
    try:
        new_ids = redrive(client, ids, settings, payload=payload)
    except (KeyError, TruncatedPayload) as exc:
        console.print(f"[red]error:[/red] {exc.args[0]}")
        raise typer.Exit(1) from exc
    console.print(f"redriven {len(new_ids)} dead letter(s)")


def _judge_or_exit(name: str) -> JudgeSpec:
    from evaluator.judges import judges_dir, load_judges

    judges = load_judges(judges_dir(get_settings()))
    if name not in judges:
        console.print(
            f"[red]error:[/red] unknown judge {name!r} (known: {', '.join(sorted(judges))})"
        )
        raise typer.Exit(1)
    return judges[name]


@judges_app.command("list")
def judges_list() -> None:
    """Every judge file: version, model, when it applies, its scores and thresholds."""
    from evaluator.judges import judges_dir, load_judges

    settings = get_settings()
    table = Table("judge", "version", "model", "applies when", "scores (review under)", "enabled")
    for spec in load_judges(judges_dir(settings)).values():
        when = ", ".join(
            f"{k}={v}" for k, v in spec.applies_when.model_dump(exclude_none=True).items()
        )
        fields = ", ".join(
            f"{n} (<{spec.review_thresholds[n]:g})" if n in spec.review_thresholds else n
            for n in spec.score_fields
        )
        enabled = "yes" if spec.name in settings.enabled_judges else "no"
        table.add_row(spec.name, spec.version, spec.model, when or "always", fields, enabled)
    console.print(table)


@judges_app.command("show")
def judges_show(name: str) -> None:
    """A judge file as loaded, and the JSON Schema its output must match."""
    spec = _judge_or_exit(name)
    typer.echo(spec.model_dump_json(indent=2))
    typer.echo(json.dumps(spec.json_schema(), indent=2))


@judges_app.command("render")
def judges_render(
    name: str,
    trace: Annotated[Path, typer.Option(callback=_existing_file, help="A Trace JSON file.")],
) -> None:
    """The exact messages and response_format that would be sent for a trace."""
    from evaluator.judges import render_messages
    from evaluator.models import Trace

    spec = _judge_or_exit(name)
    try:
        parsed = Trace.model_validate_json(trace.read_text().strip().splitlines()[0])
    except ValueError as exc:
        console.print(f"[red]error:[/red] {trace}: {exc}")
        raise typer.Exit(2) from exc
    settings = get_settings()
    messages = render_messages(spec, parsed, settings.judge_redact_pii, settings.golden_dir)
    for message in messages:
        typer.echo(f"----- {message['role']} -----\n{message['content']}")
    response_format = json.dumps(spec.response_format(), indent=2)
    typer.echo(f"----- response_format -----\n{response_format}")


@judges_app.command("validate")
def judges_validate() -> None:
    """All judge files parse, render against a sample trace with fenced text, match the lock."""
    from evaluator.judges import JudgeFileError, check_lock, judges_dir, load_judges, validate_judge

    directory = judges_dir(get_settings())
    try:
        judges = load_judges(directory)
    except JudgeFileError as exc:
        console.print(f"[red]invalid:[/red] {exc}")
        raise typer.Exit(1) from exc
    problems = [p for spec in judges.values() for p in validate_judge(spec)] + check_lock(directory)
    for problem in problems:
        console.print(f"[red]invalid:[/red] {problem}")
    if problems:
        raise typer.Exit(1)
    console.print(f"{len(judges)} judges valid, lock up to date ({directory})")


@judges_app.command("lock")
def judges_lock() -> None:
    """Record each judge's version and content hash in judges.lock (after bumping versions)."""
    from evaluator.judges import LOCK_FILE, check_lock, judges_dir, write_lock

    directory = judges_dir(get_settings())
    unbumped = [p for p in check_lock(directory) if "bump it" in p]
    if unbumped:
        for problem in unbumped:
            console.print(f"[red]refused:[/red] {problem}")
        raise typer.Exit(1)
    lock = write_lock(directory)
    console.print(f"wrote {directory / LOCK_FILE} ({len(lock)} judges)")


@app.command()
def demo(
    traces: Annotated[
        Path | None, typer.Option(callback=_existing_file, help="JSONL of traces to replay.")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Celery worker processes.")] = 2,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for scoring.")] = 300.0,
) -> None:
    """Run the whole fleet locally (embedded Redis + SQLite) on the sample traces."""
    from evaluator.demo import default_sample_file, run_demo
    from evaluator.embedded import find_redis_server
    from evaluator.report import render_dead_letters, render_review_queue, render_stats

    if find_redis_server() is None:
        from evaluator.embedded import INSTALL_HINT

        console.print(f"[red]error:[/red] {INSTALL_HINT}")
        raise typer.Exit(1)
    result = run_demo(traces or default_sample_file(), console, concurrency, timeout)
    render_stats(result.stats, console)
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


def main() -> None:
    """The `evalfleet` console script: warns about EVALFLEET_* variables that no setting reads
    (misspellings are otherwise silently ignored), then runs the command."""
    for variable, close in unknown_variables(os.environ):
        hint = f" (did you mean {close}?)" if close else "; nothing reads it"
        typer.echo(f"warning: {variable} is not a setting{hint}", err=True)
    app()


if __name__ == "__main__":
    main()
