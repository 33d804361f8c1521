"""Fleet-wide limits kept in Redis, shared by every worker process.

* ``RateLimiter``: requests/min and tokens/min per judge model, enforced together by one atomic
  GCRA script (generic cell rate algorithm: one timestamp per key, no counters to reset). Time
  comes from the Redis server, so workers on hosts with skewed clocks still agree.
  A 429 with Retry-After pauses every process's calls to that model (``pause``/``paused_for``):
  the provider's limit is the account's, so one worker being told to wait means all should.
* ``CircuitBreaker``: per endpoint, opens when the *rate* of failures over a sliding window
  (buckets) reaches a threshold with at least a minimum number of calls — never on a streak, so
  a burst of fast errors among slow successes does not trip it — stays open for a cool-down,
  then is half-open: a few probe tokens let that many calls through fleet-wide; their successes
  close it, a failure opens it again. Every change is one atomic Lua script on Redis time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from evaluator.constants import CIRCUIT_PREFIX, RATE_LIMIT_PREFIX, RATE_PAUSE_PREFIX

# KEYS[1] requests key, KEYS[2] tokens key.
# ARGV: request interval ms, request burst, token interval ms, token burst, tokens of this call.
# Returns 0 when admitted (both limits updated), else the ms to wait before asking again.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function plan(key, interval, burst, cost)
  if interval <= 0 then return nil, 0 end
  if cost > burst then cost = burst end
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  return new_tat, new_tat - burst * interval - now
end
local r_tat, r_wait = plan(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), 1)
local k_tat, k_wait = plan(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
local wait = math.max(r_wait, k_wait)
if wait > 0 then return math.ceil(wait) end
if r_tat then redis.call('SET', KEYS[1], r_tat, 'PX', math.ceil(r_tat - now) + 1000) end
if k_tat then redis.call('SET', KEYS[2], k_tat, 'PX', math.ceil(k_tat - now) + 1000) end
return 0
"""


@dataclass(frozen=True)
class Limit:
    per_minute: int
    burst_seconds: float = 1.0  # how much of a minute's allowance may be spent at once

    @property
    def interval_ms(self) -> float:
        return 60_000 / self.per_minute

    @property
    def burst(self) -> float:
        return max(1.0, self.per_minute * self.burst_seconds / 60)


# Set in the asyncio task that runs re-evaluation work (and inherited by the tasks it starts):
# its calls must first pass a bucket of ``backfill_share`` of each limit, which leaves the rest
# of the fleet's limit to live judge work.
BACKFILL: ContextVar[bool] = ContextVar("evalfleet_backfill", default=False)


