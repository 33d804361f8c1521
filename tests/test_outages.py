"""Dependency outages: every long-running process waits them out and resumes on its own.

Each process runs as a real subprocess against a private redis-server and a private PostgreSQL
cluster that the test takes down mid-run and brings back on the same port. After the outage the
test checks that the process is the same one (never exited), that nothing was lost or
duplicated, that /readyz answered 503 during the outage and 200 after, and that the process
logged one line when the dependency went and one when it returned (not one per retry).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from helpers import (
    Fleet,
    PostgresCluster,
    RedisServer,
    fleet_env,
    http_get,
    make_trace,
    postgres_unavailable_reason,
    wait_for,
)
from kombu import Connection, Consumer, Exchange, Producer, Queue
from langfuse_server import FakeLangfuse
from test_otlp_receiver import export, rag_spans

from evaluator.broker import TRANSPORT, requeue_orphans, transport_for
from evaluator.constants import DEAD_STREAM, TRACE_FIELD, TRACES_STREAM
from evaluator.ops.embedded import free_port
from evaluator.ops.health import Backoff, Readiness, serve
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import ScoreRecord, TraceRecord

FleetFactory = Callable[[dict[str, str]], Fleet]
CHECKS_PER_TRACE = 7  # text RAG trace: every heuristic but JSON validity and forbidden phrases
# Short backoff and probe intervals keep each outage test within tens of seconds.
FAST = {"outage_backoff_max_s": 1, "health_probe_interval_s": 0.3}


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    reason = postgres_unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = PostgresCluster().init().start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    status, body = http_get(port, "/readyz")
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"body": body}


def wait_readyz(
    port: int, status: int, timeout: float, logs: Callable[[], str], down: str | None = None
) -> dict[str, Any]:
    """Poll /readyz until it answers ``status`` (and, given ``down``, names that dependency as
    down: the health prober may notice Redis before Celery notices its broker)."""
    seen: dict[str, Any] = {}

    def answered() -> bool:
        code, seen["body"] = readyz(port)
        return code == status and (down is None or down in seen["body"].get("down", {}))

    wait_for(answered, timeout, lambda: f"/readyz {status} on {port}: {seen}\n{logs()}")
    return seen["body"]


def log_of(fleet: Fleet, process: subprocess.Popen[bytes]) -> str:
    index = fleet.processes.index(process)
    return "".join(p.read_text(errors="replace") for p in fleet.log_dir.glob(f"*-{index}.log"))


def traces(first: int, n: int) -> list[Any]:
    return [make_trace(i) for i in range(first, first + n)]


def xadd_atomically(client: redis.Redis, batch: list[Any]) -> None:
    """Publish a batch in one MULTI/EXEC: all of it or none (an app's retrying publisher)."""
    pipe = client.pipeline(transaction=True)
    for trace in batch:
        pipe.xadd(TRACES_STREAM, {TRACE_FIELD: trace.model_dump_json()})
    pipe.execute()


def start_process(fleet: Fleet, name: str, args: list[str], **env: object) -> Any:
    overrides = {f"EVALFLEET_{k.upper()}": str(v) for k, v in env.items()}
    return fleet._start(name, args, {**fleet.env, **overrides})


def alive(*processes: subprocess.Popen[bytes]) -> bool:
    return all(p.poll() is None for p in processes)


# -- the heuristics worker under a Redis SHUTDOWN (the kombu crash) ---------------------------


def test_worker_survives_redis_shutdown_under_load(
    tmp_path: Path, redis_server: RedisServer, sqlite_url: str, fleet_factory: FleetFactory
) -> None:
    """SHUTDOWN NOSAVE of the broker while the worker is busy at 1,000 traces/s, back 3 s
    later on the same port: the same worker (and sampler) goes on and scores everything,
    including what is published afterwards, exactly once.

    With kombu's own transport this crashed the worker ("Unrecoverable error: AttributeError
    ... 'hostname'", see evaluator.broker) in 3 of 4 runs here: the crash needs tasks delivered
    and not acked with a BRPOP in flight (4 children, so the prefetch window is rarely full)
    and the pidbox's pub/sub socket noticed first (``pubsub_first``)."""
    env = fleet_env(
        redis_server.url,
        sqlite_url,
        heuristics_batch_size=100,
        broker_visibility_timeout_s=15,  # what the outage left unacked comes back within the test
        **FAST,
    )
    fleet = fleet_factory(env)
    worker_port, sampler_port = free_port(), free_port()
    worker = fleet.worker(concurrency=4, queues="heuristics", metrics_port=worker_port)
    sampler = fleet.sampler(metrics_port=sampler_port)
    for port in (worker_port, sampler_port):
        wait_readyz(port, 200, 60, fleet.logs)
    store = SQLStore(Settings(database_url=sqlite_url).sqlalchemy_url)
    client = redis_server.client()

    # An app publishing 1,000 traces/s for 4 s, retrying a batch while Redis is away. The
    # thread is a daemon with a stop flag: if the test fails while Redis is down, a retrying
    # publisher must not keep pytest from exiting (it once held CI until its time limit).
    stop_publishing = threading.Event()

    def publish() -> None:
        for start in range(0, 4000, 100):
            began = time.monotonic()
            while not stop_publishing.is_set():
                try:
                    xadd_atomically(redis_server.client(), traces(start, 100))
                    break
                except redis.ConnectionError:
                    time.sleep(0.2)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - began)))

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        wait_for(lambda: store.count(TraceRecord) >= 500, 30, fleet.logs)
        scored_at_shutdown = store.count(TraceRecord)
        redis_server.shutdown(pubsub_first=True)
        down = time.monotonic()
        assert scored_at_shutdown < 4000  # the worker was busy when the broker went away
        # Unready while Redis is away; alive throughout.
        wait_readyz(worker_port, 503, 5, fleet.logs, down="broker")
        wait_readyz(sampler_port, 503, 5, fleet.logs, down="redis")
        time.sleep(max(0.0, 3.0 - (time.monotonic() - down)))
        assert alive(worker, sampler), fleet.logs()
        redis_server.start()
        publisher.join(60)
        assert not publisher.is_alive(), "the publisher did not finish after the restart"
    finally:
        stop_publishing.set()

    xadd_atomically(client, traces(4000, 500))  # published after the restart
    wait_for(lambda: store.count(TraceRecord) == 4500, 60, lambda: f"all scored\n{fleet.logs()}")
    assert store.count(ScoreRecord) == 4500 * CHECKS_PER_TRACE
    assert client.xlen(DEAD_STREAM) == 0
    for port in (worker_port, sampler_port):
        wait_readyz(port, 200, 15, fleet.logs)
    assert alive(worker, sampler), fleet.logs()

    worker_log, sampler_log = log_of(fleet, worker), log_of(fleet, sampler)
    assert "Unrecoverable error" not in worker_log
    assert worker_log.count("worker: broker unavailable") == 1, worker_log[-3000:]
    assert worker_log.count("worker: broker available again") == 1, worker_log[-3000:]
    assert worker_log.count("consumer: Cannot connect") <= 1  # not one per reconnect attempt
    assert sampler_log.count("sampler: redis unavailable") == 1, sampler_log
    assert sampler_log.count("sampler: redis available again") == 1, sampler_log
    store.close()
    client.close()

    Fleet.kill(worker, signal.SIGTERM)
    assert worker.returncode == 0  # a clean stop is status 0 (and an error, not: see below)


