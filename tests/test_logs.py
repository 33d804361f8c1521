"""Logs: JSON lines (EVALFLEET_LOG_FORMAT=json) from a real sampler, a prefork Celery worker and
the review API's uvicorn, with trace ids; text as before; the worker's metrics directory; the
servers' listen address."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import Fleet, fleet_env, http_get, make_trace, wait_for
from typer.testing import CliRunner

from evaluator.cli import app as cli_app
from evaluator.cli import common as cli_common
from evaluator.constants import TRACES_STREAM
from evaluator.ingest import publish_many
from evaluator.ops import logs
from evaluator.ops.embedded import free_port
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import TraceRecord

FleetFactory = Callable[[dict[str, str]], Fleet]
KEYS = {"ts", "level", "logger", "message", "process", "pid"}


def records(path: Path) -> list[dict[str, Any]]:
    """Every non-empty line of a log, each a JSON object with the keys every record has."""
    found = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not JSON in {path.name}: {line!r}") from None
        assert isinstance(record, dict) and set(record) >= KEYS, line
        assert datetime.fromisoformat(record["ts"]).utcoffset() == UTC.utcoffset(None), line
        found.append(record)
    return found


def log_of(fleet: Fleet, name: str, process: subprocess.Popen[bytes]) -> Path:
    """Where Fleet writes the output of ``process`` (started as ``name``)."""
    return fleet.log_dir / f"{name}-{fleet.processes.index(process)}.log"


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(child.stdout)


def test_json_logs_of_sampler_and_worker_and_the_metrics_dir(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    fleet_factory: FleetFactory,
    tmp_path: Path,
) -> None:
    temp = tmp_path / "tmp"  # the worker's tempfile.gettempdir()
    stale = temp / f"evalfleet-metrics-{dead_pid()}"  # left by a worker killed with SIGKILL
    live = temp / f"evalfleet-metrics-{1}"  # init's: alive, not ours to remove
    for directory in (stale, live):
        directory.mkdir(parents=True)
        (directory / "counter_1.db").write_bytes(b"x")
    env = fleet_env(redis_url, sqlite_url, log_format="json", heuristics_batch_size=1)
    fleet = fleet_factory({**env, "TMPDIR": str(temp)})
    worker = fleet.worker(concurrency=2, queues="heuristics", metrics_port=free_port())
    sampler = fleet.sampler()
    mine = temp / f"evalfleet-metrics-{worker.pid}"
    wait_for(mine.exists, 20, lambda: f"metrics dir\n{fleet.logs()}")
    assert not stale.exists() and live.exists()

    n = 4
    traces = [make_trace(i) for i in range(n)]
    publish_many(redis_client, traces, Settings())
    bad = {"trace_id": "t-bad", "tenant": "acme", "input": 5}  # invalid: dead-lettered
    redis_client.xadd(TRACES_STREAM, {"trace": json.dumps(bad)})
    store = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)
    wait_for(lambda: store.count(TraceRecord) == n, 30, lambda: f"scored\n{fleet.logs()}")
    store.close()
    worker_log, sampler_log = log_of(fleet, "worker", worker), log_of(fleet, "sampler", sampler)
    wait_for(lambda: worker_log.read_text().count("succeeded") == n, 10, fleet.logs)
    wait_for(lambda: "dead-lettering" in sampler_log.read_text(), 10, fleet.logs)
    Fleet.kill(worker, signal.SIGTERM)
    Fleet.kill(sampler, signal.SIGTERM)
    assert worker.returncode == 0 and sampler.returncode == 0, fleet.logs()
    assert not mine.exists(), "the worker's metrics dir outlived it"
    assert live.exists()

    from_worker = records(worker_log)
    assert {r["process"] for r in from_worker} == {"worker"}
    celery = [r for r in from_worker if r["logger"].startswith("celery.")]
    assert any(r["message"].endswith(" ready.") for r in celery)
    received = [r for r in celery if r["logger"] == "celery.worker.strategy"]
    assert len(received) == n and {r["pid"] for r in received} == {worker.pid}
    assert all(r["task_name"] == "evalfleet.heuristics_batch" for r in received)
    succeeded = [r for r in celery if r["logger"] == "celery.app.trace"]
    assert len(succeeded) == n and worker.pid not in {r["pid"] for r in succeeded}  # children
    assert {r["trace_id"] for r in succeeded} == {t.trace_id for t in traces}
    assert all(r["batch_id"] == r["task_id"] and r["tenant"] == "acme" for r in succeeded)
    assert any(r["message"] == "worker: Warm shutdown (MainProcess)" for r in from_worker)

    from_sampler = records(sampler_log)
    assert {r["process"] for r in from_sampler} == {"sampler"}
    (dead,) = [r for r in from_sampler if r["message"].startswith("dead-lettering")]
    assert dead["trace_id"] == "t-bad" and dead["tenant"] == "acme"
    assert dead["level"] == "WARNING" and dead["logger"] == "evaluator.sampling.sampler"


def test_text_logs_as_before(redis_url: str, sqlite_url: str, fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(fleet_env(redis_url, sqlite_url, log_format="text"))
    worker = fleet.worker(queues="judges_backfill")
    sampler = fleet.sampler()
    worker_log, sampler_log = log_of(fleet, "worker", worker), log_of(fleet, "sampler", sampler)
    wait_for(lambda: " ready." in worker_log.read_text(), 20, fleet.logs)
    wait_for(lambda: " started" in sampler_log.read_text(), 20, fleet.logs)
    Fleet.kill(worker, signal.SIGTERM)
    Fleet.kill(sampler, signal.SIGTERM)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    worker_text, sampler_text = worker_log.read_text(), sampler_log.read_text()
    assert "[queues]" in worker_text  # celery's banner
    assert re.search(rf"^\[{stamp}: INFO/MainProcess\] celery@\S+ ready\.$", worker_text, re.M)
    assert re.search(
        rf"^{stamp} INFO evaluator\.sampling\.sampler: sampler \S+ started$", sampler_text, re.M
    )
    assert not re.search(r"^\{", worker_text + sampler_text, re.M)


def test_review_api_uvicorn_logs_json_and_text(
    redis_url: str, sqlite_url: str, fleet_factory: FleetFactory
) -> None:
    fleet = fleet_factory(fleet_env(redis_url, sqlite_url))
    started = {}
    for log_format in ("json", "text"):
        port = free_port()
        env = {**fleet.env, "EVALFLEET_LOG_FORMAT": log_format}
        process = fleet._start("review-api", ["review-api", "--port", str(port)], env)
        started[log_format] = port, process
    for port, _ in started.values():

        def up(port: int = port) -> bool:
            return http_get(port, "/healthz")[0] == 200

        wait_for(up, 20, fleet.logs)
        assert http_get(port, "/healthz?again")[0] == 200
    for _, process in started.values():
        Fleet.kill(process, signal.SIGTERM)

    json_log = log_of(fleet, "review-api", started["json"][1])
    found = records(json_log)
    assert {r["process"] for r in found} == {"review-api"}
    assert any(r["message"].startswith("Started server process") for r in found)
    (access,) = [r for r in found if r["logger"] == "uvicorn.access" and "again" in r["path"]]
    assert access["method"] == "GET" and access["status"] == 200 and access["level"] == "INFO"
    assert access["message"].endswith('"GET /healthz?again HTTP/1.1" 200')

    text_log = log_of(fleet, "review-api", started["text"][1])
    line = r'^\S+ \S+ INFO uvicorn\.access: 127\.0\.0\.1:\d+ - "GET /healthz\?again HTTP/1\.1" 200$'
    assert re.search(line, text_log.read_text(), re.M), text_log.read_text()


def test_json_formatter_fields() -> None:
    formatter = logs.JsonFormatter()

    def format(message: str, **extra: Any) -> dict[str, Any]:
        record = logging.makeLogRecord({"name": "evaluator.x", "levelname": "INFO",
                                        "msg": message, **extra})  # fmt: skip
        document: dict[str, Any] = json.loads(formatter.format(record))
        return document

    plain = format("hello")
    assert set(plain) == KEYS and plain["ts"].endswith("Z")
    with logs.bound(trace_id="t-1", batch_id="b-1", tenant=None):
        inside = format("about a trace", judge="faithfulness")
        overridden = format("another trace", trace_id="t-2")
    assert inside["trace_id"] == "t-1" and inside["batch_id"] == "b-1"
    assert inside["judge"] == "faithfulness"
    assert "tenant" not in inside and overridden["trace_id"] == "t-2"
    assert "trace_id" not in format("after")
    try:
        raise ValueError("boom")
    except ValueError:
        failed = format("failed", exc_info=sys.exc_info())
    assert "ValueError: boom" in failed["exc_info"] and failed["message"] == "failed"
    assert logs.about_payload(b'{"trace_id": "t-3", "tenant": "acme"}') == {
        "trace_id": "t-3",
        "tenant": "acme",
    }
    assert logs.about_payload(b"\xff not json") == {} and logs.about_payload(b"[1]") == {}
    one = [{"trace": '{"trace_id": "t-4"}', "judges": ["faithfulness"]}]
    assert logs.about_entries(one, "b-2") == {
        "batch_id": "b-2",
        "trace_id": "t-4",
        "judge": "faithfulness",
    }
    assert logs.about_entries(one * 2, "b-3") == {"batch_id": "b-3"}


def test_servers_listen_on_loopback_outside_containers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(cli_common, "CONTAINER_MARKERS", (str(tmp_path / "no-such-file"),))
    assert cli_common.default_host() == "127.0.0.1"
    (tmp_path / ".dockerenv").touch()
    monkeypatch.setattr(cli_common, "CONTAINER_MARKERS", (str(tmp_path / ".dockerenv"),))
    assert cli_common.default_host() == "0.0.0.0"
    monkeypatch.setattr(cli_common, "CONTAINER_MARKERS", ())
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert cli_common.default_host() == "0.0.0.0"
    for command in ("review-api", "otlp-receiver"):
        result = CliRunner().invoke(cli_app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "127.0.0.1" in result.output and "0.0.0.0" in result.output, result.output
