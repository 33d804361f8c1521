"""The `evalfleet` command tree: the root command (one-line errors, settings read first) and
its groups. Commands live by concern in the sibling modules and register themselves here."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from evaluator.ops.errors import (
    debug_enabled,
    describe,
    enable_debug,
)
from evaluator.settings import get_settings

_WITHOUT_SETTINGS = {"schema"}  # commands that work whatever the environment holds


class _Commands(TyperGroup):
    """The root command: a known failure of any command (a setting that does not parse, Redis or
    the database out of reach, a missing file) ends as one line on stderr and its exit code
    (evaluator/ops/errors.py); anything else, or any failure with --debug, keeps its traceback."""

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


@app.callback()
def _root(
    debug: Annotated[
        bool,
        typer.Option("--debug", help="On an error, the full traceback (also: EVALFLEET_DEBUG=1)."),
    ] = False,
) -> None:
    if debug:
        enable_debug()
