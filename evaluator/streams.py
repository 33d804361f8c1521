"""Small Redis helpers shared by publishers, the sampler, the worker and the CLI."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from redis.client import Pipeline
from redis.typing import EncodableT, FieldT

from evaluator.constants import DEAD_STREAM, SAMPLER_GROUP, SAMPLER_LEASE_PREFIX, TRACES_STREAM
from evaluator.settings import Settings

log = logging.getLogger(__name__)


def connect(url: str) -> redis.Redis:
    """A client for ``url``; responses stay bytes so payloads round-trip unchanged."""
    return redis.Redis.from_url(url, socket_timeout=30, health_check_interval=30)


def text(value: bytes | str | int) -> str:
    """A Redis value as text; bytes that are not UTF-8 come out escaped (``\\xff``), never as
    an exception: keys, ids and payloads can hold anything a client wrote."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def ensure_group(
    client: redis.Redis, stream: str = TRACES_STREAM, group: str = SAMPLER_GROUP
) -> None:
    """Create the consumer group (and the stream) if missing; reading starts at the beginning."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def stream_id_ms(entry_id: str) -> int:
    """The publish time (ms since epoch) encoded in an auto-generated stream id."""
    return int(entry_id.split("-", 1)[0])


def group_info(client: redis.Redis, stream: str, group: str) -> dict[str, Any]:
    """pending / lag / consumers of a consumer group, or zeros when it does not exist yet."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return {"pending": 0, "lag": 0, "consumers": 0}
    for info in groups:
        if text(info["name"]) == group:
            return {
                "pending": int(info["pending"]),
                "lag": int(info.get("lag") or 0),
                "consumers": int(info["consumers"]),
            }
    return {"pending": 0, "lag": 0, "consumers": 0}


def queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting in a Celery queue on the Redis broker (a list named after the queue)."""
    return int(client.llen(queue))


def one_line(reason: str, limit: int = 1000) -> str:
    """A reason fit for a log line and a dead letter: line breaks escaped, length capped (the
    reason may quote what a client sent)."""
    return reason.replace("\r", "\\r").replace("\n", "\\n")[:limit]


@dataclass(frozen=True)
class DeadLetterLimits:
    """How much of a dead letter is kept: the stream's approximate length, and the payload's
    first bytes (with its full size and sha256, so a large one can still be identified)."""

    maxlen: int = 100_000
    payload_bytes: int = 16 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> DeadLetterLimits:
        return cls(settings.dead_stream_maxlen, settings.dead_letter_payload_bytes)


def dead_letter(
    reason: str,
    payload: bytes | str,
    source_id: str,
    consumer: str,
    failed_at: str,
    keep_bytes: int = DeadLetterLimits.payload_bytes,
) -> dict[FieldT, EncodableT]:
    """The fields of a dead-letter entry: why, the original payload (its first ``keep_bytes``),
    its size and digest, and where it came from."""
    raw = payload.encode("utf-8", "backslashreplace") if isinstance(payload, str) else payload
    return {
        "reason": one_line(reason),
        "payload": raw[:keep_bytes],
        "payload_bytes": len(raw),
        "payload_sha256": hashlib.sha256(raw).hexdigest(),
        "truncated": int(len(raw) > keep_bytes),
        "source_id": source_id,
        "consumer": consumer,
        "failed_at": failed_at,
    }


def add_dead_letters(
    client: redis.Redis | Pipeline,
    letters: Iterable[tuple[str, bytes | str, str]],
    consumer: str,
    limits: DeadLetterLimits,
) -> None:
    """XADD (reason, payload, source id) dead letters, trimming the stream to ~``maxlen``.
    Given a pipeline, the caller executes it (in one MULTI with its XACK)."""
    failed_at = datetime.now(UTC).isoformat()
    for reason, payload, source_id in letters:
        fields = dead_letter(reason, payload, source_id, consumer, failed_at, limits.payload_bytes)
        client.xadd(DEAD_STREAM, fields, maxlen=limits.maxlen, approximate=True)


def oldest_unhandled_id(
    client: redis.Redis, stream: str = TRACES_STREAM, group: str = SAMPLER_GROUP
) -> str | None:
    """The oldest entry read but not acknowledged, else the oldest not yet read, else None."""
    try:
        summary: Any = client.xpending(stream, group)
    except redis.ResponseError:
        return None
    if summary and summary.get("pending"):
        return text(summary["min"])
    groups: Any = client.xinfo_groups(stream)
    last = next((g["last-delivered-id"] for g in groups if text(g["name"]) == group), None)
    if last is None:
        return None
    after: Any = client.xrange(stream, min=f"({text(last)}", count=1)
    return text(after[0][0]) if after else None


# -- consumer names: one live sampler per name, dead consumers removed ----------------------------


class ConsumerNameTaken(Exception):
    """Another live sampler holds this consumer name: two samplers must never read as one
    consumer (each would re-read and dispatch the other's pending entries)."""


# Renew our lease; set it again if it lapsed while nobody took the name. 1: held, 0: another's.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Take over a dead holder's lease, only if it is still that holder's.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Remove a consumer only if it still holds nothing and no sampler holds its name: XGROUP
# DELCONSUMER drops the consumer's pending entries, which would then never be delivered again.
_DELETE_IF_EMPTY = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22), or ""
    when there is no such process, only its zombie (killed, not yet reaped), or no /proc."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and ")"
    if len(fields) <= 19 or fields[0] in ("Z", "X"):
        return ""
    return fields[19]


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_identity() -> list[str]:
    """This process, as a lease token names it: host, boot, PID namespace, pid, start time.
    With the first three equal, another process can tell from /proc whether it still runs."""
    return [
        socket.gethostname(),
        _read("/proc/sys/kernel/random/boot_id"),
        _pid_namespace(),
        str(os.getpid()),
        _start_ticks(os.getpid()),
    ]