def test_guarded_transport_closes_what_collect_left_open(tmp_path: Path) -> None:
    """The sequence behind the crash, step by step: messages delivered and not acked, a BRPOP
    in flight, an auto-delete fanout queue (the pidbox) on a second channel; the broker goes
    away; celery calls Connection.collect() then Connection.close(). kombu's own transport
    raises AttributeError (``transport.client.hostname``) from QoS.restore_unacked_once();
    ours closes, the unacked messages stay in the broker's unacked hash, a late ack after the
    broker returns goes through, and no message is lost."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        client = server.client()
        queue = Queue("outage-test", Exchange("outage-test"), routing_key="outage-test")
        connection = Connection(server.url, transport=TRANSPORT)
        with Producer(connection) as producer:
            for i in range(5):
                producer.publish({"i": i}, exchange=queue.exchange, routing_key="outage-test",
                                 declare=[queue])  # fmt: skip
        delivered: list[Any] = []
        consumer = Consumer(
            connection.default_channel,
            [queue],
            callbacks=[lambda _, message: delivered.append(message)],
            prefetch_count=3,
        )
        consumer.consume()
        while len(delivered) < 3:
            connection.drain_events(timeout=2)
        pidbox = Queue("outage-test.pidbox", Exchange("outage-test.pidbox", type="fanout"),
                       auto_delete=True)  # fmt: skip
        Consumer(connection.channel(), [pidbox], callbacks=[lambda *_: None]).consume()
        connection.default_channel._brpop_start()  # the event loop keeps one BRPOP in flight
        assert client.hlen("unacked") == 3

        server.shutdown()
        connection.collect(socket_timeout=1)  # celery's on_connection_error_after_connected
        connection.close()

        server.start()
        assert client.hlen("unacked") == 3
        delivered[0].ack()
        assert client.hlen("unacked") == 2
        # Every message is accounted for: 1 acked, 2 unacked; the 4th, which the BRPOP in flight
        # took off the queue as the broker went, is put back (kombu would have dropped it); the
        # 5th never left the queue.
        assert client.llen("outage-test") == 1
        assert requeue_orphans(Connection(server.url, transport=TRANSPORT)) == 1
        # The unacked ones go back too (in a worker: after the visibility timeout).
        delivered[1].channel.qos.restore_unacked()
        assert client.hlen("unacked") == 0 and client.llen("outage-test") == 4
        client.close()
    finally:
        server.stop()


def test_message_taken_as_the_broker_goes_is_put_back(tmp_path: Path) -> None:
    """BRPOP took the message off its queue and Redis went before kombu recorded it as unacked:
    kombu drops it (it exists nowhere else); ours keeps it and, once connected again, puts it
    back at the front of its queue."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        client = server.client()
        queue = Queue("outage-orphan", Exchange("outage-orphan"), routing_key="outage-orphan")
        connection = Connection(server.url, transport=TRANSPORT)
        with Producer(connection) as producer:
            producer.publish({"batch": 1}, exchange=queue.exchange,
                             routing_key="outage-orphan", declare=[queue])  # fmt: skip
        delivered: list[Any] = []
        Consumer(connection.default_channel, [queue], prefetch_count=1,
                 callbacks=[lambda _, message: delivered.append(message)]).consume()  # fmt: skip
        # What the event loop does: connect the channel's client and send BRPOP.
        connection.transport.cycle._register_BRPOP(connection.default_channel)
        wait_for(lambda: client.llen("outage-orphan") == 0, 5, "BRPOP took the message")
        server.shutdown()  # the reply is in our socket; recording it as unacked will fail
        with pytest.raises(redis.ConnectionError):
            connection.drain_events(timeout=2)
        assert not delivered  # never handed to the consumer: it has not run
        connection.collect(socket_timeout=1)

        server.start()
        assert (client.llen("outage-orphan"), client.hlen("unacked")) == (0, 0)
        again = Connection(server.url, transport=TRANSPORT)
        assert requeue_orphans(again) == 1
        assert client.llen("outage-orphan") == 1
        Consumer(again.default_channel, [queue],
                 callbacks=[lambda _, message: delivered.append(message)]).consume()  # fmt: skip
        again.drain_events(timeout=2)
        assert [m.payload for m in delivered] == [{"batch": 1}]
        assert delivered[0].delivery_info["redelivered"]
        delivered[0].ack()
        again.close()
        client.close()
    finally:
        server.stop()


