"""The consumer-group loop: read traces, validate, decide, dispatch, and only then acknowledge.

Guarantees (see DESIGN.md): an entry is XACKed only after its batch was handed to the broker or
it was dead-lettered with a reason, and a turn of a conversation only once Redis has recorded it
for its session (evaluator.sessions.tracker; sent before the dispatch, answered before the XACK);
entries left pending by a crashed consumer are reclaimed with XAUTOCLAIM; the loop pauses while
the worker queues are deeper than their limits. A sampler's consumer name is stable and leased
(evaluator.streams.lease_consumer_name): a restart takes it back and re-reads its own pending
entries first, and no two samplers read under one name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import redis

from evaluator.constants import (
    CHORE_PREFIX,
    HEURISTICS_QUEUE,
    JUDGES_QUEUE,
    SAMPLER_GROUP,
    TRACE_FIELD,
    TRACES_STREAM,
    UNACKED_PREFIX,
    WORK_QUEUES,
    WORKER_ROLES,
)
from evaluator.judging.files import Judge, enabled_judges
from evaluator.models import SampleDecision, Trace, parse_published_trace
from evaluator.ops import logs, metrics
from evaluator.sampling import inflight
from evaluator.sampling.budget import BudgetPlanner, record_traffic
from evaluator.sampling.strata import SESSION_OUTCOME_STRATA, SamplingPolicy, VersionTracker
from evaluator.sessions.tracker import Observation, SessionTracker, TurnSeen
from evaluator.settings import Settings
from evaluator.streams import (
    ConsumerLease,
    DeadLetterLimits,
    add_dead_letters,
    ensure_group,
    group_info,
    oldest_unhandled_id,
    one_line,
    queue_depth,
    stream_id_ms,
    text,
)
from evaluator.work import heuristics_entry, judge_entry

if TYPE_CHECKING:  # imported where used: evaluator.ops.health is not loaded at import time here
    from evaluator.ops.health import Backoff, Readiness

log = logging.getLogger(__name__)

StreamEntry = tuple[bytes | str, dict[bytes, bytes] | None]


class Dispatch(Protocol):
    """Hands a batch of task entries to the workers of a queue under ``batch_id`` (the task's
    id); raises DispatchError if the broker did not take it."""

    def __call__(self, queue: str, entries: list[dict[str, Any]], batch_id: str) -> None: ...


class DispatchError(Exception):
    """The broker did not accept a batch; its entries stay pending and are retried."""


def parse_entry(fields: dict[bytes, bytes], max_bytes: int) -> Trace | str:
    """The entry's Trace, or the reason it is invalid. Never raises, whatever the bytes."""
    payload = fields.get(TRACE_FIELD.encode())
    if payload is None:
        names = ", ".join(sorted(text(k) for k in fields)[:10]) or "none"
        return f"entry has no {TRACE_FIELD!r} field (fields: {names})"[:1000]
    return parse_published_trace(payload, max_bytes)