def holder_is_gone(token: str) -> bool:
    """Whether the process that wrote lease ``token`` has certainly ended: it ran on this host,
    since this boot, in this PID namespace, and no process with its pid and start time runs
    (a sampler killed and restarted in place). Anything else (another host or container, no
    /proc) cannot be told: its lease must lapse."""
    parts = token.split("|")
    mine = _process_identity()
    if len(parts) != 6 or parts[:3] != mine[:3] or not all(mine[1:3]):
        return False
    pid, started = parts[3], parts[4]
    if not pid.isdigit() or not started:
        return False
    return _start_ticks(int(pid)) != started


class ConsumerLease:
    """A sampler's hold on its consumer name: a key (``SAMPLER_LEASE_PREFIX`` + name) holding
    this process's token, set NX with a TTL and renewed by the sampler loop. A second sampler
    asking for a held name is refused; the lease of a sampler killed on this host is taken over
    at once (its process is provably gone), anyone else's lapses after ``ttl_s``."""

    def __init__(self, client: redis.Redis, name: str, ttl_s: float) -> None:
        self.client = client
        self.name = name
        self.key = f"{SAMPLER_LEASE_PREFIX}{name}"
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.token = "|".join([*_process_identity(), uuid.uuid4().hex])
        self._renewed_at = 0.0

    def acquire(self) -> bool:
        """Take the name: free, already ours, or held by a process that is gone. False while
        another live (or unknowable) sampler holds it."""
        for _ in range(3):  # the holder's key may lapse between SET NX and GET
            if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
                self._renewed_at = time.monotonic()
                return True
            raw = self.client.get(self.key)
            if raw is None:
                continue
            holder = text(raw)
            if holder == self.token:
                self.renew(force=True)
                return True
            if not holder_is_gone(holder):
                return False
            taken = self.client.eval(_TAKE_OVER, 1, self.key, holder, self.token, self.ttl_ms)
            if taken:
                log.info("consumer %s: took over the lease of a sampler that is gone", self.name)
                self._renewed_at = time.monotonic()
                return True
        return False

    def renew(self, force: bool = False) -> None:
        """Extend the lease, at most every third of its TTL unless ``force``. Raises
        ConsumerNameTaken when another sampler took the name meanwhile (this one's lease
        lapsed: Redis was out of reach for longer than the TTL)."""
        now = time.monotonic()
        if not force and now - self._renewed_at < self.ttl_ms / 3000:
            return
        if not self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
            raise ConsumerNameTaken(
                f"consumer name {self.name!r} was taken by another sampler ({self.holder()}) "
                "while this one's lease had lapsed; stopping so two never read as one"
            )
        self._renewed_at = now

    def release(self) -> None:
        """Free the name (a clean stop), if it is still ours."""
        self.client.eval(_RELEASE, 1, self.key, self.token)

    def holder(self) -> str:
        """Who holds the name, for messages: host and pid of the holder's token."""
        raw = self.client.get(self.key)
        if raw is None:
            return "no one now"
        parts = text(raw).split("|")
        return f"host {parts[0]}, pid {parts[3]}" if len(parts) == 6 else text(raw)[:100]


def lease_consumer_name(
    client: redis.Redis, requested: str | None, ttl_s: float, slots: int
) -> ConsumerLease:
    """The consumer name a sampler starts under, leased. ``requested`` (``--consumer`` /
    EVALFLEET_SAMPLER_CONSUMER) or else the first of ``<hostname>-0`` … ``-<slots - 1>`` no
    live sampler holds: stable per host and slot, so a restarted sampler gets its name back and
    re-reads its own pending entries at once instead of after the idle reclaim."""
    if requested:
        lease = ConsumerLease(client, requested, ttl_s)
        if not lease.acquire():
            raise ConsumerNameTaken(
                f"consumer name {requested!r} is held by a live sampler ({lease.holder()}); "
                "stop that one or give this one another --consumer / EVALFLEET_SAMPLER_CONSUMER "
                "(or neither: a free <hostname>-<slot> name is picked)"
            )
        return lease
    host = socket.gethostname()
    for slot in range(slots):
        lease = ConsumerLease(client, f"{host}-{slot}", ttl_s)
        if lease.acquire():
            return lease
    raise ConsumerNameTaken(
        f"consumer names {host}-0 to {host}-{slots - 1} are all held by live samplers; raise "
        "EVALFLEET_SAMPLER_CONSUMER_SLOTS or name this sampler with --consumer"
    )


def prune_consumers(
    client: redis.Redis,
    idle_ms: int,
    stream: str = TRACES_STREAM,
    group: str = SAMPLER_GROUP,
) -> list[str]:
    """Remove the group's consumers that hold nothing, were idle at least ``idle_ms`` and whose
    name no sampler holds (dead samplers, which XREADGROUP would otherwise keep listed
    forever); returns their names. One with pending entries stays: XAUTOCLAIM moves them."""
    try:
        consumers: Any = client.xinfo_consumers(stream, group)
    except redis.ResponseError:  # no stream or group yet
        return []
    removed = []
    for consumer in consumers:
        name = text(consumer["name"])
        if int(consumer["pending"]) or int(consumer["idle"]) < idle_ms:
            continue
        lease_key = f"{SAMPLER_LEASE_PREFIX}{name}"
        if client.eval(_DELETE_IF_EMPTY, 2, stream, lease_key, group, name):
            removed.append(name)
    if removed:
        log.info("removed %d dead consumers of %s: %s", len(removed), group, ", ".join(removed))
    return removed
