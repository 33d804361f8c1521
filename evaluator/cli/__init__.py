"""The `evalfleet` command. Each command parses options and calls a function that does the work;
the commands live by concern (processes, traces, judging, ledger) and register on ``app``."""

from __future__ import annotations

import os

import typer

from evaluator.cli.app import app

# The commands register on ``app`` as their modules are imported, in the order of `--help`.
# isort: off
from evaluator.cli import processes, traces, judging, ledger

# isort: on
from evaluator.settings import unknown_variables

__all__ = ["app", "judging", "ledger", "main", "processes", "traces"]


def main() -> None:
    """The `evalfleet` console script: warns about EVALFLEET_* variables that no setting reads
    (misspellings are otherwise silently ignored), then runs the command."""
    for variable, close in unknown_variables(os.environ):
        hint = f" (did you mean {close}?)" if close else "; nothing reads it"
        typer.echo(f"warning: {variable} is not a setting{hint}", err=True)
    app()
