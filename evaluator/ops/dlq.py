"""Dead letters: inspect them and put them back on the traces stream once the cause is fixed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from evaluator.constants import DEAD_STREAM, TRACE_FIELD, TRACES_STREAM
from evaluator.settings import Settings
from evaluator.streams import text


@dataclass
class DeadLetter:
    id: str
    reason: str
    payload: bytes  # the first bytes kept (see ``truncated``)
    source_id: str
    consumer: str
    failed_at: str
    payload_bytes: int  # the original payload's size
    payload_sha256: str
    truncated: bool

    @property
    def payload_text(self) -> str:
        """The kept payload as text, bytes that are not UTF-8 escaped (``\\xff``)."""
        return text(self.payload)


class TruncatedPayload(ValueError):
    """A dead letter kept only part of its payload: it cannot be redriven as it is."""


def _from_entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
    def field(name: str) -> str:
        return text(fields.get(name.encode(), b""))

    payload = fields.get(b"payload", b"")
    return DeadLetter(
        id=text(entry_id),
        reason=field("reason"),
        payload=payload,
        source_id=field("source_id"),
        consumer=field("consumer"),
        failed_at=field("failed_at"),
        payload_bytes=int(field("payload_bytes") or len(payload)),
        payload_sha256=field("payload_sha256"),
        truncated=field("truncated") == "1",
    )


def list_dead(client: redis.Redis, limit: int = 50) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters."""
    entries: Any = client.xrange(DEAD_STREAM, count=limit)
    return [_from_entry(i, f) for i, f in entries]


def get_dead(client: redis.Redis, dead_id: str) -> DeadLetter | None:
    entries: Any = client.xrange(DEAD_STREAM, min=dead_id, max=dead_id)
    return _from_entry(*entries[0]) if entries else None


def redrive(
    client: redis.Redis, dead_ids: list[str], settings: Settings, payload: bytes | None = None
) -> list[str]:
    """Re-publish dead letters (optionally with a corrected payload) and remove them, atomically.

    Returns the new stream ids. Unknown ids raise KeyError, and letters that kept only part of
    their payload (without a replacement) TruncatedPayload, before anything is changed.
    """
    found = {dead_id: get_dead(client, dead_id) for dead_id in dead_ids}
    letters = [letter for letter in found.values() if letter is not None]
    if len(letters) < len(found):
        missing = [dead_id for dead_id, letter in found.items() if letter is None]
        raise KeyError(f"no dead letter with id {', '.join(missing)}")
    cut = [letter for letter in letters if letter.truncated]
    if cut and payload is None:
        first = cut[0]
        raise TruncatedPayload(
            f"dead letter {first.id} kept {len(first.payload):,} of {first.payload_bytes:,} "
            f"payload bytes (sha256 {first.payload_sha256}); redrive it with --payload-file"
        )
    pipe = client.pipeline(transaction=True)
    for letter in letters:
        pipe.xadd(
            TRACES_STREAM,
            {TRACE_FIELD: payload if payload is not None else letter.payload},
            maxlen=settings.stream_maxlen,
            approximate=True,
        )
        pipe.xdel(DEAD_STREAM, letter.id)
    results = pipe.execute()
    return [text(r) for r in results[0::2]]
