"""Judges and what keeps them honest: judge files, calibration and the gate, golden datasets,
re-evaluation and comparing judge versions."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress

from evaluator.cli.app import app, dataset_app, judges_app
from evaluator.cli.common import (
    console,
    existing_file,
    judge_or_exit,
    judge_spec,
    open_store,
    require_judge_endpoint,
)
from evaluator.settings import Settings, get_settings
from evaluator.streams import connect


@dataset_app.command("export")
def dataset_export(
    judge: Annotated[str, typer.Option(help="The judge whose labels to export.")],
    out: Annotated[Path | None, typer.Option(help="Default datasets/golden/<judge>.jsonl.")] = None,
) -> None:
    """Merge the labels in SQL into the judge's golden dataset (deduplicated by trace)."""
    from evaluator.ledger import inclusion_probabilities
    from evaluator.trust.golden import export, golden_path

    with open_store() as store:
        path = out or golden_path(judge)
        labels = store.labels(judge)
        inclusion = inclusion_probabilities(store, judge, [label.trace_id for label in labels])
        total, merged = export(labels, path, inclusion)
    console.print(f"{path}: {total} examples ({merged} labels from the store merged)")


@dataset_app.command("import")
def dataset_import(
    file: Annotated[Path, typer.Argument(callback=existing_file, help="JSONL, JSON or CSV.")],
    judge: Annotated[str, typer.Option(help="The judge these labels answer.")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="golden, csv, halueval-qa, halueval-general, truthfulqa-judge or "
            "llmbar-pairwise; default: from the file (CSV by suffix, else the record shape).",
        ),
    ] = None,
) -> None:
    """Load labels made elsewhere (golden JSONL, CSV, or a public human-labelled set) into the
    store; then export."""
    from evaluator.trust.golden import DatasetError
    from evaluator.trust.golden_public import FORMATS, read_labels

    if fmt is not None and fmt not in FORMATS:
        raise typer.BadParameter(f"one of {', '.join(FORMATS)}", param_hint="--format")
    try:
        examples = read_labels(file, fmt, judge)
    except DatasetError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    with open_store(must_exist=False) as store:  # labels made elsewhere may come before the fleet
        store.add_labels([e.to_label(judge, f"import:{file.name}") for e in examples], replace=True)
    fails = sum(e.verdict.value == "fail" for e in examples)
    console.print(
        f"imported {len(examples)} labels for {judge} ({len(examples) - fails} pass, {fails} "
        f"fail); `evalfleet dataset export --judge {judge}` writes them to the golden set"
    )


@app.command()
def calibrate(
    judge: Annotated[str, typer.Option(help="The judge to calibrate.")],
    dataset: Annotated[
        Path | None,
        typer.Option(callback=existing_file, help="Default datasets/golden/<judge>.jsonl."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="JSON report; default calibration-<judge>.json.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Call this model instead of the judge file's (same prompt and schema)."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=2, help="At most N examples, spread over sources and both verdicts."),
    ] = None,
    not_judgements: Annotated[
        str | None,
        typer.Option(
            metavar="WHY",
            help="The endpoint is a protocol peer, not a judge (e.g. a test model): the report "
            "says its scores are not judgements, and why; the thresholds do not set the exit code.",
        ),
    ] = None,
) -> None:
    """Run a judge over its golden sets and report agreement with the human labels, beside
    trivial baselines fitted on the same labels (a pairwise judge: both orders of every pair,
    and its position bias).

    Default dataset: datasets/golden/<judge>.jsonl and every <judge>.<source>.jsonl beside it.
    Exits 1 when agreement is under the judge file's calibration thresholds (with
    --not-judgements: only when no example could be judged)."""
    from evaluator.console.report import render_calibration
    from evaluator.ops.embedded import redis_or_embedded
    from evaluator.trust.calibrate import calibrate as run_calibration
    from evaluator.trust.calibrate import subsample
    from evaluator.trust.golden import (
        DatasetError,
        default_golden_dir,
        golden_files,
        read_examples,
        read_golden,
        record_disagreements,
    )

    settings = get_settings()
    spec = judge_spec(judge)
    if model is not None:
        spec = spec.model_copy(update={"model": model})
    require_judge_endpoint()
    directory = settings.golden_dir or default_golden_dir()
    try:
        examples = read_examples(dataset) if dataset else read_golden(judge, directory)
    except DatasetError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if not examples:
        where = dataset or f"{directory}/{judge}.jsonl or {judge}.*.jsonl"
        console.print(f"[red]error:[/red] no examples in {where}")
        raise typer.Exit(2)
    if dataset is None:
        names = ", ".join(p.name for p in golden_files(judge, directory))
        console.print(f"golden sets: {names} ({len(examples)} examples)")
    if limit is not None:
        examples = subsample(examples, limit)
    with redis_or_embedded(settings.redis_url) as redis_url, Progress(console=console) as progress:
        task = progress.add_task(f"judging {len(examples)} examples", total=len(examples))
        result = run_calibration(
            spec,
            examples,
            settings.model_copy(update={"redis_url": redis_url}),
            lambda: progress.advance(task),
        )
    result.not_judgements = not_judgements
    if not_judgements is not None:
        console.print(f"[yellow]NOT JUDGEMENTS:[/yellow] the scores below are not judgements "
                      f"of the traces ({not_judgements}); they test the plumbing only")  # fmt: skip
    render_calibration(result, console)
    if not_judgements is not None:
        console.print(
            f"NOT JUDGEMENTS: {spec.model}'s scores above judge nothing ({not_judgements})"
        )
    # Only a full run of the judge as configured: judges with few_shot show these first.
    if dataset is None and limit is None and model is None and not_judgements is None:
        ids = [d.trace_id for d in result.disagreements]
        record_disagreements(judge, spec.version, ids, directory)
    out = report or Path(f"calibration-{judge}.json")
    out.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    console.print(f"report: {out}")
    if not_judgements is not None:
        if result.agreement.n == 0:
            raise typer.Exit(1)
    elif not result.passed:
        raise typer.Exit(1)


