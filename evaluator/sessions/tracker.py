"""Deciding, once, that a conversation is over.

A session is complete when no new turn arrived for ``quiet_s``, or ``max_age_s`` after its
window opened, whichever comes first. Its state lives in Redis, never in a sampler's memory: one
hash per session (who it is, when its window opened, its last turn, how many turns were seen,
whether any turn was an outcome stratum, and its turns' trace ids as fields) and one sorted set
of open sessions by due time. Any number of samplers observe turns and complete sessions:

- ``observe`` adds a batch's turns in one script call (``start_observing`` sends it and lets
  the caller go on; its ``wait`` returns once Redis has recorded them). A turn already seen (a
  redelivered batch) changes nothing, so observing is idempotent. A new turn moves the
  session's last turn; the due time in the sorted set is only a lower bound, set when the
  window opens and moved forward by the read when turns arrived since (a turn into an open
  session writes one hash, never the large sorted set).
- ``complete_due`` reads due sessions, hands them to ``dispatch``, then finishes only those that
  saw no new turn since the read (one script, guarded like the OTLP flusher's). A sampler that
  dies between the hand-off and the finish leaves the session due: the next chore hands it over
  again with the same turns, so the same evaluation version, and downstream writes are
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

import functools
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from json.encoder import encode_basestring as _json_string
from typing import Any, Protocol

import redis

from evaluator.constants import SESSION_PREFIX, SESSIONS_DUE
from evaluator.settings import Settings
from evaluator.streams import text

# A session's hash holds its turns as fields '#' .. trace id, beside the meta fields below
# (none starts with '#', so no trace id, whatever it holds, can overwrite one): state (open,
# done), first (ms the window opened), last (ms of the last new turn), who (JSON [tenant,
# session id]), seen (new turns observed, kept or not: the finish's guard), outcome, overflow,
# completed, completions.
#
# KEYS: due zset. ARGV: session prefix, now ms, quiet ms, max age ms, max turns, then the batch as
# one JSON array (one argument to encode and parse rather than four per turn), per turn: digest,
# who, trace id, outcome flag (true/false). Returns how many sessions were opened (first turn
# ever seen). A turn into an open session does not touch the due zset: the session's due time
# there is a lower bound, and the read script moves it when turns arrived since (so a turn costs
# three commands, not four; ZADD into a large sorted set is the dearest of them).
_OBSERVE = """
local now, quiet, max_age, max_turns =
  tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local prefix, due_key, call = ARGV[1], KEYS[1], redis.call
local turns = cjson.decode(ARGV[6])
local opened = 0
for i = 1, #turns, 4 do
  local digest = turns[i]
  local h, turn = prefix .. digest, '#' .. turns[i + 2]
  -- A turn already held (a redelivered batch) is one command and changes nothing.
  if call('HSETNX', h, turn, '') == 1 then
    local known = call('HMGET', h, 'state', 'seen')
    local seen = tonumber(known[2]) or 0
    local set = {'last', now, 'seen', seen + 1}
    if seen >= max_turns then
      -- over the cap: counted, not kept (so a redelivery of it counts again, as a new turn)
      call('HDEL', h, turn)
      set[5], set[6] = 'overflow', '1'
    end
    if turns[i + 3] then
      local n = #set
      set[n + 1], set[n + 2] = 'outcome', '1'
    end
    if known[1] ~= 'open' then
      -- a new session, or a completed one re-opened by a late turn: a new window
      if known[1] then call('PERSIST', h) else opened = opened + 1 end
      local n = #set
      set[n + 1], set[n + 2], set[n + 3], set[n + 4] = 'state', 'open', 'first', now
      set[n + 5], set[n + 6] = 'who', turns[i + 1]
      call('ZADD', due_key, now + math.min(quiet, max_age), digest)
    end
    call('HSET', h, unpack(set))
  end
