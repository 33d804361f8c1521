"""Traces in and out: replay and backfill, dead letters, the fleet's state, the JSON schemas."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from evaluator.cli.app import app, backfill_app, dlq_app
from evaluator.cli.common import console, existing_file, open_store, time_option
from evaluator.ops.errors import (
    EXIT_USAGE,
    CLIError,
)
from evaluator.settings import get_settings
from evaluator.streams import connect


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
    start = time_option(since, "--since")
    assert start is not None
    query = BackfillQuery(start, time_option(until, "--until"), name, tuple(tag or ()), user)
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


class ReplayFormat(StrEnum):
    jsonl = "jsonl"
    otel = "otel"


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(callback=existing_file)],
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
    from evaluator.ingest.otel import trace_payload

    settings = get_settings()
    client = connect(settings.redis_url)
    try:
        if format is ReplayFormat.otel:
            # As the OTLP receiver publishes them: an agent's steps fitted under the limit.
            items: list[object] = [
                trace_payload(trace, settings.max_trace_bytes) for trace in read_otlp(file)
            ]
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
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    since: Annotated[
        str | None, typer.Option(help="Estimates and ledger over this window: 1h, 7d, ISO time.")
    ] = None,
) -> None:
    """Stream length, pending, queue depths, dead letters, scores and pass rates, population
    estimates of the sampled scores, and the evaluation ledger."""
    from dataclasses import asdict

    from evaluator.console.report import render_stats
    from evaluator.console.stats import fleet_stats
    from evaluator.timeparse import parse_since

    settings = get_settings()
    with open_store() as store:
        client = connect(settings.redis_url)
        broker = connect(settings.celery_broker_url)
        try:
            result = fleet_stats(client, store, parse_since(since) if since else None, broker)
        finally:
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
    from evaluator.console.report import render_dead_letters
    from evaluator.ops.dlq import list_dead

    letters = list_dead(connect(get_settings().redis_url), limit)
    render_dead_letters(letters, console)
    console.print(f"{len(letters)} shown")


@dlq_app.command("show")
def dlq_show(dead_id: str) -> None:
    """One dead letter with its payload (as much as was kept)."""
    from evaluator.ops.dlq import get_dead

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
            callback=existing_file, help="Replace the payload (one id only) with this file."
        ),
    ] = None,
) -> None:
    """Put dead letters back on the traces stream after fixing the cause."""
    from evaluator.ops.dlq import TruncatedPayload, list_dead, redrive

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
