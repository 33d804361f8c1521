"""The evaluation ledger: where each (trace, evaluator, version) stands, reaping, redrive."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from evaluator.cli.app import ledger_app
from evaluator.cli.common import console, open_store
from evaluator.settings import get_settings


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
    from evaluator.console.report import render_ledger_rows
    from evaluator.ledger import rows_for_trace

    with open_store() as store:
        rows = rows_for_trace(store, trace)
    if not rows:
        console.print(f"no ledger rows for trace {trace!r}")
        raise typer.Exit(1)
    render_ledger_rows(rows, console)


@ledger_app.command("summary")
def ledger_summary(
    since: Annotated[str, typer.Option(help="Rows updated since: 1h, 7d, or an ISO time.")] = "1h",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Counts by evaluator and state."""
    from evaluator.console.report import render_ledger
    from evaluator.ledger import summary
    from evaluator.timeparse import parse_since

    with open_store() as store:
        counts = summary(store, parse_since(since))
    if as_json:
        typer.echo(json.dumps(counts, indent=2, sort_keys=True))
        return
    render_ledger(counts, console, title=f"Evaluation ledger since {since}")


@ledger_app.command("reap")
def ledger_reap() -> None:
    """Re-dispatch evaluations stuck past their deadline, or fail them with a reason (the
    sampler does this every EVALFLEET_REAPER_INTERVAL_S)."""
    from evaluator.celery_app import create_app, judge_dispatch
    from evaluator.judging.files import judge_registry
    from evaluator.ledger import reap

    settings = get_settings()
    with open_store() as store:
        counts = reap(
            store, judge_registry(settings), settings, judge_dispatch(create_app(settings))
        )
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
    with open_store() as store:
        count = redrive(store, LedgerState(state), evaluator)
    console.print(
        f"reopened {count} evaluations; `evalfleet ledger reap` or the sampler sends them"
    )
