"""Riding out outages of Redis, the database and the broker: back off, say so once, resume.

A long-running process never exits because a dependency went away. Its loop backs off
(``Backoff``: exponential with jitter, capped by ``EVALFLEET_OUTAGE_BACKOFF_MAX_S``) and tries the
same work again, for as long as the outage lasts. ``Readiness`` holds what the process knows of
its dependencies: the code that uses one reports a call that failed for want of it (``down``)
and one that worked again (``up``), or a ``Prober`` checks them from a thread where no loop of
ours does (the Celery worker's main process, the HTTP servers). ``Readiness``

- logs one line when a dependency goes away and one when it is back, never one per retry;
- sets ``evalfleet_dependency_up{dependency}`` (1 up, 0 down);
- answers ``GET /readyz``: 200 while every dependency is up, 503 naming what is down, since
  when and why (JSON).

``GET /healthz`` stays 200 while the process runs: it resumes on its own when the dependency is
back, so an outage is no reason for a supervisor to restart it (restarting every process of the
fleet when the database goes away only adds a stampede when it returns).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any, TypeVar

import redis
from kombu.exceptions import KombuError
from prometheus_client import Gauge
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from evaluator.ops import metrics

log = logging.getLogger(__name__)

REDIS, DATABASE, BROKER = "redis", "database", "broker"

DEPENDENCY_UP = Gauge(
    "evalfleet_dependency_up",
    "1 while the process reaches the dependency, 0 during an outage.",
    ["dependency"],
    multiprocess_mode="mostrecent",
)

# Redis answers these while it cannot serve yet (loading its data, a replica during failover).
_REDIS_TRANSIENT = ("LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


def outage_of(exc: BaseException) -> str | None:
    """The dependency an exception says is unreachable (``redis``, ``database``, ``broker``),
    or None for an error of the work itself."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return REDIS  # BusyLoadingError, AuthenticationError... are ConnectionErrors
    if isinstance(exc, redis.ResponseError) and str(exc).startswith(_REDIS_TRANSIENT):
        return REDIS
    if isinstance(exc, OperationalError | InterfaceError):
        return DATABASE
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return DATABASE
    if isinstance(exc, KombuError):
        return BROKER
    return None


def describe(error: BaseException | str) -> str:
    """One line, short: what a log line and /readyz say about the failure."""
    if isinstance(error, str):
        text = error
    else:
        detail = str(getattr(error, "orig", None) or error).strip()
        text = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return " ".join(text.split())[:300]


@dataclass
class Outage:
    since: datetime
    started: float  # monotonic
    reason: str
    failures: int = 1
    logged: bool = True  # False: expected at start-up, not reached yet (nothing to announce)


class Readiness:
    """The dependencies of one process (or one app): which are down, since when, why.

    Thread-safe; ``up`` on a dependency that is up costs a set lookup, so it can be called on
    every success."""

    def __init__(self, process: str = "evalfleet") -> None:
        self.process = process
        self._lock = threading.Lock()
        self._down: dict[str, Outage] = {}
        self._known: set[str] = set()

    def down(self, dependency: str, error: BaseException | str) -> bool:
        """Record a failed call; logs (and returns True) only when the dependency was up."""
        reason = describe(error)
        with self._lock:
            self._known.add(dependency)
            outage = self._down.get(dependency)
            if outage is not None:
                outage.failures += 1
                outage.reason = reason
                if outage.logged:
                    return False
                outage.logged = True
            else:
                self._down[dependency] = Outage(datetime.now(UTC), time.monotonic(), reason)
        DEPENDENCY_UP.labels(dependency).set(0)
        log.warning(
            "%s: %s unavailable (%s); backing off and retrying until it is back",
            self.process,
            dependency,
            reason,
        )
        return True

    def up(self, dependency: str) -> bool:
        """Record a call that worked; logs (and returns True) only when it ends an outage."""
        if dependency in self._known and dependency not in self._down:
            return False
        with self._lock:
            first = dependency not in self._known
            self._known.add(dependency)
            outage = self._down.pop(dependency, None)
        if outage is None or not outage.logged:
            if first or outage is not None:
                DEPENDENCY_UP.labels(dependency).set(1)
            return False
        DEPENDENCY_UP.labels(dependency).set(1)
        # WARNING like the line that opened the outage: both show at any --loglevel up to
        # warning (and under logging's last-resort handler where nothing was configured).
        log.warning(
            "%s: %s available again after %.1fs (%d failed attempts); resuming",
            self.process,
            dependency,
            time.monotonic() - outage.started,
            outage.failures,
        )
        return True

    def expect(self, dependency: str, reason: str = "not reached yet") -> None:
        """A dependency the process needs and has not reached yet (start-up): unready until
        ``up``, and no log line either way unless it fails."""
        with self._lock:
            if dependency in self._known:
                return
            self._known.add(dependency)
            self._down[dependency] = Outage(
                datetime.now(UTC), time.monotonic(), reason, failures=0, logged=False
            )
        DEPENDENCY_UP.labels(dependency).set(0)

    def is_down(self, dependency: str) -> bool:
        return dependency in self._down

    @property
    def ready(self) -> bool:
        return not self._down

    def status(self) -> dict[str, Any]:
        """What /readyz answers."""
        now = time.monotonic()
        with self._lock:
            down = {
                name: {
                    "since": outage.since.isoformat(),
                    "for_s": round(now - outage.started, 1),
                    "failures": outage.failures,
                    "reason": outage.reason,
                }
                for name, outage in sorted(self._down.items())
            }
            known = sorted(self._known)
        return {
            "process": self.process,
            "ready": not down,
            "up": [name for name in known if name not in down],
            "down": down,
        }

    def response(self) -> tuple[int, bytes]:
        """The /readyz status code and JSON body."""
        status = self.status()
        return (200 if status["ready"] else 503), (json.dumps(status) + "\n").encode()