class RateLimiter:
    def __init__(
        self,
        client: aioredis.Redis,
        requests: dict[str, int],
        tokens: dict[str, int],
        backfill_share: float = 1.0,
    ) -> None:
        self.client = client
        self.requests = {m: Limit(v) for m, v in requests.items()}
        self.tokens = {m: Limit(v) for m, v in tokens.items()}
        self.backfill_share = backfill_share
        self._script = client.register_script(_GCRA)
        self._pause_script = client.register_script(_PAUSE)
        self._paused_until: dict[str, float] = {}
        self._pause_checked: dict[str, float] = {}

    async def pause(self, model: str, seconds: float) -> None:
        """Every process stops starting calls to ``model`` for ``seconds`` (a 429's Retry-After;
        the pause only ever gets longer)."""
        if seconds <= 0:
            return
        now = time.monotonic()
        self._paused_until[model] = max(self._paused_until.get(model, 0.0), now + seconds)
        await self._pause_script(keys=[_pause_key(model)], args=[math.ceil(seconds * 1000)])

    async def paused_for(self, model: str) -> float:
        """Seconds before calls to ``model`` may start again (0: now). Re-read from Redis at
        most every ``PAUSE_REFRESH_S``: another worker's 429 is seen that soon."""
        now = time.monotonic()
        if now - self._pause_checked.get(model, -1e9) >= PAUSE_REFRESH_S:
            # Marked before the await: the other coroutines of this process use what is known
            # meanwhile instead of each asking (hundreds at once would exhaust the pool).
            self._pause_checked[model] = now
            remaining = max(0, int(await self.client.pttl(_pause_key(model))))
            now = time.monotonic()
            self._pause_checked[model] = now
            self._paused_until[model] = max(
                self._paused_until.get(model, 0.0), now + remaining / 1000
            )
        return max(0.0, self._paused_until.get(model, 0.0) - now)

    async def acquire(self, model: str, tokens: int) -> float:
        """Wait until a call of ``tokens`` tokens fits both limits; returns the seconds waited."""
        request_limit, token_limit = self.requests.get(model), self.tokens.get(model)
        if request_limit is None and token_limit is None:
            return 0.0
        waited = 0.0
        if BACKFILL.get() and self.backfill_share < 1.0:
            share = self.backfill_share
            waited += await self._wait(
                f"{RATE_LIMIT_PREFIX}backfill:{model}",
                _scaled(request_limit, share),
                _scaled(token_limit, share),
                tokens,
            )
        return waited + await self._wait(
            f"{RATE_LIMIT_PREFIX}{model}", request_limit, token_limit, tokens
        )

    async def _wait(
        self, prefix: str, request_limit: Limit | None, token_limit: Limit | None, tokens: int
    ) -> float:
        args = [
            request_limit.interval_ms if request_limit else 0,
            request_limit.burst if request_limit else 0,
            token_limit.interval_ms if token_limit else 0,
            token_limit.burst if token_limit else 0,
            tokens,
        ]
        keys = [f"{prefix}:requests", f"{prefix}:tokens"]
        waited = 0.0
        while (wait_ms := int(await self._script(keys=keys, args=args))) > 0:
            await asyncio.sleep(wait_ms / 1000)
            waited += wait_ms / 1000
        return waited


# How stale a process's view of a fleet-wide pause may be.
PAUSE_REFRESH_S = 0.2


def _pause_key(model: str) -> str:
    return f"{RATE_PAUSE_PREFIX}{model}"


def _scaled(limit: Limit | None, share: float) -> Limit | None:
    return (
        None if limit is None else Limit(max(1, int(limit.per_minute * share)), limit.burst_seconds)
    )


def endpoint_key(base_url: str | None, model: str) -> str:
    return hashlib.sha256(f"{base_url or 'default'}|{model}".encode()).hexdigest()[:16]


# -- the fleet-wide pause after a 429 ---------------------------------------------------------

# KEYS[1] the pause key; ARGV[1] ms to pause. The pause only ever gets longer: a 429 that says
# "1 s" must not cut short the 30 s another worker was just told.
_PAUSE = """
if tonumber(redis.call('PTTL', KEYS[1])) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
"""


# -- the breaker ------------------------------------------------------------------------------

# KEYS[1] the state hash (mode = open | half, until = ms, tokens, ok); absent: closed.
# ARGV: probes, probe lease ms, wait ms for callers without a probe token while half-open.
# Returns {decision, wait ms}: 0 call (closed), 1 call as a probe, 2 open, 3 half-open, no token.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = redis.call('HGET', KEYS[1], 'mode')
if not mode then return {0, 0} end
local probes, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if mode == 'open' then
  if now < until_ms then return {2, until_ms - now} end
  redis.call('HSET', KEYS[1], 'mode', 'half', 'tokens', probes, 'ok', 0, 'until', now + lease)
  until_ms = now + lease
end
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
if tokens <= 0 and now >= until_ms then
  -- The probes were handed out a lease ago and never reported (their process died): new ones.
  tokens = probes
  redis.call('HSET', KEYS[1], 'ok', 0, 'until', now + lease)
end
if tokens > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tokens - 1)
  return {1, 0}
