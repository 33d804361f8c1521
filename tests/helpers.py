"""Helpers shared by the tests: subprocess fleets, environments, traces, waiting."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from evaluator.models import Trace
from evaluator.ops.embedded import free_port
from evaluator.settings import Settings


def _metrics_args(port: int | None) -> list[str]:
    return ["--metrics-port", str(port)] if port else []


def _env_value(value: object) -> str:
    """Settings read lists and dicts from the environment as JSON."""
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def fleet_env(redis_url: str, database_url: str, **overrides: object) -> dict[str, str]:
    """Environment for sampler/worker subprocesses (and get_settings in this process)."""
    # A developer's OPENAI_API_KEY must never send test traffic to a real provider.
    env = {
        **{k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"},
        "EVALFLEET_REDIS_URL": redis_url,
        "EVALFLEET_BROKER_URL": redis_url,
        "EVALFLEET_DATABASE_URL": database_url,
    }
    env.update({f"EVALFLEET_{k.upper()}": _env_value(v) for k, v in overrides.items()})
    return env


def settings_for(redis_url: str, database_url: str, **overrides: object) -> Settings:
    return Settings(redis_url=redis_url, database_url=database_url, **overrides)  # type: ignore[arg-type]


class Fleet:
    """Sampler and Celery worker subprocesses, each in its own process group so kill -9 is total."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}-{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "evaluator.cli", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def sampler(
        self, consumer: str = "sampler-1", metrics_port: int | None = None, **overrides: object
    ) -> subprocess.Popen[bytes]:
        env = {
            **self.env,
            **{f"EVALFLEET_{k.upper()}": _env_value(v) for k, v in overrides.items()},
        }
        args = ["sampler", "--consumer", consumer, "--loglevel", "INFO"]
        return self._start("sampler", args + _metrics_args(metrics_port), env)

    def worker(
        self,
        concurrency: int = 1,
        pool: str = "prefork",
        queues: str = "heuristics,judges",
        metrics_port: int | None = None,
    ) -> subprocess.Popen[bytes]:
        args = ["worker", "--concurrency", str(concurrency), "--pool", pool, "--queues", queues]
        args += ["--loglevel", "INFO", *_metrics_args(metrics_port)]
        return self._start("worker", args, self.env)

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob("*.log"))
        )

    @staticmethod
    def kill(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        if sig in (signal.SIGKILL, signal.SIGTERM):
            process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                self.kill(process, signal.SIGTERM)


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.1,
) -> None:
    """Poll ``predicate``; on timeout fail with ``message`` (a callable is evaluated then)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for: {text}")
        time.sleep(interval)


def make_trace(index: int, **fields: Any) -> Trace:
    """A valid, ordinary trace; ``fields`` override any attribute."""
    base: dict[str, Any] = {
        "trace_id": f"t-{index:06d}",
        "input": "How do I rotate my API key?",
        "output": "Go to Settings > Security > API keys and click Rotate.",
        "contexts": ["API keys are rotated under Settings > Security > API keys."],
        "retrieval": True,
        "finish_reason": "stop",
        "tenant": "acme",
        "feature": "support",
        "latency_ms": 800.0,
    }
    return Trace(**{**base, **fields})


@dataclass
class RestartableServer:
    """An HTTP server on a fixed loopback port that a test can stop and start again (a sink or
    receiver "down for a while"); subclasses say how requests are handled."""

    port: int = field(default_factory=free_port)
    server: ThreadingHTTPServer | None = None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def start(self) -> None:
        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET on a loopback port; (0, reason) when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


class RedisServer:
    """A private redis-server on a fixed free loopback port that a test can take down
    (``shutdown``: SHUTDOWN NOSAVE, as an operator or a crash would) and start again on the same
    port. The append-only file is fsynced on every write, so a restart keeps every write Redis
    acknowledged (NOSAVE only skips the RDB snapshot); ``persist=False`` comes back empty."""

    def __init__(self, directory: Path, persist: bool = True) -> None:
        from evaluator.ops.embedded import INSTALL_HINT, find_redis_server

        binary = find_redis_server()
        if binary is None:
            raise RuntimeError(INSTALL_HINT)
        self.binary = binary
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)

    def start(self, timeout_s: float = 15.0) -> RedisServer:
        import redis

        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes" if self.persist else "no", "--appendfsync", "always"]
        args += ["--dir", str(self.directory)]
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        client = self.client()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return self
                except (redis.ConnectionError, redis.BusyLoadingError):
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start on {self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def shutdown(self, pubsub_first: bool = False) -> None:
        """SHUTDOWN NOSAVE: Redis closes every client connection and exits. (Sent over a plain
        socket: redis-py would retry the command, with backoff, once the server is gone.)

        ``pubsub_first``: in the same round trip, close the pub/sub connections just before
        (CLIENT KILL TYPE pubsub), so their clients see them fail first: the order in which a
        Celery worker's event loop happens to notice its pidbox and BRPOP sockets fail."""
        import socket

        command = b"SHUTDOWN NOSAVE\r\n"
        if pubsub_first:
            command = b"CLIENT KILL TYPE pubsub\r\n" + command
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(command)
            with contextlib.suppress(OSError):
                sock.recv(64)  # the server closes the connection on its way out
        if self.process is not None:
            self.process.wait(timeout=15)
            self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)
        self.process = None


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL's binaries (initdb, pg_ctl), if any."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name or 0)
    )
    found = [p for p in candidates if (p / "initdb").exists() and (p / "pg_ctl").exists()]
    return found[-1] if found else None


def postgres_unavailable_reason() -> str | None:
    """Why a private PostgreSQL cluster cannot be started here, or None."""
    import pwd
    import shutil

    if postgres_bindir() is None:
        return "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb, pg_ctl)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (PostgreSQL refuses to run as root)"
    return None


class PostgresCluster:
    """A private PostgreSQL cluster in a temporary directory on a free loopback port. ``stop``
    (``pg_ctl stop -m fast``: clients are disconnected, as when an operator stops the server)
    and ``start`` take it down and bring it back with its data. As root it runs as the
    ``postgres`` user (PostgreSQL refuses root), in a directory owned by that user."""

    def __init__(self) -> None:
        import pwd
        import tempfile

        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries")
        self.bindir = bindir
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="evalfleet-pg-"))
        self.data = self.directory / "data"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")

    def init(self) -> PostgresCluster:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync", "--no-instructions",
        )  # fmt: skip
        return self

    def start(self) -> PostgresCluster:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        return self.url(name)

    def destroy(self) -> None:
        import shutil

        with contextlib.suppress(RuntimeError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
