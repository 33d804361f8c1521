"""Deciding, once, that a conversation is over.

A session is complete when no new turn arrived for ``quiet_s``, or ``max_age_s`` after its
window opened, whichever comes first. Its state lives in Redis, never in a sampler's memory: a
hash per session (who it is, when its window opened, its last turn, whether any turn was an
outcome stratum), the set of its turns' trace ids, and one sorted set of open sessions by due
time. Any number of samplers observe turns and complete sessions:

- ``observe`` adds a batch's turns in one script call. A turn already seen (a redelivered batch)
  changes nothing, so observing is idempotent; a new turn pushes the due time back.
- ``complete_due`` reads due sessions, hands them to ``dispatch``, then finishes only those whose
  due time did not move since the read (one script, guarded like the OTLP flusher's). A sampler
  that dies between the hand-off and the finish leaves the session due: the next chore hands it
  over again with the same turns, so the same evaluation version, and downstream writes are
  idempotent upserts on (session, evaluator, version). Effects happen once.
- A turn after completion re-opens the session with a new window. Its next completion holds a
  different set of turns, so a different evaluation version: a new evaluation, never a
  duplicate. A completed session's state is kept ``retention_s`` for such late turns; after
  that a late turn starts a new session fragment (its version differs too: it holds other turns).

Sessions are identified by a digest of (tenant, session id), so no untrusted string is ever
split back out of a Redis key. Keys are built inside the scripts from prefixes: one Redis, not
a Cluster (like the OTLP assembler).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

from evaluator.constants import SESSION_PREFIX, SESSION_TURNS_PREFIX, SESSIONS_DUE
from evaluator.settings import Settings
from evaluator.streams import text

# KEYS: due zset. ARGV: session prefix, turns prefix, now ms, quiet ms, max age ms, max turns,
# then per turn: digest, who (JSON [tenant, session id]), trace id, outcome flag.
# Returns how many sessions were opened (first turn ever seen).
_OBSERVE = """
local now, quiet, max_age, max_turns =
  tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local opened = 0
for i = 7, #ARGV, 4 do
  local digest, who, trace_id = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local h, t = ARGV[1] .. digest, ARGV[2] .. digest
  -- Five commands for an ordinary turn: it is new when SADD adds it (below the cap).
  local new
  if redis.call('SCARD', t) < max_turns then
    new = redis.call('SADD', t, trace_id) == 1
  else
    new = redis.call('SISMEMBER', t, trace_id) == 0
    if new then redis.call('HSET', h, 'overflow', '1') end
  end
  if new then
    local known = redis.call('HMGET', h, 'state', 'first')
    local first = tonumber(known[2])
    if known[1] ~= 'open' then
      -- a new session, or a completed one re-opened by a late turn: a new window
      if not known[1] then opened = opened + 1 end
      first = now
      redis.call('HSET', h, 'state', 'open', 'first', now, 'who', who)
      redis.call('PERSIST', h)
      redis.call('PERSIST', t)
    end
    if ARGV[i + 3] == '1' then
      redis.call('HSET', h, 'last', now, 'outcome', '1')
    else
      redis.call('HSET', h, 'last', now)
    end
    redis.call('ZADD', KEYS[1], math.min(now + quiet, first + max_age), digest)
  end
end
return opened
"""

# KEYS: due zset. ARGV: session prefix, turns prefix, now ms, limit.
# Returns per due session: digest, due score, who, first, last, outcome, overflow, trace ids...
_READ = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[4]))
local out = {}
for i = 1, #due, 2 do
  local digest = due[i]
  local h = ARGV[1] .. digest
  local fields = redis.call('HMGET', h, 'who', 'first', 'last', 'outcome', 'overflow')
  local row = {digest, due[i + 1]}
  for j = 1, 5 do row[#row + 1] = fields[j] or '' end
  for _, id in ipairs(redis.call('SMEMBERS', ARGV[2] .. digest)) do row[#row + 1] = id end
  out[#out + 1] = row
end
return out
"""

# KEYS: due zset. ARGV: session prefix, turns prefix, now ms, retention ms, then per session:
# digest, the due score read. Per session 1 when finished, 0 when a turn arrived since the read
# (it completes later, with that turn) or another sampler finished it first.
_FINISH = """
local out = {}
for i = 5, #ARGV, 2 do
  local digest = ARGV[i]
  local done = 0
  local due = redis.call('ZSCORE', KEYS[1], digest)
  if due and due == ARGV[i + 1] then
    local h, t = ARGV[1] .. digest, ARGV[2] .. digest
    redis.call('ZREM', KEYS[1], digest)
    redis.call('HSET', h, 'state', 'done', 'completed', ARGV[3])
    redis.call('HINCRBY', h, 'completions', 1)
    redis.call('PEXPIRE', h, ARGV[4])
    redis.call('PEXPIRE', t, ARGV[4])
    done = 1
  end
  out[#out + 1] = done
end
return out
"""


def _who(tenant: str | None, session_id: str) -> str:
    """Tenant and session id as one JSON text: what a session is, kept in its hash."""
    return json.dumps([tenant, session_id], ensure_ascii=False)


