"""Review routing: which scores send a trace to humans, and the idempotent hand-off to the stream.

Rules: any failed high-severity (or critical) check or judge score, or any numeric score under
a threshold configured in settings, at every level: a turn's scores, an agent run's trajectory
scores, and a completed session's scores (its Trace is ``sessions.conversation.session_trace``)
route the same way, and the item knows its level (``ReviewItem.for_scores``). ``hand_off`` is
the one call for scores already stored (session evaluation); batch scoring stores the items in
its own transaction and calls ``route`` and ``publish``.
A trace is routed at most once per (evaluator, evaluator version), however often its batch is
redelivered: the ReviewItem id is deterministic, the SQL insert keeps an existing row, and the
XADD to ``evalfleet:review`` is guarded by a SET NX marker in the same Lua script.

``evalfleet:review`` is the log of everything routed; the same script also adds the item to its
claimable queue (one stream per priority, level, tenant and evaluator, with the reviewers'
consumer group), which ``evaluator.review.queue`` serves.
"""

from __future__ import annotations

import string
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from evaluator.constants import (
    REVIEW_CHECKED_UNTIL,
    REVIEW_ENTRIES,
    REVIEW_GROUP,
    REVIEW_QUEUE_PREFIX,
    REVIEW_QUEUES,
    REVIEW_ROUTED_PREFIX,
    REVIEW_STREAM,
)
from evaluator.models import Level, ReviewItem, Score, ScoreStatus, ScoreType, Severity, Trace
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import as_utc

CRITICAL_PRIORITY = 20  # e.g. a safety judge's "unsafe": reviewed before anything else
HIGH_SEVERITY_PRIORITY = 10
THRESHOLD_PRIORITY = 5

_ROUTE_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  local logged = redis.call('XADD', KEYS[2], '*', 'id', ARGV[2], 'priority', ARGV[3],
                            'evaluator', ARGV[4], 'tenant', ARGV[5], 'item', ARGV[6])
  local entry = redis.call('XADD', KEYS[3], '*', 'id', ARGV[2], 'item', ARGV[6])
  redis.pcall('XGROUP', 'CREATE', KEYS[3], ARGV[7], '0')  -- BUSYGROUP when it exists
  redis.call('SADD', KEYS[4], KEYS[3])
  redis.call('HSET', KEYS[5], ARGV[2], KEYS[3] .. ' ' .. entry)
  return logged
