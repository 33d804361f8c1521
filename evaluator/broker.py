"""The workers' side of broker outages: a guard in kombu's Redis transport, readiness from the
consumer's connection, and an exit status that says when a worker stopped on an error.

Why the guard (celery 5.7.0 / kombu 5.7.0, the newest releases; no upstream fix yet): when the
broker goes away, celery's ``Consumer.on_connection_error_after_connected`` calls
``Connection.collect()`` and then, new in celery 5.7.0 (celery PR #10242), ``Connection.close()``
guarded only against connection errors. ``collect()`` closes every channel, but kombu's
``redis.Channel.close()`` itself talks to the server before it marks the channel closed (it
reads the reply of the BRPOP in flight, deletes the auto-delete pidbox queue): against a server
that is gone it raises half-way and the channel stays open; ``Transport.close_connection()``
stops at the first channel that raises; then ``collect()`` detaches the transport
(``transport.client = None``). The ``close()`` that follows closes the task channel again and
now gets as far as ``QoS.restore_unacked_once()``: with messages delivered and not acked (the
tasks prefetched or running: only under load) it opens a new connection pool, whose parameters
come from ``transport.client.hostname`` -> ``AttributeError: 'NoneType' object has no attribute
'hostname'``. That is not a connection error, nothing on the way catches it, and the worker
stops with "Unrecoverable error". It takes a BRPOP in flight while tasks are delivered and not
acked (a partly full prefetch window: likelier with more children) and the event loop noticing
the broken pidbox (pub/sub) socket before the BRPOP one (tests/test_outages.py reproduces it).
The same AttributeError from ``_connparams`` of a detached transport was kombu #582 and #970.

The guard (``Channel`` below): a channel keeps the kombu connection it was opened for and uses it
when its transport has been detached. Cleanup then fails the way it does when the server is
down (a connection error, which kombu and celery swallow): the unacked messages stay in the
broker's unacked hash, tasks that were running finish and ack late through the same channel
once Redis is back, and anything left is restored after the visibility timeout.

A second hole, found by the same test (a SHUTDOWN under load lost a batch of 100 traces in the
first runs): kombu takes a message off its queue with BRPOP, then records it as unacked (ZADD +
HSET). Under load a BRPOP is answered just before Redis goes, and the record fails: the message
then exists only in the worker's memory, and kombu drops it. ``QoS`` below keeps such a message,
and the consumer puts it back at the front of its queue once it is connected again
(``requeue_orphans``); if the record was in fact written, the message also comes back after the
visibility timeout and runs twice, which is harmless: scores are idempotent.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlparse

from celery import Celery, bootsteps
from kombu.transport import redis as kombu_redis

from evaluator.ops.health import BROKER, DATABASE, PROCESS, REDIS, Prober, database_check
from evaluator.settings import Settings

log = logging.getLogger(__name__)

TRANSPORT = "evaluator.broker:Transport"


# Messages taken off a queue whose unacked record could not be written: (payload, exchange,
# routing key), to be put back when the broker answers again.
_orphans: list[tuple[Any, str, str]] = []
_orphans_lock = threading.Lock()


class QoS(kombu_redis.QoS):
    """kombu's ack emulation, keeping a message it could not record as unacked (see the
    module) instead of dropping it. The message was not handed to celery, so it has not run."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        try:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
        except self.channel.connection_errors:
            delivery = message.delivery_info
            with _orphans_lock:
                _orphans.append((message._raw, delivery["exchange"], delivery["routing_key"]))
            log.warning(
                "the broker went away as task message %s was taken off %s; it goes back to the "
                "queue when the broker returns",
                delivery_tag,
                delivery["routing_key"],
            )
            raise


