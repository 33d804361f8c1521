"""Durable delivery of scores to external sinks (Langfuse, OpenTelemetry): an outbox and a relay.

Workers never call a sink. They write one outbox row per (sink, score) in the same transaction
as the score itself, at every level: a heuristics or judge batch for turn and trajectory scores,
the session task (sessions/evaluate.py) for session scores, each against the Trace it is about
(a session's is its whole conversation, ``trace_id`` the session subject), and each sink decides
from the score's level where it goes (a Langfuse session score, the last turn's OTel trace).
``evalfleet relay`` delivers due rows in batches, marks them delivered only on the sink's
confirmation, backs off while a sink is down and keeps permanent rejections with their reason.
So a sink that is down for hours loses nothing and never slows scoring, and one sink failing
never holds up another (each sink has its own rows and backoff).

A redelivered Celery batch re-writes the same rows; the content digest leaves unchanged ones
alone (no second delivery) and re-queues a score whose content changed.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from evaluator.models import ReviewLabel, Score, Trace, stable_id
from evaluator.ops import metrics
from evaluator.ops.health import DATABASE, PROCESS, Backoff, Readiness, outage_of
from evaluator.settings import Settings
from evaluator.sinks.base import Sink, SinkUnavailable
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import OutboxRecord, as_utc

log = logging.getLogger(__name__)

PENDING, DELIVERED, REJECTED = "pending", "delivered", "rejected"


def _row(
    sink: str, score_id: str, trace_id: str, payload: Any, created_at: datetime, now: datetime
) -> dict[str, Any]:
    # Serialised once: stored as is and hashed for the digest. The time is kept apart (it
    # changes on every re-run, the content need not).
    body = json.dumps(payload, separators=(",", ":"), default=str)
    return {
        "id": f"{sink}:{score_id}",
        "sink": sink,
        "score_id": score_id,
        "trace_id": trace_id,
        "payload": body,
        "digest": stable_id(body),
        "created_at": created_at,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "last_error": None,
        "updated_at": now,
    }


def outbox_rows(
    sinks: Sequence[Sink], scores: Sequence[Score], traces: dict[str, Trace], now: datetime
) -> list[dict[str, Any]]:
    """The outbox rows for a batch of scores (written by the caller with the scores)."""
    rows = []
    for sink in sinks:
        for score in scores:
            payload = sink.payload(score, traces[score.trace_id])
            if isinstance(payload, str):
                metrics.SINK_SKIPPED.labels(sink.name, payload).inc()
                continue
            rows.append(_row(sink.name, score.id, score.trace_id, payload, score.created_at, now))
    return rows


def label_outbox_rows(
    sinks: Sequence[Any], labels: Sequence[ReviewLabel], now: datetime
) -> list[dict[str, Any]]:
    """Outbox rows for human review labels, for the sinks that take them (those with a
    ``label_payloads(label)`` method, giving (score id, payload or why not) per score: Langfuse
    annotation scores). Written by the review queue once the label is stored; delivered by the
    relay like any score row (same digest rule: writing them again changes nothing)."""
    rows = []
    for sink in sinks:
        make = getattr(sink, "label_payloads", None)
        if make is None:
            continue
        for label in labels:
            for score_id, payload in make(label):
                if isinstance(payload, str):
                    metrics.SINK_SKIPPED.labels(sink.name, payload).inc()
                    continue
                rows.append(
                    _row(sink.name, score_id, label.trace_id, payload, label.labelled_at, now)
                )
    return rows


@dataclass
class RelayCounts:
    delivered: int = 0
    rejected: int = 0
    retried: int = 0  # rows left pending for another attempt (the sink down, or transient)
    transient: int = 0  # of those, rows the sink answered with a transient per-item error


def _otel_signals(settings: Settings) -> list[str]:
    return [signal.strip() for signal in settings.otel_sink.split(",") if signal.strip()]


def enabled_sinks(settings: Settings) -> list[str]:
    """Names of the sinks the environment enables."""
    from evaluator.sinks.langfuse import LangfuseSettings

    names = ["langfuse"] if LangfuseSettings().enabled else []
    return names + (["otel"] if _otel_signals(settings) else [])


def build_sinks(settings: Settings) -> list[Sink]:
    """The enabled sinks (the same list in workers, which write outbox rows, and the relay)."""
    sinks: list[Sink] = []
    for name in enabled_sinks(settings):
        if name == "langfuse":
            from evaluator.sinks.langfuse import LangfuseSettings, LangfuseSink

            sinks.append(LangfuseSink(LangfuseSettings()))
        else:
            from evaluator.sinks.otel import OTelSink

            sinks.append(OTelSink.otlp(_otel_signals(settings)))
    return sinks


def _deliver(
    sink: Sink, payloads: dict[str, dict[str, Any]]
) -> tuple[dict[str, str], dict[str, str]]:
    """(rejected, transient) rows of one delivery. A sink that can tell the rows it could not
    take now from the others (Langfuse's 207 names each event's outcome) has
    ``deliver_each(payloads) -> (rejected, retry)``: only those rows wait for a retry, the
    rest is settled at once. Any other sink takes or leaves the batch as a whole."""
    deliver_each = getattr(sink, "deliver_each", None)
    if deliver_each is None:
        return sink.deliver(payloads), {}
    rejected, transient = deliver_each(payloads)
    return dict(rejected), dict(transient)


class SinkRelay:
    """Moves outbox rows to their sinks. Several relays may run against PostgreSQL (rows are
    claimed with SKIP LOCKED and a lease); against SQLite run one.

    A database outage never stops it: ``run`` backs off and retries until the database is back
    (evaluator.ops.health: one log line when it goes, one when it returns, /readyz unready
    meanwhile). Rows a sink confirmed while the database could not record it are kept in memory
    and marked first when it returns, so they are not sent again when their lease runs out."""

    def __init__(
        self,
        store: SQLStore,
        sinks: Sequence[Sink],
        batch_size: int = 200,
        lease_s: float = 120.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 300.0,
        retention: timedelta = timedelta(days=7),
        outage_backoff_max_s: float = 10.0,
        readiness: Readiness = PROCESS,
    ) -> None:
        self.store = store
        self.sinks = {sink.name: sink for sink in sinks}
        self.batch_size = batch_size
        self.lease = timedelta(seconds=lease_s)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retention = retention
        self.outage_backoff_max_s = outage_backoff_max_s
        self.readiness = readiness
        self.counts = {name: RelayCounts() for name in self.sinks}
        # (row ids, when, column values) decided but not yet written: the database was away.
        self._unsettled: list[tuple[list[str], datetime, dict[str, Any]]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> SinkRelay:
        return cls(
            SQLStore(settings.sqlalchemy_url),
            build_sinks(settings),
            batch_size=settings.sink_batch_size,
            backoff_max_s=settings.sink_backoff_max_s,
            retention=timedelta(seconds=settings.sink_retention_s),
            outage_backoff_max_s=settings.outage_backoff_max_s,
        )

    def _claim(self, sink: str, now: datetime) -> list[tuple[str, int, dict[str, Any]]]:
        """Due rows of one sink, leased to this relay so no other relay sends them meanwhile."""
        with Session(self.store.engine) as session:
            query = (
                select(
                    OutboxRecord.id,
                    OutboxRecord.attempts,
                    OutboxRecord.payload,
                    OutboxRecord.created_at,
                )
                .where(OutboxRecord.sink == sink)
                .where(OutboxRecord.status == PENDING)
                .where(col(OutboxRecord.next_attempt_at) <= now)
                .order_by(col(OutboxRecord.next_attempt_at))
                .limit(self.batch_size)
            )
            if self.store.engine.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = [
                (row_id, tries, {**json.loads(body), "timestamp": as_utc(at).isoformat()})
                for row_id, tries, body, at in session.exec(query)
            ]
            if rows:
                session.execute(
                    update(OutboxRecord)
                    .where(col(OutboxRecord.id).in_([r[0] for r in rows]))
                    .values(next_attempt_at=now + self.lease)
                )
            session.commit()
        return rows

    def _settle(self, ids: list[str], now: datetime, **values: Any) -> None:
        """Record what became of claimed rows; kept for later if the database is away."""
        if ids:
            self._unsettled.append((ids, now, values))
        self._write_unsettled()

    def _write_unsettled(self) -> None:
        while self._unsettled:
            ids, now, values = self._unsettled[0]
            self._write_settlement(ids, now, values)
            self._unsettled.pop(0)

    def _write_settlement(self, ids: list[str], now: datetime, values: dict[str, Any]) -> None:
        with Session(self.store.engine) as session:
            session.execute(
                update(OutboxRecord)
                .where(col(OutboxRecord.id).in_(ids))
                .values(updated_at=now, **values)
            )
            session.commit()

    def _backoff(self, attempts: int) -> timedelta:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** min(attempts, 30))
        return timedelta(seconds=random.uniform(ceiling / 2, ceiling))

    def drain_sink(self, name: str) -> int:
        """Deliver one batch of due rows of one sink; returns how many rows it handled."""
        now = datetime.now(UTC)
        rows = self._claim(name, now)
        if not rows:
            return 0
        counts = self.counts[name]
        payloads = {row_id: payload for row_id, _, payload in rows}
        try:
            rejected, transient = _deliver(self.sinks[name], payloads)
        except SinkUnavailable as exc:
            attempts = max(a for _, a, _ in rows) + 1
            log.debug("sink %s down (%d rows, attempt %d): %s", name, len(rows), attempts, exc)
            self.readiness.down(f"sink:{name}", exc)  # logged once per outage
            counts.retried += len(rows)
            metrics.SINK_DELIVERIES.labels(name, "retried").inc(len(rows))
            self._settle(
                [r[0] for r in rows],
                now,
                attempts=OutboxRecord.attempts + 1,
                next_attempt_at=datetime.now(UTC) + self._backoff(attempts),
                last_error=str(exc)[:1000],
            )
            return len(rows)
        self.readiness.up(f"sink:{name}")
        delivered = [r[0] for r in rows if r[0] not in rejected and r[0] not in transient]
        counts.delivered += len(delivered)
        counts.rejected += len(rejected)
        metrics.SINK_DELIVERIES.labels(name, "delivered").inc(len(delivered))
        metrics.SINK_DELIVERIES.labels(name, "rejected").inc(len(rejected))
        for row_id, reason in rejected.items():
            log.error("sink %s rejected %s for good: %s", name, row_id, reason)
            self._unsettled.append(
                ([row_id], now, {"status": REJECTED, "last_error": reason[:1000]})
            )
        if transient:
            self._retry_transient(name, rows, transient, now)
        self._settle(delivered, now, status=DELIVERED, last_error=None)
        return len(rows)

    def _retry_transient(
        self,
        name: str,
        rows: list[tuple[str, int, dict[str, Any]]],
        transient: dict[str, str],
        now: datetime,
    ) -> None:
        """Rows the sink could not take now while it took the rest of the batch: each waits
        its own backoff (by its own attempts) and stays pending, with the reason."""
        counts = self.counts[name]
        counts.retried += len(transient)
        counts.transient += len(transient)
        metrics.SINK_DELIVERIES.labels(name, "retried").inc(len(transient))
        metrics.SINK_TRANSIENT_ITEMS.labels(name).inc(len(transient))
        log.debug("sink %s could not take %d rows now; retrying them", name, len(transient))
        answered = datetime.now(UTC)  # backoff from the answer, as for a sink that is down
        for row_id, attempts, _ in rows:
            if row_id in transient:
                self._unsettled.append(
                    (
                        [row_id],
                        now,
                        {
                            "attempts": OutboxRecord.attempts + 1,
                            "next_attempt_at": answered + self._backoff(attempts + 1),
                            "last_error": transient[row_id][:1000],
                        },
                    )
                )

    def drain_once(self) -> int:
        """One batch per sink: a slow or failing sink never starves the others."""
        return sum(self.drain_sink(name) for name in self.sinks)

    def backlog(self) -> dict[str, tuple[int, float]]:
        """Per sink: undelivered rows and the age in seconds of the oldest one."""
        now = datetime.now(UTC)
        result = {name: (0, 0.0) for name in self.sinks}
        with Session(self.store.engine) as session:
            query = (
                select(OutboxRecord.sink, func.count(), func.min(OutboxRecord.updated_at))
                .where(OutboxRecord.status == PENDING)
                .group_by(OutboxRecord.sink)
            )
            for sink, count, oldest in session.exec(query):
                result[sink] = (int(count), (now - as_utc(oldest)).total_seconds())
        for sink, (count, age) in result.items():
            metrics.SINK_BACKLOG.labels(sink).set(count)
            metrics.SINK_OLDEST_PENDING_AGE.labels(sink).set(age)
        return result

    def prune(self, older_than: timedelta) -> int:
        """Forget delivered rows older than ``older_than`` (after which a redelivered batch would
        be sent again, so keep it well above the broker's visibility timeout)."""
        cutoff = datetime.now(UTC) - older_than
        table = OutboxRecord.__table__  # type: ignore[attr-defined]
        with Session(self.store.engine) as session:
            result = session.connection().execute(
                table.delete().where(table.c.status == DELIVERED).where(table.c.updated_at < cutoff)
            )
            session.commit()
        return int(result.rowcount or 0)

    def run(
        self,
        stop: threading.Event,
        idle_sleep_s: float = 0.5,
        exit_when_idle: bool = False,
    ) -> dict[str, RelayCounts]:
        """Deliver until ``stop`` is set (or, with exit_when_idle, until nothing is due).
        Database outages are waited out, however long (see the class)."""
        last_housekeeping = 0.0
        if not self.sinks:
            if not exit_when_idle:
                stop.wait()
            return self.counts
        backoff = Backoff(max_s=self.outage_backoff_max_s)
        while not stop.is_set():
            try:
                self._write_unsettled()
                handled = self.drain_once()
                if time.monotonic() - last_housekeeping > 10:
                    self.backlog()
                    self.prune(self.retention)
                    last_housekeeping = time.monotonic()
            except Exception as exc:
                if outage_of(exc) != DATABASE:
                    raise
                self.readiness.down(DATABASE, exc)
                stop.wait(backoff.next())
                continue
            backoff.reset()
            self.readiness.up(DATABASE)
            if handled == 0:
                if exit_when_idle:
                    break
                stop.wait(idle_sleep_s)
        try:
            self._write_unsettled()
            self.backlog()
        except Exception as exc:
            if outage_of(exc) != DATABASE:
                raise
            log.warning(
                "stopping with the database away: %d settlements not recorded (their "
                "rows are sent again when their lease runs out)",
                len(self._unsettled),
            )
        return self.counts

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()
        self.store.close()