def _chunks(items: Sequence[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


@dataclass
class SamplerCounts:
    consumed: int = 0
    dead_lettered: int = 0
    judge_sampled: int = 0
    batches_dispatched: int = 0
    reclaimed: int = 0
    backpressure_pauses: int = 0


class Sampler:
    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        dispatch: Dispatch,
        consumer: str | None = None,
        judges: dict[str, Judge] | None = None,
        budget: BudgetPlanner | None = None,
        chores: Sequence[Callable[[], object]] = (),
        broker: redis.Redis | None = None,
        lease: ConsumerLease | None = None,
        sessions: SessionTracker | None = None,
    ) -> None:
        self.client = client
        # Records each turn of a conversation (a trace with a session_id) so the session is
        # evaluated once it goes quiet (evaluator.sessions.tracker). None: not tracked.
        self.sessions = sessions
        # The hold on the consumer name (evaluator.streams.lease_consumer_name): renewed by the
        # loop, freed when it stops. None: the caller keeps names apart (tests, one-offs).
        self.lease = lease
        # The Celery broker's Redis (its queues and unacked records) when it is not ``client``'s.
        self.broker = broker or client
        # Periodic fleet work (the ledger reaper, estimate gauges): tried every claim interval,
        # each chore decides itself whether it is due (see FleetChore).
        self.chores = list(chores)
        self.settings = settings
        self.dispatch = dispatch
        self.consumer = (
            lease.name
            if lease
            else consumer or settings.sampler_consumer or f"{socket.gethostname()}-{os.getpid()}"
        )
        self.policy = SamplingPolicy.from_settings(
            settings, enabled_judges(settings) if judges is None else judges
        )
        self.versions = VersionTracker(client, settings.canary_window_s)
        # Lowers stratum rates when projected judge spend would exceed a budget (None: no budget).
        self.budget = budget
        self.counts = SamplerCounts()
        self.dead_letter_limits = DeadLetterLimits.from_settings(settings)
        self.inflight_due_s = inflight.due_in_s(settings)
        # Start by re-reading our own pending entries (a restart after a crash under this name:
        # handled at once, not after another sampler's idle reclaim).
        self._recover_own_pending = True
        self._last_claim = 0.0
        ensure_group(client)

    # -- one iteration -------------------------------------------------------------------------

    def step(self, block_ms: int | None = None) -> int:
        """Read and handle one batch; returns how many entries it handled (0 when idle/paused)."""
        if self.backpressured():
            self.counts.backpressure_pauses += 1
            time.sleep(self.settings.backpressure_sleep_s)
            return 0
        entries = self._read(block_ms)
        if entries:
            self.handle(entries)
        return len(entries)

    def backpressured(self) -> bool:
        s = self.settings
        return (
            queue_depth(self.broker, HEURISTICS_QUEUE) > s.max_heuristics_queue_depth
            or queue_depth(self.broker, JUDGES_QUEUE) > s.max_judge_queue_depth
        )

    def _read(self, block_ms: int | None) -> list[StreamEntry]:
        count = self.settings.sampler_batch_size
        if self._recover_own_pending:
            # Re-reading our own pending entries counts as a delivery too: a restart loop on one
            # entry ends in the dead-letter stream like a reclaim loop does.
            own = self._xreadgroup("0", count, block_ms=None)
            if own:
                return self._without_poison(own)
            self._recover_own_pending = False
        if time.monotonic() - self._last_claim >= self.settings.claim_interval_s:
            self._last_claim = time.monotonic()
            self.refresh_gauges()
            for chore in self.chores:
                chore()
                self._renew_lease()  # a slow chore must not let the name lapse
            claimed = self.reclaim()
            if claimed:
                return claimed
        block = self.settings.sampler_block_ms if block_ms is None else block_ms
        return self._xreadgroup(">", count, block_ms=block)

    def _renew_lease(self) -> None:
        if self.lease is not None:
            self.lease.renew()

    def refresh_gauges(self) -> None:
        """Stream length, pending, queue depths and the oldest unhandled entry's age."""
        group = group_info(self.client, TRACES_STREAM, SAMPLER_GROUP)
        metrics.STREAM_LENGTH.set(int(self.client.xlen(TRACES_STREAM)))
        metrics.PENDING.set(group["pending"])
        for queue in WORK_QUEUES:
            metrics.QUEUE_DEPTH.labels(queue).set(queue_depth(self.broker, queue))
        for role in WORKER_ROLES:
            held = int(self.broker.hlen(f"{UNACKED_PREFIX}{role}"))
            metrics.TASKS_UNACKED.labels(role).set(held)
        metrics.HEURISTICS_IN_FLIGHT.set(inflight.count(self.client))
        oldest = oldest_unhandled_id(self.client)
        age = time.time() - stream_id_ms(oldest) / 1000 if oldest else 0.0
        metrics.OLDEST_UNSCORED_AGE.set(max(0.0, age))

    def _xreadgroup(self, start: str, count: int, block_ms: int | None) -> list[StreamEntry]:
        response: Any = self.client.xreadgroup(
            SAMPLER_GROUP, self.consumer, {TRACES_STREAM: start}, count=count, block=block_ms
        )
        return list(response[0][1]) if response else []

    def reclaim(self) -> list[StreamEntry]:
        """Take over entries another consumer left pending longer than ``claim_idle_ms``."""
        response: Any = self.client.xautoclaim(
            TRACES_STREAM,
            SAMPLER_GROUP,
            self.consumer,
            min_idle_time=self.settings.claim_idle_ms,
            start_id="0-0",
            count=self.settings.sampler_batch_size,
        )
        claimed: list[StreamEntry] = list(response[1])
        # Redis 7 reports entries trimmed away while pending separately (and drops them from the
        # PEL); they are dead-lettered below so their loss is visible, not silent.
        deleted = response[2] if len(response) > 2 else []
        claimed += [(entry_id, None) for entry_id in deleted]
        if claimed:
            self.counts.reclaimed += len(claimed)
            log.info("reclaimed %d idle pending entries", len(claimed))
        return self._without_poison(claimed)

    def _without_poison(self, claimed: list[StreamEntry]) -> list[StreamEntry]:
        """Dead-letter entries delivered too often: one that kills every sampler that reads it
        would otherwise be reclaimed forever."""
        if not claimed:
            return claimed
        ids = sorted((text(entry_id) for entry_id, _ in claimed), key=_id_key)
        pending: Any = self.client.xpending_range(
            TRACES_STREAM,
            SAMPLER_GROUP,
            min=ids[0],
            max=ids[-1],
            count=len(claimed) * 2,
            consumername=self.consumer,
        )
        deliveries = {text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        limit = self.settings.max_deliveries
        poison = [(i, f) for i, f in claimed if deliveries.get(text(i), 0) > limit]
        if poison:
            reason = f"delivered more than {limit} times without being acknowledged"
            self._dead_letter_and_ack(
                [(text(i), reason, _payload_of(f) if f else b"") for i, f in poison],
                [text(i) for i, _ in poison],
            )
            self.counts.dead_lettered += len(poison)
            metrics.TRACES_DEAD_LETTERED.inc(len(poison))
        return [(i, f) for i, f in claimed if deliveries.get(text(i), 0) <= limit]

    # -- handling a batch ----------------------------------------------------------------------

    def handle(self, entries: list[StreamEntry]) -> None:
        """Validate and decide each entry, dispatch the valid ones, then dead-letter + XACK."""
        dead: list[tuple[str, str, bytes]] = []
        tasks: list[dict[str, Any]] = []
        judge_tasks: list[dict[str, Any]] = []
        valid: list[tuple[str, Trace, str]] = []
        for raw_id, fields in entries:
            entry_id = text(raw_id)
            if not fields:
                dead.append(
                    (entry_id, "entry was trimmed from the stream before it was processed", b"")
                )
                continue
            outcome = parse_entry(fields, self.settings.max_trace_bytes)
            if isinstance(outcome, str):
                dead.append((entry_id, outcome, _payload_of(fields)))
                continue
            valid.append((entry_id, outcome, text(fields[TRACE_FIELD.encode()])))
        recent = self.versions.recent(trace for _, trace, _ in valid)
        policy = self.budget.policy(self.policy) if self.budget else self.policy
        outcomes: Counter[tuple[str, bool]] = Counter()  # (stratum, sampled) -> traces
        eligible: Counter[str] = Counter()
        session_turns: list[tuple[Trace, str, str]] = []
        for entry_id, trace, payload in valid:
            decision = self._decide(policy, trace, recent)
            if isinstance(decision, str):
                dead.append((entry_id, decision, payload.encode()))
                continue
            outcomes[decision.stratum, decision.judge] += 1
            if decision.judge:  # judges that applied, thinned out by their budget or not
                eligible.update(decision.judges + decision.sampled_out)
            tasks.append(heuristics_entry(entry_id, payload, decision))
            if trace.session_id is not None:
                session_turns.append((trace, trace.session_id, decision.stratum))
            if decision.judges:
                judge_tasks.append(
                    judge_entry(entry_id, payload, decision.judges, decision.inclusion, time.time())
                )
        batches = [
            (queue, uuid.uuid4().hex, chunk)
            for queue, items, size in (
                (HEURISTICS_QUEUE, tasks, self.settings.heuristics_batch_size),
                (JUDGES_QUEUE, judge_tasks, self.settings.judge_batch_size),
            )
            for chunk in _chunks(items, size)
        ]
        # Recorded before the broker has them: a message the broker loses is re-dispatched.
        # (Judge work has the ledger for that.)
        heuristics = {batch_id: c for queue, batch_id, c in batches if queue == HEURISTICS_QUEUE}
        inflight.add(self.client, heuristics, self.inflight_due_s)
        # The batch's turns go to the session tracker now, and its answer is waited for only
        # after the dispatch: Redis records them while this process hands the batch to the
        # broker. Still before the XACK: a failure or a crash in between leaves the entries
        # pending, and re-read they are observed again (observing a turn twice changes nothing).
        observing = self._start_observing(session_turns)
        try:
            for queue, batch_id, chunk in batches:
                self.dispatch(queue, chunk, batch_id)
                self.counts.batches_dispatched += 1
        except BaseException as exc:
            observing.cancel()
            if isinstance(exc, DispatchError):
                inflight.remove(self.client, list(heuristics))  # the entries stay pending instead
            raise
        observing.wait()
        if self.sessions is not None:
            metrics.SESSIONS_OBSERVED.inc(len(session_turns))
        sampled = sum(n for (_, judged), n in outcomes.items() if judged)
        self.counts.judge_sampled += sampled
        for (stratum, judged), n in outcomes.items():
            metrics.STRATUM_TRACES.labels(stratum, str(judged).lower()).inc(n)
        if valid and self.budget is not None and self.budget.enabled:
            # Only the budget planner reads these fleet-wide counters.
            strata: Counter[str] = Counter()
            for (stratum, _), n in outcomes.items():
                strata[stratum] += n
            record_traffic(self.client, strata, sampled, eligible)
        self._dead_letter_and_ack(dead, [text(entry_id) for entry_id, _ in entries])
        self.counts.consumed += len(entries)
        self.counts.dead_lettered += len(dead)
        metrics.TRACES_CONSUMED.inc(len(entries))
        metrics.TRACES_DEAD_LETTERED.inc(len(dead))
        metrics.TRACES_SAMPLED.inc(len(judge_tasks))

    def _start_observing(self, session_turns: list[tuple[Trace, str, str]]) -> Observation:
        if self.sessions is None:
            return Observation.nothing()
        turns = [
            TurnSeen(trace.tenant, session, trace.trace_id, stratum in SESSION_OUTCOME_STRATA)
            for trace, session, stratum in session_turns
        ]
        return self.sessions.start_observing(turns)

    @staticmethod
    def _decide(
        policy: SamplingPolicy, trace: Trace, recent: frozenset[str]
    ) -> SampleDecision | str:
        """The policy's verdict, or why there is none: one odd trace must not stop the loop."""
        try:
            return policy.decide(trace, recent)
        except Exception as exc:
            log.exception(
                "sampling policy failed on trace %s",
                trace.trace_id,
                extra={"trace_id": trace.trace_id, "tenant": trace.tenant},
            )
            return f"sampler could not decide: {type(exc).__name__}: {exc}"

    def _dead_letter_and_ack(self, dead: list[tuple[str, str, bytes]], ids: list[str]) -> None:
        # One MULTI: an entry is dead-lettered if and only if it is acknowledged.
        pipe = self.client.pipeline(transaction=True)
        for entry_id, reason, payload in dead:
            log.warning(
                "dead-lettering %s: %s",
                entry_id,
                one_line(reason),
                extra=logs.about_payload(payload),
            )
        letters = [(reason, payload, entry_id) for entry_id, reason, payload in dead]
        add_dead_letters(pipe, letters, self.consumer, self.dead_letter_limits)
        if ids:
            pipe.xack(TRACES_STREAM, SAMPLER_GROUP, *ids)
        pipe.execute()

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event, exit_when_idle: bool = False) -> SamplerCounts:
        """Loop until ``stop`` is set (the current batch is finished and acked first).

        Outages of Redis, the broker or the database never end the loop: nothing was acked, so
        it backs off and retries the same entries (re-read from this consumer's pending list)
        for as long as the outage lasts, logging one line when a dependency goes and one when
        it is back, and reporting them on /readyz (evaluator.ops.health). The periodic chores (the
        ledger reaper, the estimate gauges) report their outages the same way. The consumer
        name's lease, if any, is renewed as it goes and freed at the end; a name another sampler
        took while the lease had lapsed ends the loop (ConsumerNameTaken)."""
        from evaluator.ops.health import PROCESS, Backoff, watch_chore

        readiness = PROCESS
        backoff = Backoff(max_s=self.settings.outage_backoff_max_s)
        self.chores = [watch_chore(chore, readiness) for chore in self.chores]
        try:
            self._loop(stop, exit_when_idle, readiness, backoff)
        finally:
            if self.lease is not None:
                with contextlib.suppress(redis.RedisError):  # else it lapses after its TTL
                    self.lease.release()
        return self.counts

    def _loop(
        self, stop: threading.Event, exit_when_idle: bool, readiness: Readiness, backoff: Backoff
    ) -> None:
        from evaluator.ops.health import BROKER, REDIS, outage_of

        while not stop.is_set():
            dispatched = self.counts.batches_dispatched
            try:
                self._renew_lease()  # ConsumerNameTaken ends the loop: it is no outage
                handled = self.step()
                idle = exit_when_idle and handled == 0 and not self.backpressured()
            except Exception as exc:
                # The broker, Redis or the database (the budget's spend) is away.
                dependency = BROKER if isinstance(exc, DispatchError) else outage_of(exc)
                if dependency is None and isinstance(exc, redis.RedisError | OSError):
                    dependency = REDIS
                if dependency is None:
                    raise
                readiness.down(dependency, exc)
                if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
                    # Redis came back without its data (no persistence): recreate the group.
                    with contextlib.suppress(redis.RedisError):
                        ensure_group(self.client)
                self._recover_own_pending = True
                stop.wait(backoff.next())
                continue
            backoff.reset()
            readiness.up(REDIS)
            if self.counts.batches_dispatched > dispatched:
                readiness.up(BROKER)
            if idle:
                break


class FleetChore:
    """Runs ``work`` at most once per ``interval_s`` across every sampler of the fleet (a Redis
    key set NX with that expiry). A failure is logged, not raised: the sampler goes on."""

    def __init__(
        self, client: redis.Redis, name: str, interval_s: float, work: Callable[[], object]
    ) -> None:
        self.client = client
        self.key = f"{CHORE_PREFIX}{name}"
        self.interval_ms = int(interval_s * 1000)
        self.work = work

    def __call__(self) -> bool:
        try:
            if not self.client.set(self.key, "1", nx=True, px=self.interval_ms):
                return False
            self.work()
        except Exception:
            log.exception("periodic %s failed; next try in one interval", self.key)
        return True


def _id_key(entry_id: str) -> tuple[int, int]:
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


def _payload_of(fields: dict[bytes, bytes]) -> bytes:
    payload = fields.get(TRACE_FIELD.encode())
    if payload is not None:
        return payload
    return json.dumps({text(k): text(v) for k, v in fields.items()}).encode()