def test_worker_exit_status_is_not_lost() -> None:
    """celery's "Unrecoverable error" is exit status 1 inside celery; Celery.worker_main()
    dropped it (exit 0, taken for a clean stop by Restart=on-failure); run_worker keeps it."""
    script = """
import sys
from celery import Celery, bootsteps
from evaluator.broker import run_worker

class Boom(bootsteps.StartStopStep):
    requires = ("celery.worker.components:Pool",)
    def start(self, worker):
        raise RuntimeError("boom")

app = Celery("exit-status", broker="memory://")
app.steps["worker"].add(Boom)
argv = ["worker", "--pool=solo", "--without-gossip", "--without-mingle", "--loglevel=INFO"]
if sys.argv[1] == "worker_main":
    app.worker_main(argv)
else:
    sys.exit(run_worker(app, argv))
"""
    for how, status in (("worker_main", 0), ("run_worker", 1)):
        done = subprocess.run(
            [sys.executable, "-c", script, how], capture_output=True, text=True, timeout=60
        )
        assert "Unrecoverable error: RuntimeError('boom')" in done.stderr + done.stdout
        assert done.returncode == status, (how, done.stderr[-2000:])


def test_sampler_resumes_when_redis_returns_without_its_data(tmp_path: Path) -> None:
    """Redis without persistence restarts empty: the consumer group is gone (NOGROUP). The
    sampler recreates it and goes on with what is published from then on."""
    from test_sampler import Collect

    from evaluator.sampling.sampler import Sampler

    server = RedisServer(tmp_path / "redis", persist=False).start()
    collect, stop = Collect(), threading.Event()
    settings = Settings(redis_url=server.url, sampler_block_ms=100, **FAST)  # type: ignore[arg-type]
    sampler = Sampler(redis.Redis.from_url(server.url), settings, collect, "c1", judges={})
    loop = threading.Thread(target=sampler.run, args=(stop,))
    loop.start()
    try:
        xadd_atomically(server.client(), traces(0, 10))
        wait_for(lambda: len(collect.entries) == 10, 10, "before the restart")
        server.shutdown()
        server.start()
        xadd_atomically(server.client(), traces(10, 10))
        wait_for(lambda: len(collect.entries) == 20, 15, "after the restart")
        assert loop.is_alive()
    finally:
        stop.set()
        loop.join(10)
        server.stop()
    ids = sorted(json.loads(e["trace"])["trace_id"] for e in collect.entries)
    assert ids == [f"t-{i:06d}" for i in range(20)]


