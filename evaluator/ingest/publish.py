"""Put traces on the ``evalfleet:traces`` stream. Apps call this; it never touches Celery."""

from __future__ import annotations

from collections.abc import Iterable

import redis

from evaluator.constants import TRACE_FIELD, TRACES_STREAM
from evaluator.models import Trace
from evaluator.settings import Settings, get_settings
from evaluator.streams import text


def _payload(trace: Trace | str | bytes) -> str | bytes:
    # Raw strings/bytes are published as they are (replays of recorded payloads): the sampler is
    # the one validator, and whatever fails there is dead-lettered with its reason.
    if isinstance(trace, Trace):
        return trace.model_dump_json(exclude_none=True, exclude_defaults=True)
    return trace


def publish(
    client: redis.Redis, trace: Trace | str | bytes, settings: Settings | None = None
) -> str:
    """XADD one trace; returns its stream id. The stream is trimmed to ~``stream_maxlen``."""
    settings = settings or get_settings()
    entry_id = client.xadd(
        TRACES_STREAM,
        {TRACE_FIELD: _payload(trace)},
        maxlen=settings.stream_maxlen,
        approximate=True,
    )
    return text(entry_id)


def publish_many(
    client: redis.Redis,
    traces: Iterable[Trace | str | bytes],
    settings: Settings | None = None,
    chunk_size: int = 500,
) -> list[str]:
    """XADD many traces in pipelined round trips of ``chunk_size``; returns their stream ids."""
    settings = settings or get_settings()
    ids: list[str] = []
    pipe = client.pipeline(transaction=False)
    pending = 0
    for trace in traces:
        pipe.xadd(
            TRACES_STREAM,
            {TRACE_FIELD: _payload(trace)},
            maxlen=settings.stream_maxlen,
            approximate=True,
        )
        pending += 1
        if pending >= chunk_size:
            ids += [text(i) for i in pipe.execute()]
            pending = 0
    if pending:
        ids += [text(i) for i in pipe.execute()]
    return ids