end
return {3, tonumber(ARGV[3])}
"""

# KEYS[1] the state hash, KEYS[2] the window's buckets (hash: "<bucket>:n" calls, ":f" failures).
# ARGV: calls, failures (both including probes), probe successes, probe failures, bucket ms,
# buckets in the window, min calls, failure rate, open ms, probes, state ttl ms.
# Returns {state, ms, calls, failures}: state 0 closed (with the window's calls and failures),
# 1 open (ms left), 2 half-open.
_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local calls, failures = tonumber(ARGV[1]), tonumber(ARGV[2])
local probe_ok, probe_failed = tonumber(ARGV[3]), tonumber(ARGV[4])
local open_ms = tonumber(ARGV[9])
local function open()
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'mode', 'open', 'until', now + open_ms)
  redis.call('PEXPIRE', KEYS[1], ARGV[11])
  return {1, open_ms}
end
local mode = redis.call('HGET', KEYS[1], 'mode')
if mode == 'open' then
  -- Answers to calls made before it opened say nothing new.
  return {1, math.max(0, tonumber(redis.call('HGET', KEYS[1], 'until') or '0') - now)}
end
if mode == 'half' then
  -- Only the probes decide: one failure opens it again, all probes answering close it.
  if probe_failed > 0 then return open() end
  if probe_ok > 0 and redis.call('HINCRBY', KEYS[1], 'ok', probe_ok) >= tonumber(ARGV[10]) then
    redis.call('DEL', KEYS[1], KEYS[2])
    return {0, 0, 0, 0}
  end
  return {2, 0}
end
if calls <= 0 then return {0, 0, 0, 0} end
local bucket_ms, buckets = tonumber(ARGV[5]), tonumber(ARGV[6])
local bucket = math.floor(now / bucket_ms)
redis.call('HINCRBY', KEYS[2], bucket .. ':n', calls)
if failures > 0 then redis.call('HINCRBY', KEYS[2], bucket .. ':f', failures) end
redis.call('PEXPIRE', KEYS[2], bucket_ms * (buckets + 1))
local n, f = 0, 0
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  local b, kind = string.match(fields[i], '^(%d+):(%a)$')
  if tonumber(b) <= bucket - buckets then
    redis.call('HDEL', KEYS[2], fields[i])
  elseif kind == 'n' then
    n = n + tonumber(fields[i + 1])
  else
    f = f + tonumber(fields[i + 1])
  end
end
if n >= tonumber(ARGV[7]) and f >= tonumber(ARGV[8]) * n then return open() end
return {0, 0, n, f}
"""


@dataclass(frozen=True)
class BreakerPolicy:
    """When the breaker opens: at least ``min_calls`` answered calls in the last ``window_s``
    and at least ``failure_rate`` of them failed; it stays open ``open_s``, then lets
    ``probes`` calls through fleet-wide and closes when all of them succeed."""

    window_s: float = 20.0
    min_calls: int = 20
    failure_rate: float = 0.5
    open_s: float = 5.0
    probes: int = 3
    # How long a probe may take before its token is handed out again (its process may have died).
    probe_lease_s: float = 30.0
    # Callers that find the breaker half-open without a probe token wait this long, then ask
    # again (a probe's answer takes a call's time).
    half_open_wait_s: float = 0.25
    buckets: int = 10


@dataclass(frozen=True)
class Admission:
    """``wait_s`` > 0: do not call (open, or half-open and the probes are out); ``probe``: this
    call is one of the half-open breaker's probes (report it with ``probe=True``)."""

    wait_s: float = 0.0
    probe: bool = False
    half_open: bool = False


@dataclass
class _Local:
    """What one process knows of an endpoint's breaker, and the answers not yet reported."""

    mode: str = "closed"  # closed | open | half
    checked_at: float = -1e9
    open_until: float = 0.0
    calls: int = 0
    failures: int = 0
    reported_at: float = field(default_factory=time.monotonic)
    failure_rate: float = 0.0  # over the fleet's window, as of the last report
    asking: bool = False  # a coroutine of this process is asking Redis for the state


