"""Small Redis helpers shared by publishers, the sampler, the worker and the CLI."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from redis.client import Pipeline
from redis.typing import EncodableT, FieldT

from evaluator.constants import DEAD_STREAM, SAMPLER_GROUP, TRACES_STREAM
from evaluator.settings import Settings


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
