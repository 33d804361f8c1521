"""Logging of every long-running command: text as before, or JSON lines
(``EVALFLEET_LOG_FORMAT=json``) from our code, Celery and uvicorn alike.

A JSON record is one object per line::

    {"ts": "2025-01-31T12:00:00.123Z", "level": "WARNING", "logger": "evaluator.sampling.sampler",
     "message": "dead-lettering 1-0: ...", "process": "sampler", "pid": 4242,
     "trace_id": "7f3c...", "tenant": "acme"}

``process`` names the fleet process (sampler, worker, relay, review-api, otlp-receiver...);
``trace_id``, ``tenant``, ``batch_id`` and ``judge`` come from the record's ``extra`` or, inside
``with bound(trace_id=...)``, from this context (a contextvar: per thread, per task); in a Celery
task ``task_id`` and ``task_name`` are added. A traceback is under ``exc_info``.

Only the standard library, and nothing of ours is imported here: ``evalfleet worker`` configures
logging before prometheus-client may be imported (see ``cli._multiprocess_metrics_dir``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from logging.handlers import WatchedFileHandler
from types import MappingProxyType, TracebackType
from typing import IO, Any, Literal

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What a record may say about the work it concerns, from ``extra`` or ``bound``.
CONTEXT_FIELDS = ("trace_id", "tenant", "batch_id", "judge")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("evalfleet_log_context", default=_EMPTY)
_process: str | None = None
_MAX_PARSED = 1 << 20  # a larger payload is not parsed for a log line


@contextlib.contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Records logged inside carry ``fields`` (those not None), e.g. ``trace_id``."""
    given = {name: value for name, value in fields.items() if value is not None}
    token = _context.set({**_context.get(), **given})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: str | None) -> Callable[[], None]:
    """``bound`` for code that cannot use a ``with`` (a pair of signals); call the result to
    undo."""
    given = {name: value for name, value in fields.items() if value is not None}
    token = _context.set({**_context.get(), **given})
    return lambda: _context.reset(token)


def context() -> Mapping[str, str]:
    return _context.get()


def about_payload(payload: str | bytes | None) -> dict[str, str]:
    """``trace_id`` and ``tenant`` of a trace's JSON, as far as it has them (for ``extra=``).
    Never raises: the payload may be what a trace was dead-lettered for."""
    if not payload or len(payload) > _MAX_PARSED:
        return {}
    try:
        document = json.loads(payload)
    except (ValueError, TypeError, RecursionError):  # nested too deep for the parser
        return {}
    if not isinstance(document, dict):
        return {}
    return {k: document[k] for k in ("trace_id", "tenant") if isinstance(document.get(k), str)}


def about_entries(entries: Iterable[Mapping[str, Any]], batch_id: str | None) -> dict[str, str]:
    """What to bind while a worker handles a batch of work entries: the batch id; when the batch
    is one trace (a batch split after a stall, a retried trace), that trace and its judge."""
    fields: dict[str, str] = {"batch_id": batch_id} if batch_id else {}
    listed = list(entries)
    if len(listed) == 1 and isinstance(listed[0], Mapping):
        entry = listed[0]
        fields.update(about_payload(entry.get("trace")))
        judges = entry.get("judges")
        if isinstance(judges, list) and len(judges) == 1 and isinstance(judges[0], str):
            fields["judge"] = judges[0]
    return fields


def _process_name() -> str | None:
    if _process is not None:
        return _process
    health = sys.modules.get("evaluator.ops.health")  # its PROCESS names sampler, worker, relay
    readiness = getattr(health, "PROCESS", None)
    name = getattr(readiness, "process", None)
    return name if isinstance(name, str) else None


def _current_task() -> tuple[str | None, str | None]:
    state = sys.modules.get("celery._state")
    if state is None:
        return None, None
    task = state.get_current_task()
    request = getattr(task, "request", None) if task is not None else None
    task_id = getattr(request, "id", None)
    if task_id is None:
        return None, None
    return str(task_id), getattr(task, "name", None)


def _timestamp(created: float) -> str:
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.removesuffix("+00:00") + "Z"


def document(
    level: str,
    logger: str,
    message: str,
    created: float | None = None,
    pid: int | None = None,
) -> dict[str, Any]:
    """The keys every JSON record has."""
    return {
        "ts": _timestamp(time.time() if created is None else created),
        "level": level,
        "logger": logger,
        "message": message,
        "process": _process_name(),
        "pid": os.getpid() if pid is None else pid,
    }


def json_line(level: str, logger: str, message: str) -> str:
    """One JSON record, for output written without logging (a signal handler's)."""
    return json.dumps({**document(level, logger, message), **_context.get()}, default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc = document(
            record.levelname, record.name, record.getMessage(), record.created, record.process
        )
        doc.update(_context.get())
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                doc[name] = value
        data = record.__dict__.get("data")  # celery's "Task ... received/succeeded" records
        if isinstance(data, Mapping) and data.get("id"):
            doc["task_id"], doc["task_name"] = str(data["id"]), data.get("name")
        else:
            task_id, task_name = _current_task()
            if task_id is not None:
                doc["task_id"], doc["task_name"] = task_id, task_name
        access = record.args if record.name == "uvicorn.access" else None
        if isinstance(access, tuple) and len(access) == 5:
            client, method, path, _, status = access
            doc.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc_info"] = record.exc_text
        if record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def formatter(format: Literal["text", "json"] | str) -> logging.Formatter:
    return JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT)


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler ``configure`` installs (and replaces when called again)."""


class _OurFileHandler(WatchedFileHandler):
    """The same, when celery's --logfile names a file (reopened after log rotation)."""


def _stderr() -> IO[str]:
    # Celery's redirect of stdout/stderr to a logger must not become our handler's stream.
    stream = sys.stderr
    if type(stream).__name__ == "LoggingProxy" and sys.__stderr__ is not None:
        return sys.__stderr__
    return stream


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("evaluator").critical("uncaught exception", exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    logging.getLogger("evaluator").critical(
        "uncaught exception in thread %s",
        args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def configure(
    level: str | int = "INFO",
    format: Literal["text", "json"] | str = "text",
    process: str | None = None,
    logfile: str | None = None,
) -> logging.Handler:
    """Log to stderr (or ``logfile``) at ``level``, as text (``TEXT_FORMAT``) or JSON lines.

    Replaces the handler an earlier call installed and leaves other handlers alone. In JSON mode
    warnings and uncaught exceptions (main thread and others) become records too."""
    global _process
    if process is not None:
        _process = process
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _OurHandler | _OurFileHandler):
            root.removeHandler(handler)
            handler.close()
    new: logging.Handler = _OurFileHandler(logfile) if logfile else _OurHandler(_stderr())
    new.setFormatter(formatter(format))
    root.addHandler(new)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    quiet_http_clients()
    if format == "json":
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    return new


# HTTP client libraries that log every request at INFO (the judges' calls, thousands a minute).
HTTP_CLIENT_LOGGERS = ("httpx", "httpcore", "openai")


def quiet_http_clients() -> None:
    """The HTTP client loggers at WARNING, unless the root logger is at DEBUG (then they say
    everything, as asked)."""
    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    for name in HTTP_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)


def call_configured(
    level: str | int,
    format: str,
    process: str | None,
    target: Callable[..., object],
    *args: object,
) -> None:
    """``configure``, then ``target(*args)``: the entry point of a spawned child process (which
    does not inherit its parent's logging)."""
    configure(level, format, process)
    target(*args)