# -- PostgreSQL going away under the sampler, the worker and the relay -------------------------


def test_fleet_rides_out_postgres_outage(
    tmp_path: Path,
    postgres: PostgresCluster,
    redis_server: RedisServer,
    fleet_factory: FleetFactory,
) -> None:
    """The database stops (pg_ctl stop -m fast) while the sampler (its reaper), the workers and
    the relay are busy, and starts again 6 s later: none of them exits (the relay used to, rc
    1), every trace is scored once and every score reaches Langfuse exactly once."""
    database_url = postgres.create_database("outage_fleet")
    langfuse = FakeLangfuse()
    langfuse.start()
    try:
        env = {
            **fleet_env(
                redis_server.url,
                database_url,
                heuristics_batch_size=25,
                claim_interval_s=0.5,
                reaper_interval_s=1,  # the sampler's reaper meets the outage too
                sink_batch_size=50,
                **FAST,
            ),
            **langfuse.env(),
        }
        fleet = fleet_factory(env)
        ports = {name: free_port() for name in ("worker", "sampler", "relay")}
        worker = fleet.worker(concurrency=2, queues="heuristics", metrics_port=ports["worker"])
        sampler = fleet.sampler(metrics_port=ports["sampler"])
        relay = start_process(
            fleet, "relay", ["relay", "--loglevel", "INFO", "--metrics-port", str(ports["relay"])]
        )
        processes = {"worker": worker, "sampler": sampler, "relay": relay}
        for port in ports.values():
            wait_readyz(port, 200, 60, fleet.logs)
        store = SQLStore(database_url)
        client = redis_server.client()

        xadd_atomically(client, traces(0, 300))
        wait_for(lambda: len(langfuse.scores) == 300 * CHECKS_PER_TRACE, 60, fleet.logs)
        xadd_atomically(client, traces(300, 300))
        wait_for(lambda: store.count(TraceRecord) > 300, 30, fleet.logs)
        store.close()
        postgres.stop()  # mid-run: scoring, the outbox and the relay all have work in flight
        down = time.monotonic()
        xadd_atomically(client, traces(600, 200))  # the app goes on publishing meanwhile
        for name, port in ports.items():
            body = wait_readyz(port, 503, 4, fleet.logs)
            assert "database" in body["down"], (name, body)
        time.sleep(max(0.0, 6.0 - (time.monotonic() - down)))
        assert alive(*processes.values()), fleet.logs()
        postgres.start()

        store = SQLStore(database_url)
        wait_for(lambda: store.count(TraceRecord) == 800, 60, lambda: f"scored\n{fleet.logs()}")
        assert store.count(ScoreRecord) == 800 * CHECKS_PER_TRACE
        wait_for(
            lambda: len(langfuse.scores) == 800 * CHECKS_PER_TRACE,
            30,
            lambda: f"{len(langfuse.scores)} delivered\n{fleet.logs()}",
        )
        sent = [score["id"] for r in langfuse.score_posts() for score in r.body]
        assert len(sent) == len(set(sent)) == 800 * CHECKS_PER_TRACE  # each delivered once
        for port in ports.values():
            wait_readyz(port, 200, 15, fleet.logs)
        assert alive(*processes.values()), fleet.logs()
        for name, process in processes.items():
            text = log_of(fleet, process)
            assert text.count(f"{name}: database unavailable") == 1, (name, text[-3000:])
            assert text.count(f"{name}: database available again") == 1, (name, text[-3000:])
        store.close()
        client.close()
    finally:
        langfuse.stop()