end
return opened
"""

# KEYS: due zset. ARGV: session prefix, now ms, limit, quiet ms, max age ms.
# Returns how many sessions the due zset held due, then per session really due (no turn within
# ``quiet`` of now, or the window ``max_age`` old): digest, due score, who, first, last,
# outcome, overflow, seen, trace ids... A session with turns since its due time was set is moved
# to its new due time instead (min(last + quiet, first + max age)).
_READ = """
local now, quiet, max_age = tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[3]))
local out = {#due / 2}
for i = 1, #due, 2 do
  local digest = due[i]
  local h = ARGV[1] .. digest
  local m = redis.call('HMGET', h, 'who', 'first', 'last', 'outcome', 'overflow', 'seen')
  local first, last = tonumber(m[2]), tonumber(m[3])
  local real = first and last and math.min(last + quiet, first + max_age)
  if real and real > now then
    redis.call('ZADD', KEYS[1], real, digest)
  else
    local row = {digest, due[i + 1]}
    for j = 1, 6 do row[j + 2] = m[j] or '' end
    for _, name in ipairs(redis.call('HKEYS', h)) do
      if string.byte(name, 1) == 35 then row[#row + 1] = string.sub(name, 2) end  -- '#'
    end
    out[#out + 1] = row
  end
end
return out
"""

# KEYS: due zset. ARGV: session prefix, now ms, retention ms, then per session: digest, the due
# score read, the turns seen when read. Per session 1 when finished, 0 when a turn arrived since
# the read (it completes later, with that turn) or another sampler finished it first.
_FINISH = """
local out = {}
for i = 4, #ARGV, 3 do
  local digest = ARGV[i]
  local h = ARGV[1] .. digest
  local done = 0
  local due = redis.call('ZSCORE', KEYS[1], digest)
  if due and due == ARGV[i + 1] and (redis.call('HGET', h, 'seen') or '') == ARGV[i + 2] then
    redis.call('ZREM', KEYS[1], digest)
    redis.call('HSET', h, 'state', 'done', 'completed', ARGV[2])
    redis.call('HINCRBY', h, 'completions', 1)
    redis.call('PEXPIRE', h, ARGV[3])
    done = 1
  end
  out[#out + 1] = done
end
return out
"""


def _who(tenant: str | None, session_id: str) -> str:
    """Tenant and session id as one JSON text: what a session is, kept in its hash. Exactly
    ``json.dumps([tenant, session_id], ensure_ascii=False)`` (the digest is of this text), built
    without an encoder per call: it runs once per turn on the sampler's path."""
    tenant_json = "null" if tenant is None else _json_string(tenant)
    return f"[{tenant_json}, {_json_string(session_id)}]"


def _digest_of(who: str) -> str:
    return hashlib.blake2b(who.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def session_digest(tenant: str | None, session_id: str) -> str:
    """The session's identity: tenants never share a session, whatever their names hold."""
    return _digest_of(_who(tenant, session_id))


def _packed(turns: Sequence[TurnSeen]) -> bytes:
    """The observe script's batch argument, in one pass: per turn digest, who, trace id, outcome,
    as one JSON array (Redis parses it with cjson)."""
    flat: list[str | bool] = []
    for turn in turns:
        who = _who(turn.tenant, turn.session_id)
        flat += (_digest_of(who), who, turn.trace_id, turn.outcome)
    return json.dumps(flat, ensure_ascii=False).encode("utf-8", "surrogatepass")


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
    seen: int = 0  # new turns observed when read: a turn since then defers the finish

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


class _Connection(Protocol):
    """What an observation uses of a redis-py connection (whose methods carry no hints)."""

    def send_command(self, *args: Any) -> None: ...
    def read_response(self) -> Any: ...
    def disconnect(self) -> None: ...


class Observation:
    """Turns sent to Redis whose answer was not read yet. ``wait`` reads it: the turns are then
    recorded (or it raises). ``cancel`` gives the answer up: the turns may or may not have been
    recorded, and either is safe, since observing a turn again changes nothing."""

    def __init__(
        self,
        connection: _Connection | None,
        release: Callable[[], None],
        again: Callable[[], int],
    ) -> None:
        self._connection = connection
        self._release = release  # hands the connection back to its pool
        self._again = again  # the same call, waited for, when Redis did not have the script

    @classmethod
    def nothing(cls) -> Observation:
        """An observation of no turns: answered already."""
        return cls(None, lambda: None, lambda: 0)

    def wait(self) -> int:
        """How many sessions the turns opened, once Redis has recorded them."""
        connection, self._connection = self._connection, None
        if connection is None:
            return 0
        try:
            reply = connection.read_response()
        except redis.exceptions.NoScriptError:
            self._release()  # an answer like any other: the connection is fine
            return self._again()
        except BaseException:
            self._drop(connection)
            raise
        self._release()
        return int(reply)

    def cancel(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._drop(connection)

    def _drop(self, connection: _Connection) -> None:
        # Its answer may still be on the way: the connection is closed, never reused as is.
        connection.disconnect()
        self._release()


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
        return self.start_observing(turns, now_ms).wait()

    def start_observing(self, turns: Sequence[TurnSeen], now_ms: int | None = None) -> Observation:
        """Send the turns to Redis without waiting for its answer, on a connection of their
        own: Redis records them while the caller goes on (the sampler hands its batch to the
        broker meanwhile). They are recorded once ``wait()`` on the result has returned."""
        if not turns:
            return Observation.nothing()
        p = self.policy
        args = (
            SESSION_PREFIX,
            int(time.time() * 1000) if now_ms is None else now_ms,
            int(p.quiet_s * 1000),
            int(p.max_age_s * 1000),
            p.max_turns,
            _packed(turns),
        )
        pool = self.client.connection_pool
        pooled = pool.get_connection()
        connection: _Connection = pooled
        observation = Observation(
            connection,
            functools.partial(pool.release, pooled),
            # Redis without the script (restarted, SCRIPT FLUSH): the script object loads it.
            lambda: int(self._observe([SESSIONS_DUE], args)),
        )
        try:
            connection.send_command("EVALSHA", self._observe.sha, 1, SESSIONS_DUE, *args)
        except BaseException:
            observation.cancel()
            raise
        return observation

    def read_due(self, now_ms: int | None = None, limit: int = 500) -> list[CompletedSession]:
        """Sessions due now (at most ``limit`` looked at); ones with turns since their due time
        was set are moved to their new due time instead of returned."""
        return self._read_due(now_ms, limit)[1]

    def _read_due(self, now_ms: int | None, limit: int) -> tuple[int, list[CompletedSession]]:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        p = self.policy
        reply: Any = self._read(
            keys=[SESSIONS_DUE],
            args=[SESSION_PREFIX, now, limit, int(p.quiet_s * 1000), int(p.max_age_s * 1000)],
        )
        looked_at, *rows = reply
        sessions = []
        for digest, due, who, first, last, outcome, overflow, seen, *turn_ids in rows:
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
                    seen=int(seen or 0),
                )
            )
        return int(looked_at), sessions

    def finish(self, sessions: Sequence[CompletedSession], now_ms: int | None = None) -> int:
        """Mark handed-over sessions complete, unless a turn arrived since they were read."""
        if not sessions:
            return 0
        now = int(time.time() * 1000) if now_ms is None else now_ms
        args: list[Any] = [SESSION_PREFIX, now, int(self.policy.retention_s * 1000)]
        for session in sessions:
            # a hash without the field (gone: evicted) reads as '', and is finished as read
            args += [session.digest, session.due, str(session.seen) if session.seen else ""]
        finished: Any = self._finish(keys=[SESSIONS_DUE], args=args)
        return sum(int(done) for done in finished)

    def complete_due(
        self, dispatch: DispatchSessions, now_ms: int | None = None, limit: int = 500
    ) -> int:
        """Hand due sessions to ``dispatch``, then finish them; returns how many finished. If
        ``dispatch`` raises, nothing is finished: the sessions are handed over again later."""
        return self._complete_due(dispatch, now_ms, limit)[1]

    def _complete_due(
        self, dispatch: DispatchSessions, now_ms: int | None, limit: int
    ) -> tuple[int, int]:
        looked_at, sessions = self._read_due(now_ms, limit)
        if not sessions:
            return looked_at, 0
        dispatch(sessions)
        return looked_at, self.finish(sessions, now_ms)

    def complete_all_due(
        self, dispatch: DispatchSessions, limit: int = 500, rounds: int = 20
    ) -> int:
        """``complete_due`` until fewer than ``limit`` were due (at most ``rounds`` times, so a
        backlog is worked off over several chore runs rather than in one long one)."""
        finished = 0
        for _ in range(rounds):
            looked_at, done = self._complete_due(dispatch, None, limit)
            finished += done
            if looked_at < limit:
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