def _digest_of(who: str) -> str:
    return hashlib.blake2b(who.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def session_digest(tenant: str | None, session_id: str) -> str:
    """The session's identity: tenants never share a session, whatever their names hold."""
    return _digest_of(_who(tenant, session_id))


@dataclass(frozen=True)
class SessionPolicy:
    quiet_s: float  # complete after this long without a new turn
    max_age_s: float  # or this long after the window opened, whatever keeps arriving
    retention_s: float  # a completed session's state is kept this long for late turns
    max_turns: int  # turns kept per session; later ones are counted as overflow, not kept


@dataclass(frozen=True)
class TurnSeen:
    tenant: str | None
    session_id: str
    trace_id: str
    outcome: bool  # the turn is in an outcome stratum (an error, negative feedback)


@dataclass(frozen=True)
class CompletedSession:
    digest: str
    tenant: str | None
    session_id: str
    turn_ids: tuple[str, ...]  # sorted
    first_ms: int  # the window's opening (the first turn, or the late turn that re-opened it)
    last_ms: int
    outcome: bool  # any turn was an outcome stratum: the session is one too
    overflow: bool  # more turns arrived than ``max_turns``; only the first ones are held
    due: str  # the due score read, for the guarded finish

    def wire(self) -> dict[str, Any]:
        """The JSON form handed to a worker (``from_wire`` reads it back)."""
        return {**asdict(self), "turn_ids": list(self.turn_ids)}

    @classmethod
    def from_wire(cls, entry: dict[str, Any]) -> CompletedSession:
        return cls(**{**entry, "turn_ids": tuple(entry["turn_ids"])})

    @property
    def version(self) -> str:
        """Which turns this evaluation saw: the same turns give the same version (a repeated
        hand-off is the same evaluation), a late turn gives a new one."""
        joined = "\n".join(self.turn_ids).encode("utf-8", "surrogatepass")
        return hashlib.blake2b(joined, digest_size=6).hexdigest()


# Hands completed sessions to the fleet; must be idempotent on (digest, version).
DispatchSessions = Callable[[list[CompletedSession]], None]


class SessionTracker:
    def __init__(self, client: redis.Redis, policy: SessionPolicy) -> None:
        self.client = client
        self.policy = policy
        self._observe = client.register_script(_OBSERVE)
        self._read = client.register_script(_READ)
        self._finish = client.register_script(_FINISH)

    def open_count(self) -> int:
        return int(self.client.zcard(SESSIONS_DUE))

    def observe(self, turns: Sequence[TurnSeen], now_ms: int | None = None) -> int:
        """Record turns (one script call); returns how many sessions they opened."""
        if not turns:
            return 0
        now = int(time.time() * 1000) if now_ms is None else now_ms
        p = self.policy
        args: list[Any] = [
            SESSION_PREFIX, SESSION_TURNS_PREFIX, now,
            int(p.quiet_s * 1000), int(p.max_age_s * 1000), p.max_turns,
        ]  # fmt: skip
        for turn in turns:
            who = _who(turn.tenant, turn.session_id)  # once per turn: the sampler's hot path
            args += [_digest_of(who), who, turn.trace_id, "1" if turn.outcome else "0"]
        return int(self._observe(keys=[SESSIONS_DUE], args=args))

    def read_due(self, now_ms: int | None = None, limit: int = 500) -> list[CompletedSession]:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        rows: Any = self._read(keys=[SESSIONS_DUE], args=[SESSION_PREFIX, SESSION_TURNS_PREFIX,
                                                          now, limit])  # fmt: skip
        sessions = []
        for digest, due, who, first, last, outcome, overflow, *turn_ids in rows:
            tenant, session_id = json.loads(text(who)) if who else (None, "")
            sessions.append(
                CompletedSession(
                    digest=text(digest),
                    tenant=tenant,
                    session_id=session_id,
                    turn_ids=tuple(sorted(text(t) for t in turn_ids)),
                    first_ms=int(first or 0),
                    last_ms=int(last or 0),
                    outcome=text(outcome) == "1",
                    overflow=text(overflow) == "1",
                    due=text(due),
                )
            )
        return sessions

    def finish(self, sessions: Sequence[CompletedSession], now_ms: int | None = None) -> int:
        """Mark handed-over sessions complete, unless a turn arrived since they were read."""
        if not sessions:
            return 0
        now = int(time.time() * 1000) if now_ms is None else now_ms
        args: list[Any] = [SESSION_PREFIX, SESSION_TURNS_PREFIX, now,
                           int(self.policy.retention_s * 1000)]  # fmt: skip
        for session in sessions:
            args += [session.digest, session.due]
        finished: Any = self._finish(keys=[SESSIONS_DUE], args=args)
        return sum(int(done) for done in finished)

    def complete_due(
        self, dispatch: DispatchSessions, now_ms: int | None = None, limit: int = 500
    ) -> int:
        """Hand due sessions to ``dispatch``, then finish them; returns how many finished. If
        ``dispatch`` raises, nothing is finished: the sessions are handed over again later."""
        sessions = self.read_due(now_ms, limit)
        if not sessions:
            return 0
        dispatch(sessions)
        return self.finish(sessions, now_ms)

    def complete_all_due(
        self, dispatch: DispatchSessions, limit: int = 500, rounds: int = 20
    ) -> int:
        """``complete_due`` until fewer than ``limit`` were due (at most ``rounds`` times, so a
        backlog is worked off over several chore runs rather than in one long one)."""
        finished = 0
        for _ in range(rounds):
            done = self.complete_due(dispatch, limit=limit)
            finished += done
            if done < limit:
                break
        return finished

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> SessionTracker:
        policy = SessionPolicy(
            quiet_s=settings.session_quiet_s,
            max_age_s=settings.session_max_age_s,
            retention_s=settings.session_retention_s,
            max_turns=settings.session_max_turns,
        )
        return cls(client, policy)