# -- the HTTP servers: review API and OTLP receiver -------------------------------------------


def test_http_servers_ride_out_redis_and_postgres_outages(
    postgres: PostgresCluster, redis_server: RedisServer, fleet_factory: FleetFactory
) -> None:
    """While Redis is down the receiver answers 503 with Retry-After (the exporter retries and
    nothing is lost) and the review API 503 for what needs Redis; while the database is down
    the review API 503s. /readyz says what is down; both serve again on their own."""
    database_url = postgres.create_database("outage_http")
    tokens = {"tok-ana": {"reviewer": "ana", "tenants": ["*"]}}
    env = fleet_env(
        redis_server.url, database_url, reviewer_tokens=tokens, otlp_grace_s=0.3, **FAST
    )
    fleet = fleet_factory(env)
    api_port, otlp_port = free_port(), free_port()
    api = start_process(fleet, "review-api", ["review-api", "--port", str(api_port)])
    receiver = start_process(
        fleet, "otlp-receiver", ["otlp-receiver", "--port", str(otlp_port), "--flushers", "0"]
    )
    for port in (api_port, otlp_port):
        wait_readyz(port, 200, 60, fleet.logs)
    auth = {"Authorization": "Bearer tok-ana"}
    api_url, otlp_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{otlp_port}/v1/traces"
    protobuf = {"Content-Type": "application/x-protobuf"}

    def claim() -> httpx.Response:
        return httpx.post(f"{api_url}/api/claim", json={"n": 1}, headers=auth, timeout=10)

    def queues() -> httpx.Response:
        return httpx.get(f"{api_url}/api/queues", headers=auth, timeout=10)

    assert httpx.post(otlp_url, content=export(rag_spans(1)), headers=protobuf).status_code == 200
    assert claim().status_code == 200

    redis_server.shutdown()
    refused = httpx.post(otlp_url, content=export(rag_spans(2)), headers=protobuf, timeout=10)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    unavailable = claim()
    assert unavailable.status_code == 503 and unavailable.headers["retry-after"] == "5"
    assert unavailable.json() == {"detail": "redis unavailable; retry shortly"}
    assert queues().status_code == 200  # the database alone still serves
    for port in (api_port, otlp_port):
        assert "redis" in wait_readyz(port, 503, 5, fleet.logs)["down"]
    redis_server.start()
    for port in (api_port, otlp_port):
        wait_readyz(port, 200, 10, fleet.logs)
    # The exporter retries what was refused; both traces are published, once each.
    assert httpx.post(otlp_url, content=export(rag_spans(2)), headers=protobuf).status_code == 200
    assert claim().status_code == 200
    client = redis_server.client()
    wait_for(lambda: client.xlen(TRACES_STREAM) == 2, 15, fleet.logs)
    time.sleep(1)  # nothing more comes
    published = [json.loads(f[TRACE_FIELD.encode()]) for _, f in client.xrange(TRACES_STREAM)]
    assert sorted(t["trace_id"] for t in published) == [f"{1:032x}", f"{2:032x}"]
    client.close()

    postgres.stop()
    failed = queues()
    assert failed.status_code == 503 and failed.json()["detail"].startswith("database")
    assert "database" in wait_readyz(api_port, 503, 5, fleet.logs)["down"]
    assert readyz(otlp_port)[0] == 200  # the receiver needs no database
    postgres.start()
    wait_readyz(api_port, 200, 10, fleet.logs)
    assert queues().status_code == 200

    assert alive(api, receiver), fleet.logs()
    api_log, receiver_log = log_of(fleet, api), log_of(fleet, receiver)
    for dependency in ("redis", "database"):
        assert api_log.count(f"review-api: {dependency} unavailable") == 1, api_log
        assert api_log.count(f"review-api: {dependency} available again") == 1, api_log
    assert receiver_log.count("otlp-receiver: redis unavailable") == 1, receiver_log
    assert receiver_log.count("otlp-receiver: redis available again") == 1, receiver_log