class CircuitBreaker:
    """A fleet-wide breaker per endpoint that decides on the failure *rate* over a window (see
    the module docstring); state and counts live in Redis, changed by one Lua script each."""

    # Shared state is re-read, and ordinary answers reported, at most this often per endpoint
    # and process: one Redis round trip per call would cost more than the call's bookkeeping
    # at hundreds of calls/s, and a rate over a 20 s window does not need it sooner.
    REFRESH_S = 0.2

    def __init__(self, client: aioredis.Redis, policy: BreakerPolicy | None = None) -> None:
        self.client = client
        self.policy = policy or BreakerPolicy()
        self._admit = client.register_script(_ADMIT)
        self._record = client.register_script(_RECORD)
        self._local: dict[str, _Local] = {}

    @staticmethod
    def keys(endpoint: str) -> list[str]:
        return [f"{CIRCUIT_PREFIX}{endpoint}:state", f"{CIRCUIT_PREFIX}{endpoint}:window"]

    async def admit(self, endpoint: str) -> Admission:
        """May a call to ``endpoint`` go out now?"""
        local = self._local.setdefault(endpoint, _Local())
        now = time.monotonic()
        if local.mode == "closed" and now - local.checked_at < self.REFRESH_S:
            return Admission()
        if local.mode == "open" and now < local.open_until:
            return Admission(wait_s=local.open_until - now)
        p = self.policy
        if local.asking:
            # One question at a time per process (hundreds at once would exhaust the pool):
            # closed, go on with what is known; otherwise wait as for a probe token.
            if local.mode == "closed":
                return Admission()
            return Admission(wait_s=p.half_open_wait_s, half_open=True)
        args = [p.probes, int(p.probe_lease_s * 1000), int(p.half_open_wait_s * 1000)]
        local.asking = True
        try:
            decision, wait_ms = await self._admit(keys=self.keys(endpoint)[:1], args=args)
        finally:
            local.asking = False
        now = time.monotonic()
        local.checked_at = now
        if int(decision) == 0:
            local.mode = "closed"
            return Admission()
        if int(decision) == 2:
            local.mode, local.open_until = "open", now + int(wait_ms) / 1000
            return Admission(wait_s=int(wait_ms) / 1000)
        local.mode = "half"
        if int(decision) == 1:
            return Admission(probe=True, half_open=True)
        return Admission(wait_s=int(wait_ms) / 1000, half_open=True)

    async def record(self, endpoint: str, ok: bool, probe: bool = False) -> None:
        """The endpoint answered (``ok``) or failed. Ordinary answers are summed and reported
        every ``REFRESH_S`` (or every quarter of ``min_calls`` failures); a probe's answer at
        once (it decides a half-open breaker)."""
        local = self._local.setdefault(endpoint, _Local())
        local.calls += 1
        local.failures += 0 if ok else 1
        # Failures piling up are reported sooner: enough of them may open the breaker, and
        # every call made meanwhile is one more against an endpoint that may be down.
        piling_up = local.failures >= max(1, self.policy.min_calls // 4)
        if probe or piling_up or time.monotonic() - local.reported_at >= self.REFRESH_S:
            await self._report(endpoint, local, probe, ok)

    async def flush(self) -> None:
        """Report the answers not reported yet (before the clients of an event loop close);
        best effort: Redis being away must not hide why the loop is closing."""
        for endpoint, local in self._local.items():
            if local.calls:
                with contextlib.suppress(RedisError, OSError):
                    await self._report(endpoint, local, probe=False, ok=True)

    async def _report(self, endpoint: str, local: _Local, probe: bool, ok: bool) -> None:
        # Taken before the await: answers arriving meanwhile go into the next report.
        calls, failures, local.calls, local.failures = local.calls, local.failures, 0, 0
        local.reported_at = time.monotonic()
        p = self.policy
        bucket_ms = max(1, int(p.window_s * 1000 / p.buckets))
        args = [
            calls, failures, int(probe and ok), int(probe and not ok), bucket_ms, p.buckets,
            p.min_calls, p.failure_rate, int(p.open_s * 1000), p.probes,
            int((p.open_s + p.probe_lease_s) * 1000 * 4),
        ]  # fmt: skip
        state, ms, *counts = await self._record(keys=self.keys(endpoint), args=args)
        now = time.monotonic()
        local.checked_at = now
        local.mode = {0: "closed", 1: "open", 2: "half"}[int(state)]
        if local.mode == "open":
            local.open_until = now + int(ms) / 1000
        window_calls, window_failures = (int(c) for c in counts) if counts else (0, 0)
        enough = window_calls >= p.min_calls
        local.failure_rate = window_failures / window_calls if enough else 0.0

    def degraded(self, endpoint: str) -> bool:
        """Is ``endpoint`` failing more than by chance (half the opening rate, fleet-wide), or
        not closed? Retries then back off exponentially; otherwise a failure is bad luck."""
        local = self._local.get(endpoint)
        if local is None:
            return False
        return local.mode != "closed" or local.failure_rate >= self.policy.failure_rate / 2