def requeue_orphans(connection: Any) -> int:
    """Put the messages ``QoS`` kept back at the front of their queues (where kombu restores
    unacked messages: BRPOP takes from the right); returns how many.
    What cannot be put back now (the broker went again) is kept for the next connection."""
    with _orphans_lock:
        pending = list(_orphans)
        _orphans.clear()
    if not pending:
        return 0
    done = 0
    try:
        channel = connection.default_channel
        for payload, exchange, routing_key in pending:
            with channel.conn_or_acquire() as client, client.pipeline() as pipe:
                channel._do_restore_message(payload, exchange, routing_key, pipe)
                pipe.execute()
            done += 1
    finally:
        with _orphans_lock:
            _orphans[:0] = pending[done:]
    return done


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, remembering the connection it was opened for, with the ``QoS``
    above (see the module)."""

    QoS = QoS
    _opened_for: Any = None

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        self._opened_for = connection.client
        super().__init__(connection, **kwargs)  # type: ignore[no-untyped-call]

    def _connparams(self, asynchronous: bool = False) -> Any:
        transport = self.connection
        if transport is None or transport.client is not None or self._opened_for is None:
            return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
        # Detached by Connection.collect(): build the parameters from the connection this
        # channel was opened for, and leave the transport detached.
        transport.client = self._opened_for
        try:
            return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
        finally:
            transport.client = None


class Transport(kombu_redis.Transport):
    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """Our transport for ``redis://`` brokers. Other schemes (``rediss://``, ``sentinel://``...)
    keep kombu's, which takes TLS and failover from the scheme."""
    return TRANSPORT if urlparse(broker_url).scheme == "redis" else None


class _FirstConnectErrorOnly(logging.Filter):
    """celery logs "consumer: Cannot connect to ...: Trying again in N seconds" at every retry;
    keep the first of each outage (the next connection resets it)."""

    def __init__(self) -> None:
        super().__init__()
        self.logged = False

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("consumer: Cannot connect"):
            if self.logged:
                return False
            self.logged = True
        return True


_connect_errors = _FirstConnectErrorOnly()


class BrokerReadiness(bootsteps.StartStopStep):  # type: ignore[misc]
    """Broker up once the consumer is connected and consuming; down while celery reconnects
    after losing the connection (its ``restart`` stops every consumer step)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        logger = logging.getLogger("celery.worker.consumer.consumer")
        if _connect_errors not in logger.filters:
            logger.addFilter(_connect_errors)
        PROCESS.process = "worker"
        PROCESS.expect(BROKER)

    def start(self, c: Any) -> None:
        _connect_errors.logged = False
        if requeued := requeue_orphans(c.connection):
            log.warning("put %d task message(s) back on their queues after the outage", requeued)
        PROCESS.up(BROKER)

    def stop(self, c: Any) -> None:
        # Also called when the worker shuts down (then the blueprint is closing, not running).
        if c.blueprint is not None and c.blueprint.state == bootsteps.RUN:
            PROCESS.down(BROKER, "connection to the broker lost; reconnecting")

    def shutdown(self, c: Any) -> None:
        return


class DependencyProbes(bootsteps.StartStopStep):  # type: ignore[misc]
    """Checks Redis and the database from the worker's main process, whose own work does not
    touch them (the pool's children do): /readyz and one log line per outage."""

    requires = ("celery.worker.components:Pool",)
    settings: Settings | None = None

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.prober: Prober | None = None

    def start(self, w: Any) -> None:
        from evaluator.store.engine import make_engine
        from evaluator.streams import connect

        if self.settings is None:
            return
        checks = {
            REDIS: connect(self.settings.redis_url).ping,
            DATABASE: database_check(make_engine(self.settings.sqlalchemy_url)),
        }
        for dependency in checks:
            PROCESS.expect(dependency)
        self.prober = Prober(PROCESS, checks, self.settings.health_probe_interval_s).start()

    def stop(self, w: Any) -> None:
        if self.prober is not None:
            self.prober.stop()
            self.prober = None

    terminate = stop


def configure(app: Celery, settings: Settings) -> None:
    """What lets a worker ride out broker outages: reconnect for as long as it takes (celery
    gives up after 100 attempts, about 50 minutes, by default), the guarded transport, and the
    readiness steps."""
    app.conf.broker_connection_max_retries = None  # None: retry forever
    transport = transport_for(settings.celery_broker_url)
    if transport is not None:
        app.conf.broker_transport = transport
    app.steps["consumer"].add(BrokerReadiness)
    app.steps["worker"].add(type("DependencyProbes", (DependencyProbes,), {"settings": settings}))


def run_worker(app: Celery, argv: list[str]) -> int:
    """Run ``celery worker`` with ``argv`` and return its exit status.

    ``Celery.worker_main()`` runs celery's click command with ``standalone_mode=False`` and drops
    its return value, so a worker that stopped on an "Unrecoverable error" (exit status 1 inside
    celery) made ``evalfleet worker`` exit 0, which ``Restart=on-failure`` and Procfile runners
    take for a clean stop. This is ``Celery.start()`` keeping the status.
    """
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app
    try:
        code = celery_command.main(args=argv, standalone_mode=False)
    finally:
        celery_command.params[0].default = None
    return code if isinstance(code, int) else 0