# -- the pieces --------------------------------------------------------------------------------


def test_readiness_logs_state_changes_not_retries(caplog: pytest.LogCaptureFixture) -> None:
    readiness = Readiness("sampler")
    readiness.expect("redis")
    assert not readiness.ready and readiness.response()[0] == 503
    with caplog.at_level(logging.INFO, logger="evaluator.ops.health"):
        assert not readiness.up("redis")  # reached at start-up: nothing to announce
        for _ in range(5):
            readiness.down("redis", redis.ConnectionError("Error 111 connecting"))
        assert readiness.status()["down"]["redis"]["failures"] == 5
        assert readiness.response()[0] == 503
        assert readiness.up("redis") and not readiness.up("redis")
    assert readiness.response()[0] == 200
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # one line per state change, none per retry
    assert messages[0].startswith("sampler: redis unavailable (ConnectionError: Error 111")
    assert messages[1].startswith("sampler: redis available again after")
    assert "(5 failed attempts)" in messages[1]


def test_backoff_grows_to_its_cap_and_resets() -> None:
    backoff = Backoff(base_s=0.5, max_s=4)
    delays = [backoff.next() for _ in range(8)]
    assert 0.25 <= delays[0] <= 0.5 and all(2 <= d <= 4 for d in delays[4:])
    backoff.reset()
    assert backoff.next() <= 0.5


def test_metrics_port_serves_readyz() -> None:
    readiness = Readiness("relay")
    port = free_port()
    server = serve(port, readiness, host="127.0.0.1")
    try:
        assert http_get(port, "/readyz")[0] == 200
        readiness.down("database", "connection refused")
        status, body = http_get(port, "/readyz")
        assert status == 503 and json.loads(body)["down"]["database"]["reason"] == (
            "connection refused"
        )
        assert http_get(port, "/healthz") == (200, "ok\n")  # alive: no restart wanted
        assert "evalfleet_dependency_up" in http_get(port, "/metrics")[1]
    finally:
        server.shutdown()
        server.server_close()


def test_guard_applies_to_redis_brokers_only() -> None:
    from evaluator.celery_app import create_app

    assert transport_for("redis://127.0.0.1:6379/0") == TRANSPORT
    assert transport_for("rediss://cache.example:6380/0") is None  # TLS from the scheme
    assert transport_for("sentinel://s1:26379") is None
    app = create_app(Settings(redis_url="redis://127.0.0.1:6379/3"))
    assert app.conf.broker_transport == TRANSPORT
    assert app.conf.broker_connection_max_retries is None  # reconnect forever
