"""The review queue reviewers claim from: Redis consumer groups, leases, labels in SQL.

Each routed item sits in one stream per (priority, tenant, evaluator) with the consumer group
``reviewers``; ``claim`` serves the most urgent queues first (critical safety failures before
anything else), reclaiming items whose lease expired (XAUTOCLAIM: the reviewer vanished) before
reading new ones. A claimed item belongs to one reviewer until they label, release or skip it,
or the lease (``EVALFLEET_REVIEW_LEASE_S``) runs out. Labels go to SQL first and are final: one
label per item, whoever asks; the same reviewer repeating the same label gets it back
(idempotent); anyone else gets ``AlreadyLabelled``; a reviewer whose lease was taken over gets
``LeaseLost``. Only then is the entry acknowledged, so a crash in between re-serves the item,
and ``claim`` acknowledges items it finds already labelled.

Items are turns, agent trajectories or whole sessions (``ReviewItem.level``); a reviewer may
ask for one level (``QueueFilter.level``), which claims read from that level's queues only and
``listing`` / ``counts`` (SQL) filter by (items stored before levels existed are turns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import BaseModel
from sqlalchemy import func, or_
from sqlalchemy import select as sa_select
from sqlmodel import col, select

from evaluator.constants import REVIEW_ENTRIES, REVIEW_GROUP, REVIEW_QUEUES, SKIPPED_PREFIX
from evaluator.models import Level, ReviewItem, ReviewLabel, ReviewStatus, Verdict
from evaluator.review.routing import parse_entry_location, parse_queue_key, queue_level
from evaluator.sinks.outbox import label_outbox_rows
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import ReviewItemRecord, as_utc
from evaluator.streams import text

RELEASED = "released"  # pseudo-consumer holding released items until someone reclaims them


class ReviewError(Exception):
    """A review action that cannot be done; the message says why."""


class NotFound(ReviewError):
    """No such review item (or it was trimmed from its queue)."""


class LeaseLost(ReviewError):
    """The caller does not hold the item's lease: never claimed, expired, or taken over."""


class AlreadyLabelled(ReviewError):
    """The item has its final label, by someone else or with another verdict."""


@dataclass(frozen=True)
class Claimed:
    item: ReviewItem
    queue: str
    entry_id: str
    deliveries: int = 1


@dataclass(frozen=True)
class QueueFilter:
    """Which queues a reviewer may see: tenants (None = all), and optionally one evaluator and
    one level (turn, trajectory, session)."""

    tenants: frozenset[str] | None = None
    evaluator: str | None = None
    level: Level | None = None

    def allows(self, tenant: str | None, evaluator: str, level: Level | None = None) -> bool:
        """``level`` None: not asked (visibility of one item does not depend on it)."""
        if self.evaluator is not None and evaluator != self.evaluator:
            return False
        if self.level is not None and level is not None and level is not self.level:
            return False
        # An empty tenant is no tenant, as its queue key says (``routing.NO_TENANT``).
        return self.tenants is None or (
            tenant is not None and tenant != "" and tenant in self.tenants
        )


class ItemSummary(BaseModel):
    """One review item as a list shows it: without its trace."""

    id: str
    trace_id: str
    evaluator: str
    evaluator_version: str
    level: Level
    session_id: str | None
    priority: int
    tenant: str | None
    status: ReviewStatus
    reasons: list[str]
    created_at: datetime

    @classmethod
    def of(cls, record: ReviewItemRecord) -> ItemSummary:
        return cls(
            id=record.id,
            trace_id=record.trace_id,
            evaluator=record.evaluator,
            evaluator_version=record.evaluator_version,
            level=Level(record.level or Level.TURN.value),
            session_id=record.session_id,
            priority=record.priority,
            tenant=record.tenant,
            status=ReviewStatus(record.status),
            reasons=record.reasons,
            created_at=as_utc(record.created_at),
        )


def _in_scope(scope: QueueFilter) -> list[Any]:
    """SQL conditions for the items a filter allows (a NULL level is a turn: stored before)."""
    conditions: list[Any] = []
    if scope.tenants is not None:
        # An empty tenant is no tenant (``QueueFilter.allows``): never in a tenant's scope.
        tenants = sorted(t for t in scope.tenants if t)
        conditions.append(col(ReviewItemRecord.tenant).in_(tenants))
    if scope.evaluator is not None:
        conditions.append(ReviewItemRecord.evaluator == scope.evaluator)
    if scope.level is Level.TURN:
        conditions.append(or_(col(ReviewItemRecord.level).is_(None),
                              col(ReviewItemRecord.level) == Level.TURN.value))  # fmt: skip
    elif scope.level is not None:
        conditions.append(ReviewItemRecord.level == scope.level.value)
    return conditions


