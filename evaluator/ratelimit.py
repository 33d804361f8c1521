"""Fleet-wide limits kept in Redis, shared by every worker process.

* ``RateLimiter``: requests/min and tokens/min per judge model, enforced together by one atomic
  GCRA script (generic cell rate algorithm: one timestamp per key, no counters to reset). Time
  comes from the Redis server, so workers on hosts with skewed clocks still agree.
* ``CircuitBreaker``: after N failures in a row against an endpoint, every process stops calling
  it for a cool-down, instead of each burning its own retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from contextvars import ContextVar
from dataclasses import dataclass

import redis.asyncio as aioredis

from evaluator.constants import CIRCUIT_PREFIX, RATE_LIMIT_PREFIX

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


def _scaled(limit: Limit | None, share: float) -> Limit | None:
    return (
        None if limit is None else Limit(max(1, int(limit.per_minute * share)), limit.burst_seconds)
    )


def endpoint_key(base_url: str | None, model: str) -> str:
    return hashlib.sha256(f"{base_url or 'default'}|{model}".encode()).hexdigest()[:16]


class CircuitBreaker:
    # The shared state is re-read at most this often per endpoint and process: one Redis round
    # trip per call would cost more than the call's own bookkeeping at hundreds of calls/s.
    REFRESH_S = 0.2

    def __init__(self, client: aioredis.Redis, failures: int, open_seconds: float) -> None:
        self.client = client
        self.failures = failures
        self.open_ms = int(open_seconds * 1000)
        self._open_until: dict[str, float] = {}
        self._checked_at: dict[str, float] = {}
        self._failed_here: set[str] = set()

    async def open_for(self, endpoint: str) -> float:
        """Seconds the circuit for ``endpoint`` stays open (0 when calls may go through)."""
        now = time.monotonic()
        if now - self._checked_at.get(endpoint, -1e9) >= self.REFRESH_S:
            remaining = int(await self.client.pttl(f"{CIRCUIT_PREFIX}{endpoint}:open"))
            self._open_until[endpoint] = now + max(0, remaining) / 1000
            self._checked_at[endpoint] = now
        return max(0.0, self._open_until.get(endpoint, 0.0) - now)

    async def failure(self, endpoint: str) -> None:
        self._failed_here.add(endpoint)
        key = f"{CIRCUIT_PREFIX}{endpoint}:failures"
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.pexpire(key, self.open_ms * 2)
        count, _ = await pipe.execute()
        if int(count) >= self.failures:
            await self.client.set(f"{CIRCUIT_PREFIX}{endpoint}:open", "1", px=self.open_ms, nx=True)
            await self.client.delete(key)
            self._checked_at.pop(endpoint, None)  # see the open circuit at once

    async def success(self, endpoint: str) -> None:
        """A success ends a run of failures (only worth a round trip if this process saw one)."""
        if endpoint in self._failed_here:
            self._failed_here.discard(endpoint)
            await self.client.delete(f"{CIRCUIT_PREFIX}{endpoint}:failures")