@app.command()
def gate(
    base: Annotated[str, typer.Option(help="Git revision to compare with (e.g. origin/main).")],
    tolerance: Annotated[float, typer.Option(help="Allowed drop in kappa and agreement.")] = 0.05,
    golden_dir: Annotated[Path | None, typer.Option(help="Default: datasets/golden")] = None,
) -> None:
    """Fail when a judge changed since BASE agrees less with humans than its old version."""
    from evaluator.console.report import render_gate
    from evaluator.judging.files import judges_dir
    from evaluator.ops.embedded import redis_or_embedded
    from evaluator.trust.calibrate import GateError
    from evaluator.trust.calibrate import gate as run_gate
    from evaluator.trust.golden import default_golden_dir

    require_judge_endpoint()
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
    from evaluator.celery_app import create_app, judge_dispatch
    from evaluator.console.report import render_reeval_plan
    from evaluator.evaluation import reeval as re_evaluation
    from evaluator.judging.files import judge_registry
    from evaluator.timeparse import parse_since

    settings = get_settings()
    with open_store() as store:
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
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        render_reeval_plan(planned, console)
        if dry_run or planned.count == 0:
            return
        cap = max_usd if max_usd is not None else (planned.usd * 1.5 if planned.usd else None)
        question = f"Start re-evaluating {planned.count:,} traces" + (
            f" with a ${cap:.2f} cap?" if cap is not None else " without a spend cap?"
        )
        if not yes and not typer.confirm(question):
            raise typer.Exit(1)
        with Progress(console=console) as progress:
            task = progress.add_task("dispatching", total=planned.count)
            run = re_evaluation.start(
                store, settings, planned, judge_dispatch(create_app(settings)), cap,
                lambda n: progress.advance(task, n),
            )  # fmt: skip
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

    from evaluator.evaluation.reeval import ReevalError, langfuse_candidates
    from evaluator.ingest.langfuse import BackfillQuery, LangfuseBackfill
    from evaluator.sinks.langfuse import LangfuseSettings, langfuse_api

    langfuse = LangfuseSettings()
    if not langfuse.enabled:
        raise ReevalError("--from-langfuse needs LANGFUSE_PUBLIC_KEY, _SECRET_KEY and _HOST")
    http = resources.enter_context(httpx.Client(timeout=langfuse.timeout))
    backfill = LangfuseBackfill(langfuse_api(langfuse, http), connect(settings.redis_url), settings)
    return langfuse_candidates(backfill, BackfillQuery(since, until), prompt_version, tenant)


@app.command()
def compare(
    first: Annotated[str, typer.Argument(help="NAME@VERSION")],
    second: Annotated[str, typer.Argument(help="NAME@VERSION")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Agreement between two versions of a judge on the traces both scored, and with human
    labels where there are some."""
    from evaluator.console.report import render_comparison
    from evaluator.evaluation.reeval import compare as compare_versions

    name_a, _, version_a = first.partition("@")
    name_b, _, version_b = second.partition("@")
    if name_a != name_b or not version_a or not version_b:
        raise typer.BadParameter("give two versions of one judge: NAME@V1 NAME@V2")
    with open_store() as store:
        result = compare_versions(store, name_a, version_a, version_b)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    render_comparison(result, name_a, version_a, version_b, console)


@judges_app.command("list")
def judges_list() -> None:
    """Every judge file: version, model, when it applies, its scores and thresholds."""
    from evaluator.console.report import render_judges
    from evaluator.judging.files import judges_dir, load_judges

    settings = get_settings()
    render_judges(load_judges(judges_dir(settings)).values(), settings.enabled_judges, console)


@judges_app.command("show")
def judges_show(name: str) -> None:
    """A judge file as loaded, and the JSON Schema its output must match."""
    spec = judge_or_exit(name)
    typer.echo(spec.model_dump_json(indent=2))
    typer.echo(json.dumps(spec.json_schema(), indent=2))


@judges_app.command("render")
def judges_render(
    name: str,
    trace: Annotated[Path, typer.Option(callback=existing_file, help="A Trace JSON file.")],
) -> None:
    """The exact messages and response_format that would be sent for a trace."""
    from evaluator.judging.files import render_messages
    from evaluator.models import Trace

    spec = judge_or_exit(name)
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
    from evaluator.judging.files import (
        JudgeFileError,
        check_lock,
        judges_dir,
        load_judges,
        validate_judge,
    )

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
    from evaluator.judging.files import (
        LOCK_FILE,
        LockProblemKind,
        judges_dir,
        lock_problems,
        write_lock,
    )

    directory = judges_dir(get_settings())
    unbumped = [p for p in lock_problems(directory) if p.kind is LockProblemKind.UNBUMPED]
    if unbumped:
        for problem in unbumped:
            console.print(f"[red]refused:[/red] {problem.message}")
        raise typer.Exit(1)
    lock = write_lock(directory)
    console.print(f"wrote {directory / LOCK_FILE} ({len(lock)} judges)")