end
return false
"""


def republish_unrouted(
    client: redis.Redis,
    router: ReviewRouter,
    store: SQLStore,
    now: datetime | None = None,
    grace_s: float = 300.0,
) -> int:
    """Put review items that reached SQL but not the review stream (a worker killed between its
    commit and its XADD) on the stream; returns how many. Checks items older than ``grace_s``
    (a live worker publishes within it) and newer than the routed markers' lifetime (older ones
    may have had theirs expire), from where the last pass stopped."""
    now = now or datetime.now(UTC)
    oldest = now - timedelta(seconds=router.routed_ttl_s - 3600)
    checked: Any = client.get(REVIEW_CHECKED_UNTIL)
    after = max(oldest, datetime.fromisoformat(checked.decode())) if checked else oldest
    records = store.reviews_created_between(after, now - timedelta(seconds=grace_s))
    if not records:
        return 0
    pipe = client.pipeline(transaction=False)
    for record in records:
        pipe.exists(REVIEW_ROUTED_PREFIX + record.id)
    missing = [r for r, routed in zip(records, pipe.execute(), strict=True) if not routed]
    items = [ReviewItem.model_validate(r.model_dump()) for r in missing]
    published = router.publish(client, items)
    client.set(REVIEW_CHECKED_UNTIL, as_utc(records[-1].created_at).isoformat())
    return len(published)


# Redis keys are built from untrusted names (a trace's tenant is whatever the app sent) and split
# again on ":" (queue keys) and " " (``REVIEW_ENTRIES`` values). Each name is therefore
# percent-encoded (UTF-8) outside these characters, "%" included, so an encoded name never
# holds a separator, "*" or the "{}" of Redis Cluster hash tags. Names made only of them encode
# to themselves: the keys of ordinary tenants ("acme", "globex-eu", "t_1") are byte-identical to
# those written before the encoding, and a running fleet's queues keep working across it.
_KEY_SAFE = frozenset(string.ascii_letters + string.digits + "_-")
NO_TENANT = "-"  # the tenant part of an item without a tenant (or with an empty one, as before)


def encode_key_part(name: str) -> str:
    """``name`` as one component of a Redis key: reversible, with no ":", " " or "%" left."""
    if name == NO_TENANT:
        return "%2D"  # a tenant literally named "-" is not "no tenant"
    return "".join(
        char
        if char in _KEY_SAFE
        else "".join(f"%{byte:02X}" for byte in char.encode(errors="surrogatepass"))
        for char in name
    )


def decode_key_part(part: str) -> str:
    """The name ``encode_key_part`` encoded (strict: a "%" not followed by two hex digits, or
    bytes that are not UTF-8, raise ValueError)."""
    if "%" not in part:
        return part
    pieces = part.split("%")
    raw = bytearray(pieces[0].encode())
    for piece in pieces[1:]:
        if len(piece) < 2 or not all(c in string.hexdigits for c in piece[:2]):
            raise ValueError(f"not a percent-encoded key part: {part!r}")
        raw.append(int(piece[:2], 16))
        raw += piece[2:].encode()
    return raw.decode(errors="surrogatepass")  # total, as encoding is: lone surrogates too


def queue_key(priority: int, tenant: str | None, evaluator: str, level: Level = Level.TURN) -> str:
    """The claimable queue of a review item; the zero-padded priority sorts urgent first.

    A trajectory or session item's queue carries its level after the priority
    (``010/session:acme:goal``), so a reviewer who asks for one level reads only its queues;
    a turn's key is as it always was. The level sits in the priority part because that part is
    the only one our own code always wrote (a key from before tenant encoding may hold any
    tenant text, ":" included, in the parts after it)."""
    tenant_part = encode_key_part(tenant) if tenant else NO_TENANT
    head = f"{priority:03d}" if level is Level.TURN else f"{priority:03d}/{level.value}"
    return f"{REVIEW_QUEUE_PREFIX}{head}:{tenant_part}:{encode_key_part(evaluator)}"


def _key_head(part: str) -> tuple[int, Level] | None:
    priority, slash, level = part.partition("/")
    if not priority.isdigit() or (slash and level not in _QUEUED_LEVELS):
        return None
    return int(priority), Level(level) if slash else Level.TURN


_QUEUED_LEVELS = frozenset({Level.TRAJECTORY.value, Level.SESSION.value})


def queue_level(key: str) -> Level:
    """The level of a ``queue_key`` (turn for a key from before levels); ValueError for a key
    that is not one."""
    head = _key_head(key.removeprefix(REVIEW_QUEUE_PREFIX).split(":", 1)[0])
    if head is None:
        raise ValueError(f"not a review queue key: {key!r}")
    return head[1]


def parse_queue_key(key: str) -> tuple[int, str | None, str]:
    """(priority, tenant, evaluator) of a ``queue_key``; ValueError for anything else, such as
    a key written before the encoding with a ":" in its tenant (``ReviewQueue.queues`` serves
    those to all-tenant reviewers only, never to a tenant it might be mistaken for)."""
    parts = key.removeprefix(REVIEW_QUEUE_PREFIX).split(":")
    head = _key_head(parts[0]) if len(parts) == 3 else None
    if head is None:
        raise ValueError(f"not a review queue key: {key!r}")
    _, tenant, evaluator = parts
    tenant_name = None if tenant == NO_TENANT else decode_key_part(tenant)
    return head[0], tenant_name, decode_key_part(evaluator)


def parse_entry_location(location: str) -> tuple[str, str]:
    """(queue, entry id) of a ``REVIEW_ENTRIES`` value, "<queue key> <entry id>" as
    ``_ROUTE_ONCE`` writes it. Split at the last space: stream entry ids never hold one and
    encoded queue keys neither, but keys written before the encoding may."""
    queue, _, entry_id = location.rpartition(" ")
    if not queue or not entry_id:
        raise ValueError(f"not a review entry location: {location!r}")
    return queue, entry_id


@dataclass
class ReviewRouter:
    thresholds: dict[str, float] = field(default_factory=dict)
    routed_ttl_s: int = 30 * 24 * 3600

    def failing(self, score: Score) -> int | None:
        """The review priority this score asks for, or None when it does not need review."""
        if score.status is not ScoreStatus.OK:
            return None
        if score.passed is False and score.severity is Severity.CRITICAL:
            return CRITICAL_PRIORITY
        if score.passed is False and score.severity is Severity.HIGH:
            return HIGH_SEVERITY_PRIORITY
        threshold = self.thresholds.get(score.name)
        if (
            threshold is not None
            and score.data_type is ScoreType.NUMERIC
            and score.value is not None
            and score.value < threshold
        ):
            return THRESHOLD_PRIORITY
        return None

    def route(self, trace: Trace, scores: list[Score]) -> list[ReviewItem]:
        """One ReviewItem per evaluator (version) with failing scores, at the scores' level
        (a session's scores with its session Trace: a session item)."""
        by_evaluator: dict[tuple[str, str], list[tuple[int, Score]]] = defaultdict(list)
        for score in scores:
            priority = self.failing(score)
            if priority is not None:
                by_evaluator[(score.evaluator, score.evaluator_version)].append((priority, score))
        return [
            ReviewItem.for_scores(trace, [s for _, s in hits], priority=max(p for p, _ in hits))
            for hits in by_evaluator.values()
        ]

    def publish(self, client: redis.Redis, items: list[ReviewItem]) -> list[ReviewItem]:
        """XADD items not routed before; returns those added to the review stream."""
        if not items:
            return []
        script = client.register_script(_ROUTE_ONCE)
        pipe = client.pipeline(transaction=False)
        for item in items:
            script(
                keys=[
                    REVIEW_ROUTED_PREFIX + item.id,
                    REVIEW_STREAM,
                    queue_key(item.priority, item.tenant, item.evaluator, item.level),
                    REVIEW_QUEUES,
                    REVIEW_ENTRIES,
                ],
                args=[
                    self.routed_ttl_s,
                    item.id,
                    item.priority,
                    item.evaluator,
                    item.tenant or "",
                    item.model_dump_json(exclude_none=True),
                    REVIEW_GROUP,
                ],
                client=pipe,
            )
        return [item for item, added in zip(items, pipe.execute(), strict=True) if added]

    def hand_off(
        self, client: redis.Redis, store: SQLStore, trace: Trace, scores: list[Score]
    ) -> list[ReviewItem]:
        """Route ``scores`` of ``trace`` (any level) to review: the items are stored
        (insert-if-absent, so a repeated hand-off keeps a reviewer's state) and then published
        once; returns the items published now. For callers whose scores are stored already,
        such as session evaluation with ``session_trace(session)`` and its scores. A crash
        between the two steps leaves the item in SQL, where ``republish_unrouted`` finds it."""
        items = self.route(trace, scores)
        if not items:
            return []
        store.write_batch([], [], items)
        return self.publish(client, items)
