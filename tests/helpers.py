"""Helpers shared by the tests: subprocess fleets, environments, traces, waiting."""

from __future__ import annotations

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

from evaluator.embedded import free_port
from evaluator.models import Trace
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
