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
import multiprocessing
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from evaluator.constants import (
    OTLP_META_PREFIX,
    OTLP_PENDING,
    OTLP_SPANS_PREFIX,
    TRACE_FIELD,
    TRACES_STREAM,
)
from evaluator.ingest.otel import spans_to_trace, trace_payload
from evaluator.ingest.otlp_proto import decode_trace, encode_json
from evaluator.ingest.spans import Span
from evaluator.ops import metrics
from evaluator.settings import Settings
from evaluator.streams import text

log = logging.getLogger(__name__)


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

# Batched over every due trace (one call instead of a command each; keys are built from the
# prefixes in ARGV, so this needs a single Redis, not a Cluster).
# ARGV: spans prefix, meta prefix, then trace ids. Returns per trace {root flag, spans...}.
_READ = """
local out = {}
for i = 3, #ARGV do
  local held = redis.call('LRANGE', ARGV[1] .. ARGV[i], 0, -1)
  table.insert(held, 1, redis.call('HGET', ARGV[2] .. ARGV[i], 'root') or '')
  out[#out + 1] = held
end
return out
"""

# KEYS: pending zset, traces stream. ARGV: spans prefix, meta prefix, now ms, stream maxlen, stream
# field, then per trace: id, spans read, payload ('' drops the trace). Per trace 1 when published
# (or dropped), 0 when stale: a span arrived since the read, or another flusher took it.
_FINISH = """
local out = {}
for i = 6, #ARGV, 3 do
  local id, spans, meta = ARGV[i], ARGV[1] .. ARGV[i], ARGV[2] .. ARGV[i]
  local done = 0
  if redis.call('LLEN', spans) == tonumber(ARGV[i + 1]) then
    local due = redis.call('ZSCORE', KEYS[1], id)
    if due and tonumber(due) <= tonumber(ARGV[3]) then
      if ARGV[i + 2] ~= '' then
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', ARGV[5], ARGV[i + 2])
      end
      redis.call('DEL', spans, meta)
      redis.call('ZREM', KEYS[1], id)
      done = 1
    end
  end
  out[#out + 1] = done
end
return out
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
        self._read = client.register_script(_READ)
        self._finish = client.register_script(_FINISH)

    def pending(self) -> int:
        return int(self.client.zcard(OTLP_PENDING))

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
                keys=[OTLP_SPANS_PREFIX + trace_id, OTLP_META_PREFIX + trace_id, OTLP_PENDING],
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

    def flush(self, limit: int = 500, window: int = 0) -> FlushCounts:
        """Publish due traces (up to ``limit``): one call reads them, one publishes. Flusher
        number ``window`` takes the ``window``-th slice of the due traces, so several flushers
        rarely do the same work (when they do, the guarded publish lets one win)."""
        now_ms = int(time.time() * 1000)
        counts = FlushCounts()
        start = window * limit
        due: Any = self.client.zrangebyscore(OTLP_PENDING, "-inf", now_ms, start=start, num=limit)
        trace_ids = [text(raw_id) for raw_id in due]
        if not trace_ids:
            metrics.OTLP_PENDING.set(self.pending())
            return counts
        held: Any = self._read(args=[OTLP_SPANS_PREFIX, OTLP_META_PREFIX, *trace_ids])
        args: list[Any] = [OTLP_SPANS_PREFIX, OTLP_META_PREFIX, now_ms, self.settings.stream_maxlen]
        args.append(TRACE_FIELD)
        outcomes = []
        for trace_id, (root, *raw_spans) in zip(trace_ids, held, strict=True):
            try:
                trace = spans_to_trace(decode_trace(raw_spans)) if raw_spans else None
                payload = ""
                if trace is not None:
                    if not root:
                        trace.metadata["partial"] = True
                    # An agent's steps can make a trace too big for the stream: fit them in.
                    payload = trace_payload(trace, self.settings.max_trace_bytes)
            except Exception:
                # Spans the mapping cannot make a Trace of would fail every flush and stop the
                # flusher (and so every other trace): dropped, with the reason in the log.
                log.exception("trace %s dropped: its spans could not be mapped", trace_id)
                trace, payload = None, ""
            args += [trace_id, len(raw_spans), payload]
            outcomes.append((trace is None, not root))
        finished: Any = self._finish(keys=[OTLP_PENDING, TRACES_STREAM], args=args)
        for done, (dropped, partial) in zip(finished, outcomes, strict=True):
            if not done:
                continue
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

    def run_flusher(self, stop: threading.Event, interval_s: float = 0.2, window: int = 0) -> None:
        """Flush until ``stop`` is set; Redis errors are logged and retried."""
        while not stop.is_set():
            try:
                counts = self.flush(window=window)
            except redis.RedisError as exc:
                log.warning("flush failed, retrying: %s", exc)
                stop.wait(1.0)
                continue
            if not counts.published and not counts.dropped:
                stop.wait(interval_s)


def run_flusher_process(settings: Settings, window: int = 0) -> None:
    """Entry point of the receiver's flusher process: flush until SIGTERM."""
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parent = multiprocessing.parent_process()

    def watch_parent() -> None:
        # uvicorn re-raises SIGTERM after its shutdown, so the receiver may die without stopping
        # us: leave when it is gone. The parent's sentinel is ready once it has exited, even if
        # that was before this process got here (comparing getppid() missed that case).
        if parent is not None:
            parent.join()
            stop.set()

    threading.Thread(target=watch_parent, daemon=True).start()
    client = redis.Redis.from_url(settings.redis_url)
    SpanAssembler(client, settings).run_flusher(stop, window=window)