# The process's own: what `evalfleet sampler`, `relay` and `worker` serve on /readyz.
PROCESS = Readiness()


class Backoff:
    """Exponential backoff with jitter: base, 2x base, ... capped at ``max_s``."""

    def __init__(self, base_s: float = 0.5, max_s: float = 10.0) -> None:
        self.base_s = base_s
        self.max_s = max(base_s, max_s)
        self.attempts = 0

    def next(self) -> float:
        ceiling = min(self.max_s, self.base_s * 2 ** min(self.attempts, 30))
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0


T = TypeVar("T")


def until_available(
    make: Callable[[], T],
    stop: threading.Event,
    readiness: Readiness,
    backoff: Backoff | None = None,
) -> T | None:
    """``make()``, retried with backoff for as long as it fails for want of a dependency
    (start-up during an outage); None if ``stop`` is set first. Other errors propagate."""
    backoff = backoff or Backoff()
    failed: set[str] = set()
    while not stop.is_set():
        try:
            value = make()
        except Exception as exc:
            dependency = outage_of(exc)
            if dependency is None:
                raise
            failed.add(dependency)
            readiness.down(dependency, exc)
            stop.wait(backoff.next())
            continue
        for dependency in failed:
            readiness.up(dependency)
        return value
    return None


def watch_chore(chore: Any, readiness: Readiness, uses: tuple[str, ...] = ()) -> Any:
    """Let a periodic chore (an object with a ``work`` callable, e.g. the sampler's FleetChore)
    report outages to ``readiness`` instead of raising them: its owner would log a traceback
    every interval. A success marks up what this chore found down (and ``uses``). Idempotent."""
    work = getattr(chore, "work", None)
    if work is None or getattr(work, "_watched", False):
        return chore
    found_down: set[str] = set()

    def watched() -> object:
        try:
            result = work()
        except Exception as exc:
            dependency = outage_of(exc)
            if dependency is None:
                raise
            found_down.add(dependency)
            readiness.down(dependency, exc)
            return None
        for dependency in {*uses, *found_down}:
            readiness.up(dependency)
        found_down.clear()
        return result

    watched._watched = True  # type: ignore[attr-defined]
    chore.work = watched
    return chore


def database_check(engine: Engine) -> Callable[[], object]:
    def check() -> object:
        with engine.connect() as connection:
            return connection.exec_driver_sql("SELECT 1").scalar()

    return check


class Prober:
    """Checks dependencies every ``interval_s`` from a daemon thread and tells ``readiness``.
    For processes whose own work does not say (the worker's main process, the HTTP servers)."""

    def __init__(
        self,
        readiness: Readiness,
        checks: Mapping[str, Callable[[], object]],
        interval_s: float = 5.0,
    ) -> None:
        self.readiness = readiness
        self.checks = dict(checks)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> bool:
        for dependency, check in self.checks.items():
            try:
                check()
            except Exception as exc:
                self.readiness.down(dependency, exc)
            else:
                self.readiness.up(dependency)
        return self.readiness.ready

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            self._stop.wait(self.interval_s)

    def start(self) -> Prober:
        self._thread = threading.Thread(target=self._run, name="health-prober", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


@contextlib.contextmanager
def probing(prober: Prober) -> Iterator[Prober]:
    prober.start()
    try:
        yield prober
    finally:
        prober.stop()


class _Handler(metrics._Handler):
    """/metrics and /healthz as ``serve_metrics`` answers them, and /readyz."""

    readiness: Readiness = PROCESS

    def do_GET(self) -> None:
        if not self.path.startswith("/readyz"):
            super().do_GET()
            return
        status, body = self.readiness.response()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(port: int, readiness: Readiness = PROCESS, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz from a daemon thread of this process."""
    handler = type("ReadinessHandler", (_Handler,), {"readiness": readiness})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
