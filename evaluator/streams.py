"""Small Redis helpers shared by publishers, the sampler, the worker and the CLI."""

from __future__ import annotations

from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from evaluator.constants import SAMPLER_GROUP, TRACES_STREAM


def connect(url: str) -> redis.Redis:
    """A client for ``url``; responses stay bytes so payloads round-trip unchanged."""
    return redis.Redis.from_url(url, socket_timeout=30, health_check_interval=30)


def text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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


def dead_letter(
    reason: str, payload: bytes | str, source_id: str, consumer: str, failed_at: str
) -> dict[FieldT, EncodableT]:
    """The fields of a dead-letter entry: why, the original payload, and where it came from."""
    return {
        "reason": reason,
        "payload": payload,
        "source_id": source_id,
        "consumer": consumer,
        "failed_at": failed_at,
    }


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