class ReviewQueue:
    def __init__(
        self,
        client: redis.Redis,
        store: SQLStore,
        lease_s: float = 900.0,
        sinks: Sequence[Any] | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.lease_ms = int(lease_s * 1000)
        # Sinks that take labels (Langfuse annotation scores); None: as the environment enables.
        if sinks is None:
            from evaluator.sinks.langfuse import label_sinks

            sinks = label_sinks()
        self.sinks = list(sinks)

    # -- reading -------------------------------------------------------------------------------

    def queues(self, scope: QueueFilter = QueueFilter()) -> list[str]:
        """The queues in scope, most urgent first. A key that does not parse (written before
        tenant names were encoded, with a ":" in one) is in the scope of all-tenant reviewers
        only; ``claim`` checks each item's own tenant anyway."""
        keys = sorted((text(k) for k in self.client.smembers(REVIEW_QUEUES)), reverse=True)
        in_scope = []
        for key in keys:
            try:
                _, tenant, evaluator = parse_queue_key(key)
            except ValueError:
                # Written before tenant encoding, so before levels too: a turn's queue.
                if scope.tenants is None and scope.level in (None, Level.TURN):
                    in_scope.append(key)
                continue
            if scope.allows(tenant, evaluator, queue_level(key)):
                in_scope.append(key)
        return in_scope

    def listing(
        self, scope: QueueFilter, status: ReviewStatus | None = None, limit: int = 50
    ) -> list[ItemSummary]:
        """Review items in scope from SQL, most urgent first, oldest first within a priority."""
        query = select(ReviewItemRecord).where(*_in_scope(scope))
        if status is not None:
            query = query.where(ReviewItemRecord.status == status.value)
        query = query.order_by(
            col(ReviewItemRecord.priority).desc(), col(ReviewItemRecord.created_at)
        ).limit(limit)
        with self.store.session() as session:
            return [ItemSummary.of(record) for record in session.exec(query)]

    def counts(self, scope: QueueFilter) -> list[tuple[str, str | None, Level, str, int]]:
        """(evaluator, tenant, level, status, count) of the review items in scope."""
        level = func.coalesce(col(ReviewItemRecord.level), Level.TURN.value)
        columns = (col(ReviewItemRecord.evaluator), col(ReviewItemRecord.tenant), level,
                   col(ReviewItemRecord.status))  # fmt: skip
        query = sa_select(*columns, func.count()).where(*_in_scope(scope)).group_by(*columns)
        with self.store.session() as session:
            rows = session.execute(query).all()
        return sorted((e, t, Level(lv), s, int(c)) for e, t, lv, s, c in rows)

    def locate(self, item_id: str) -> tuple[str, str]:
        where = self.client.hget(REVIEW_ENTRIES, item_id)
        if where is None:
            raise NotFound(f"no review item {item_id!r}")
        try:
            return parse_entry_location(text(where))
        except ValueError:
            raise NotFound(f"review item {item_id!r} has no valid location") from None

    def holder(self, item_id: str) -> str | None:
        """The reviewer holding the item's lease right now (None: nobody, or it expired)."""
        queue, entry_id = self.locate(item_id)
        pending: Any = self.client.xpending_range(queue, REVIEW_GROUP, entry_id, entry_id, 1)
        if not pending:
            return None
        consumer = text(pending[0]["consumer"])
        if consumer == RELEASED or pending[0]["time_since_delivered"] >= self.lease_ms:
            return None
        return consumer

    def get(self, item_id: str) -> ReviewItem:
        queue, entry_id = self.locate(item_id)
        entries: Any = self.client.xrange(queue, entry_id, entry_id)
        if not entries:
            raise NotFound(f"review item {item_id!r} was trimmed from its queue")
        return ReviewItem.model_validate_json(entries[0][1][b"item"])

    # -- claiming ------------------------------------------------------------------------------

    def claim(self, reviewer: str, n: int = 1, scope: QueueFilter = QueueFilter()) -> list[Claimed]:
        """Up to ``n`` items for ``reviewer``: expired leases first, then new items, most urgent
        queue first."""
        if reviewer == RELEASED:
            raise ReviewError(f"{RELEASED!r} is reserved")
        claimed: list[Claimed] = []
        skipped = {text(i) for i in self.client.smembers(SKIPPED_PREFIX + reviewer)}
        for queue in self.queues(scope):
            for entry_id, fields in self._take(queue, reviewer, n - len(claimed)):
                item = ReviewItem.model_validate_json(fields[b"item"])
                if self.store.label(item.id) is not None:
                    self.client.xack(queue, REVIEW_GROUP, entry_id)  # labelled before a crash
                elif item.id in skipped or not scope.allows(
                    item.tenant, item.evaluator, item.level
                ):
                    # Out of scope despite its queue: a key from before tenant encoding.
                    self._release(queue, entry_id)
                else:
                    claimed.append(Claimed(item, queue, entry_id))
                    self.store.set_review_status(item.id, ReviewStatus.CLAIMED)
            if len(claimed) >= n:
                break
        return claimed

    def _take(self, queue: str, reviewer: str, count: int) -> list[tuple[str, dict[bytes, Any]]]:
        taken: list[tuple[str, dict[bytes, Any]]] = []
        start = "0-0"
        while len(taken) < count:  # leases that ran out, or released items
            reply: Any = self.client.xautoclaim(
                queue, REVIEW_GROUP, reviewer, self.lease_ms, start, count=count - len(taken)
            )
            start_b, entries = reply[0], reply[1]
            taken += [(text(i), f) for i, f in entries if f]  # deleted entries come back empty
            start = text(start_b)
            if start == "0-0":
                break
        if len(taken) < count:
            fresh: Any = self.client.xreadgroup(
                REVIEW_GROUP, reviewer, {queue: ">"}, count=count - len(taken)
            )
            taken += [(text(i), f) for _, entries in fresh for i, f in entries]
        return taken

    def renew(self, item_id: str, reviewer: str) -> None:
        """Extend the lease (a reviewer still reading a long trace)."""
        queue, entry_id = self._held(item_id, reviewer)
        self.client.xclaim(queue, REVIEW_GROUP, reviewer, 0, [entry_id])

    # -- finishing -----------------------------------------------------------------------------

    def _held(self, item_id: str, reviewer: str) -> tuple[str, str]:
        holder = self.holder(item_id)
        if holder != reviewer:
            who = f"held by {holder}" if holder else "not claimed (or the lease expired)"
            raise LeaseLost(f"review item {item_id} is {who}; claim it first")
        return self.locate(item_id)

    def label(
        self,
        item_id: str,
        reviewer: str,
        verdict: Verdict,
        field_scores: dict[str, float | str | bool] | None = None,
        note: str = "",
    ) -> ReviewLabel:
        existing = self.store.label(item_id)
        if existing is None:
            queue, entry_id = self._held(item_id, reviewer)
            item = self.get(item_id)
            label = ReviewLabel(
                id=item.id,
                trace_id=item.trace_id,
                evaluator=item.evaluator,
                evaluator_version=item.evaluator_version,
                reviewer=reviewer,
                verdict=verdict,
                field_scores=field_scores or {},
                note=note,
                labelled_at=datetime.now(UTC),
                trace=item.trace,
            )
            self.store.add_labels([label])  # insert-if-absent: a concurrent label wins once
            existing = self.store.label(item_id)
            assert existing is not None
            self.store.set_review_status(item_id, ReviewStatus.LABELLED)
            self.client.xack(queue, REVIEW_GROUP, entry_id)
        if self.sinks and existing.reviewer == reviewer and existing.verdict == verdict:
            # After the label is stored: a crash in between leaves it unsent until the reviewer
            # repeats the label (idempotent), which writes the same rows (unchanged: not resent).
            rows = label_outbox_rows(self.sinks, [existing], datetime.now(UTC))
            self.store.write_batch([], [], [], outbox=rows)
        if existing.reviewer != reviewer or existing.verdict != verdict:
            raise AlreadyLabelled(
                f"review item {item_id} was labelled {existing.verdict.value} by "
                f"{existing.reviewer} at {existing.labelled_at:%Y-%m-%d %H:%M}Z"
            )
        return existing

    def _release(self, queue: str, entry_id: str) -> None:
        # Handed to a placeholder consumer as if idle for a whole lease: the next claim's
        # XAUTOCLAIM serves it at once.
        self.client.xclaim(queue, REVIEW_GROUP, RELEASED, 0, [entry_id], idle=self.lease_ms)

    def release(self, item_id: str, reviewer: str) -> None:
        """Give the item back for anyone (this reviewer included) to claim."""
        queue, entry_id = self._held(item_id, reviewer)
        self._release(queue, entry_id)
        self.store.set_review_status(item_id, ReviewStatus.PENDING)

    def skip(self, item_id: str, reviewer: str) -> None:
        """Give the item back for others; this reviewer is not served it again."""
        queue, entry_id = self._held(item_id, reviewer)
        self.client.sadd(SKIPPED_PREFIX + reviewer, item_id)
        self._release(queue, entry_id)
        self.store.set_review_status(item_id, ReviewStatus.PENDING)
