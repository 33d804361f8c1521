"""Assembling OpenTelemetry spans into complete traces, held in Redis until they are done.

Spans of one trace may arrive in several requests, out of order, to any receiver process (or
in-process exporter). Each span is appended to the trace's Redis list; the trace's due time is
kept in a sorted set: once its root span has arrived (the SDK exports a span when it ends) it is
due ``grace`` after the last span; without a root it is due ``max_wait`` after its first span and
is then published with ``metadata.partial = true``. A flusher publishes due traces with a Lua
script that XADDs the Trace and deletes the spans in one step, and only if no span arrived since
they were read: a restart loses nothing and a trace is published once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from evaluator.constants import TRACE_FIELD, TRACES_STREAM
from evaluator.ingest.otel import Span, spans_to_trace
from evaluator.ingest.otlp_proto import decode, encode_json
from evaluator.settings import Settings
from evaluator.sinks import metrics
from evaluator.streams import text

log = logging.getLogger(__name__)

SPANS_PREFIX = "evalfleet:otlp:spans:"
META_PREFIX = "evalfleet:otlp:meta:"
PENDING = "evalfleet:otlp:pending"

# KEYS: spans list, meta hash, pending zset. ARGV: trace id, now ms, grace ms, max wait ms,
# has-root flag, max spans, then the spans. Returns the list length, or -1 when the trace is full.
_ADD = """
local length = redis.call('LLEN', KEYS[1])
if length + (#ARGV - 6) > tonumber(ARGV[6]) then return -1 end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 7))
redis.call('HSETNX', KEYS[2], 'first', ARGV[2])
if ARGV[5] == '1' then redis.call('HSET', KEYS[2], 'root', '1') end
local due = tonumber(redis.call('HGET', KEYS[2], 'first')) + tonumber(ARGV[4])
if redis.call('HGET', KEYS[2], 'root') == '1' then
  due = math.min(due, tonumber(ARGV[2]) + tonumber(ARGV[3]))
end
redis.call('ZADD', KEYS[3], due, ARGV[1])
return length + (#ARGV - 6)
"""

# KEYS: spans list, meta hash, pending zset, traces stream. ARGV: trace id, spans read, now ms,
# payload ('' drops the trace), stream maxlen, stream field. 1 when published (or dropped), 0 when
# stale.
_FINISH = """
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[2]) then return 0 end
local due = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[3]) then return 0 end
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', ARGV[6], ARGV[4])
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""


@dataclass
class FlushCounts:
    published: int = 0
    partial: int = 0
    dropped: int = 0  # no GenAI span: nothing to evaluate


# Per trace id: whether the root span is among them, and the encoded spans (see otlp_proto).
Held = tuple[bool, list[bytes]]


class SpanAssembler:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._add = client.register_script(_ADD)
        self._finish = client.register_script(_FINISH)

    def pending(self) -> int:
        return int(self.client.zcard(PENDING))

    def add(self, spans: list[Span]) -> int:
        """Hold decoded spans (OTLP/JSON, the in-process exporter); returns how many were
        refused because their trace is over the span limit."""
        groups: dict[str, Held] = {}
        for span in spans:
            has_root, entries = groups.get(span.trace_id, (False, []))
            entries.append(encode_json(span))
            groups[span.trace_id] = (has_root or span.parent_id is None, entries)
        return self.add_encoded(groups)

    def add_encoded(self, groups: dict[str, Held]) -> int:
        """Hold encoded spans by trace id: (whether the group holds the root, entries)."""
        now_ms = int(time.time() * 1000)
        s = self.settings
        pipe = self.client.pipeline(transaction=False)
        for trace_id, (has_root, entries) in groups.items():
            self._add(
                keys=[SPANS_PREFIX + trace_id, META_PREFIX + trace_id, PENDING],
                args=[
                    trace_id,
                    now_ms,
                    int(s.otlp_grace_s * 1000),
                    int(s.otlp_max_wait_s * 1000),
                    "1" if has_root else "0",
                    s.otlp_max_spans_per_trace,
                    *entries,
                ],
                client=pipe,
            )
        results = pipe.execute()
        total = sum(len(entries) for _, entries in groups.values())
        refused = sum(
            len(entries)
            for (_, entries), result in zip(groups.values(), results, strict=True)
            if result == -1
        )
        metrics.OTLP_SPANS.labels("accepted").inc(total - refused)
        metrics.OTLP_SPANS.labels("refused_trace_full").inc(refused)
        return refused

    def flush(self, limit: int = 500) -> FlushCounts:
        """Publish every due trace (up to ``limit``), in two pipelined round trips."""
        now_ms = int(time.time() * 1000)
        counts = FlushCounts()
        due: Any = self.client.zrangebyscore(PENDING, "-inf", now_ms, start=0, num=limit)
        trace_ids = [text(raw_id) for raw_id in due]
        if not trace_ids:
            metrics.OTLP_PENDING.set(self.pending())
            return counts
        reads = self.client.pipeline(transaction=False)
        for trace_id in trace_ids:
            reads.lrange(SPANS_PREFIX + trace_id, 0, -1)
            reads.hget(META_PREFIX + trace_id, "root")
        stored: list[Any] = reads.execute()
        finishes = self.client.pipeline(transaction=False)
        outcomes = []
        for index, trace_id in enumerate(trace_ids):
            raw_spans, root = stored[2 * index], stored[2 * index + 1]
            trace = spans_to_trace([decode(r) for r in raw_spans]) if raw_spans else None
            payload = ""
            if trace is not None:
                if root is None:
                    trace.metadata["partial"] = True
                payload = trace.model_dump_json(exclude_none=True, exclude_defaults=True)
            self._finish(
                keys=[SPANS_PREFIX + trace_id, META_PREFIX + trace_id, PENDING, TRACES_STREAM],
                args=[
                    trace_id,
                    len(raw_spans),
                    now_ms,
                    payload,
                    self.settings.stream_maxlen,
                    TRACE_FIELD,
                ],
                client=finishes,
            )
            outcomes.append((trace is None, root is None))
        for done, (dropped, partial) in zip(finishes.execute(), outcomes, strict=True):
            if not done:
                continue  # a span arrived meanwhile, or another flusher took it
            if dropped:
                counts.dropped += 1
            else:
                counts.published += 1
                counts.partial += 1 if partial else 0
        metrics.OTLP_TRACES.labels("published").inc(counts.published - counts.partial)
        metrics.OTLP_TRACES.labels("partial").inc(counts.partial)
        metrics.OTLP_TRACES.labels("dropped_no_genai").inc(counts.dropped)
        metrics.OTLP_PENDING.set(self.pending())
        return counts

    def run_flusher(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """Flush until ``stop`` is set; Redis errors are logged and retried."""
        while not stop.is_set():
            try:
                counts = self.flush()
            except redis.RedisError as exc:
                log.warning("flush failed, retrying: %s", exc)
                stop.wait(1.0)
                continue
            if not counts.published and not counts.dropped:
                stop.wait(interval_s)
