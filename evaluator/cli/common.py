"""What the commands share: the console, logging set-up, the store, file and time options,
the listen address, judge lookup."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from evaluator.judging.files import JudgeSpec
from evaluator.ops.errors import (
    check_database_url,
    require_file,
)
from evaluator.settings import Settings, get_settings

if TYPE_CHECKING:
    from evaluator.sinks.sql import SQLStore

console = Console()


def existing_file(ctx: typer.Context, path: Path | None) -> Path | None:
    """Typer callback of file arguments: one line naming a file that is not there."""
    return path if path is None or ctx.resilient_parsing else require_file(path)


T = TypeVar("T")


@contextlib.contextmanager
def open_store(must_exist: bool = True) -> Iterator[SQLStore]:
    """The configured store, closed when the command is done with it. Commands that read what
    the fleet stored refuse a SQLite file that does not exist rather than create an empty one
    (SQLStore creates the tables of a new database; evalfleet.db in whatever directory the
    command ran in)."""
    from evaluator.sinks.sql import SQLStore

    url = get_settings().sqlalchemy_url
    check_database_url(url, must_exist)
    store = SQLStore(url)
    try:
        yield store
    finally:
        store.close()


def configure_logging(level: str, process: str | None = None) -> None:
    """Text or JSON lines (EVALFLEET_LOG_FORMAT); records name the process (the command)."""
    import click

    from evaluator.ops import logs

    if process is None and (context := click.get_current_context(silent=True)) is not None:
        process = context.info_name
    logs.configure(level, get_settings().log_format, process=process)


def with_metrics_port(settings: Settings, metrics_port: int | None) -> Settings:
    """``settings`` with ``--metrics-port`` when given (the HTTP servers start it themselves)."""
    return (
        settings
        if metrics_port is None
        else settings.model_copy(update={"metrics_port": metrics_port})
    )


def long_running(loglevel: str, metrics_port: int | None) -> tuple[Settings, threading.Event]:
    """Logging, /metrics, /healthz and /readyz when a port is given, and an event set by
    SIGTERM/SIGINT."""
    from evaluator.ops.health import serve

    configure_logging(loglevel)
    settings = get_settings()
    if port := metrics_port or settings.metrics_port:
        serve(port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return settings, stop


def start_when_available(
    process: str,
    dependency: str,
    build: Callable[[Settings], T],
    loglevel: str,
    metrics_port: int | None,
) -> tuple[T | None, threading.Event]:
    """A long-running process's start: logging, its endpoints and stop event, then ``build``,
    retried while ``dependency`` is away (a process started during an outage waits it out rather
    than exit). None when it was stopped before that."""
    from evaluator.ops.health import PROCESS, Backoff, until_available

    settings, stop = long_running(loglevel, metrics_port)
    PROCESS.process = process
    PROCESS.expect(dependency)
    backoff = Backoff(max_s=settings.outage_backoff_max_s)
    return until_available(lambda: build(settings), stop, PROCESS, backoff), stop


# Files a container runtime leaves in its containers (Docker, Podman); Kubernetes sets
# KUBERNETES_SERVICE_HOST in every container of a pod.
CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")

# The metrics port of every long-running process: /metrics, /healthz and /readyz, no token
# (Prometheus and Kubernetes probes); overrides EVALFLEET_METRICS_PORT.
MetricsPort = Annotated[
    int | None, typer.Option(help="Serve /metrics, /healthz and /readyz (no token) on this port.")
]

HOST_HELP = (
    "Address to listen on. Default: 127.0.0.1 (this machine only), so a server started on a "
    "laptop or a shared host is not open to the network; inside a container (Docker, Podman, "
    "Kubernetes) 0.0.0.0, all interfaces, since only the published port reaches it. "
    "--host 0.0.0.0 listens on all interfaces anywhere."
)


def default_host() -> str:
    """127.0.0.1 outside containers, 0.0.0.0 inside one (see HOST_HELP)."""
    in_container = "KUBERNETES_SERVICE_HOST" in os.environ or any(
        Path(marker).exists() for marker in CONTAINER_MARKERS
    )
    return "0.0.0.0" if in_container else "127.0.0.1"


def judge_spec(name: str) -> JudgeSpec:
    from evaluator.judging.files import JudgeFileError, judges_dir, load_judge

    path = judges_dir(get_settings()) / f"{name}.yaml"
    if not path.exists():
        console.print(f"[red]error:[/red] no judge file {path}")
        raise typer.Exit(2)
    try:
        return load_judge(path)
    except JudgeFileError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def require_judge_endpoint() -> None:
    if not get_settings().judge_endpoint_configured:
        console.print(
            "[red]error:[/red] no judge endpoint: set EVALFLEET_JUDGE_BASE_URL (any "
            "OpenAI-compatible server) and EVALFLEET_JUDGE_API_KEY"
        )
        raise typer.Exit(2)


def time_option(value: str | None, option: str) -> datetime | None:
    from evaluator.timeparse import parse_since

    try:
        return parse_since(value) if value else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def multiprocess_metrics_dir(configured: Path | None) -> None:
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


def judge_or_exit(name: str) -> JudgeSpec:
    from evaluator.judging.files import judges_dir, load_judges

    judges = load_judges(judges_dir(get_settings()))
    if name not in judges:
        console.print(
            f"[red]error:[/red] unknown judge {name!r} (known: {', '.join(sorted(judges))})"
        )
        raise typer.Exit(1)
    return judges[name]
