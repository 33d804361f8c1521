"""Session completion against a real Redis: once, across samplers, re-opened by late turns."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluator.constants import SESSIONS_DUE
from evaluator.sessions.tracker import (
    CompletedSession,
    SessionPolicy,
    SessionTracker,
    TurnSeen,
    session_digest,
)

POLICY = SessionPolicy(quiet_s=10, max_age_s=100, retention_s=3600, max_turns=50)
T0 = 1_800_000_000_000  # ms


def turn(session: str, n: int, tenant: str | None = "acme", outcome: bool = False) -> TurnSeen:
    return TurnSeen(tenant, session, f"{session}-turn-{n}", outcome)


@pytest.fixture
def tracker(redis_client: redis.Redis) -> SessionTracker:
    return SessionTracker(redis_client, POLICY)


def test_a_session_completes_once_after_its_quiet_period(tracker: SessionTracker) -> None:
    assert tracker.observe([turn("s1", 1), turn("s1", 2), turn("s2", 1)], now_ms=T0) == 2
    handed: list[CompletedSession] = []
    assert tracker.complete_due(handed.extend, now_ms=T0 + 9_999) == 0
    assert tracker.complete_due(handed.extend, now_ms=T0 + 10_000) == 2
    by_id = {s.session_id: s for s in handed}
    assert by_id["s1"].turn_ids == ("s1-turn-1", "s1-turn-2")
    assert by_id["s1"].tenant == "acme" and not by_id["s1"].outcome
    assert tracker.complete_due(handed.extend, now_ms=T0 + 60_000) == 0
    assert len(handed) == 2 and tracker.open_count() == 0


def test_a_redelivered_turn_changes_nothing(
    tracker: SessionTracker, redis_client: redis.Redis
) -> None:
    tracker.observe([turn("s1", 1)], now_ms=T0)
    due = redis_client.zscore(SESSIONS_DUE, session_digest("acme", "s1"))
    assert tracker.observe([turn("s1", 1)], now_ms=T0 + 5_000) == 0
    assert redis_client.zscore(SESSIONS_DUE, session_digest("acme", "s1")) == due
    [session] = tracker.read_due(now_ms=T0 + 10_000)
    assert session.turn_ids == ("s1-turn-1",)


def test_a_turn_during_the_hand_off_defers_completion_to_a_new_version(
    tracker: SessionTracker,
) -> None:
    tracker.observe([turn("s1", 1)], now_ms=T0)
    first: list[CompletedSession] = []

    def hand_off_while_a_turn_arrives(sessions: list[CompletedSession]) -> None:
        first.extend(sessions)
        tracker.observe([turn("s1", 2)], now_ms=T0 + 10_500)

    assert tracker.complete_due(hand_off_while_a_turn_arrives, now_ms=T0 + 10_000) == 0
    second: list[CompletedSession] = []
    assert tracker.complete_due(second.extend, now_ms=T0 + 20_500) == 1
    assert second[0].turn_ids == ("s1-turn-1", "s1-turn-2")
    assert second[0].version != first[0].version


def test_a_late_turn_reopens_a_completed_session_as_a_new_version(
    tracker: SessionTracker,
) -> None:
    handed: list[CompletedSession] = []
    tracker.observe([turn("s1", 1), turn("s1", 2)], now_ms=T0)
    tracker.complete_due(handed.extend, now_ms=T0 + 10_000)
    tracker.observe([turn("s1", 3, outcome=True)], now_ms=T0 + 500_000)
    assert tracker.complete_due(handed.extend, now_ms=T0 + 505_000) == 0  # a new window
    assert tracker.complete_due(handed.extend, now_ms=T0 + 510_000) == 1
    before, after = handed
    assert after.turn_ids == ("s1-turn-1", "s1-turn-2", "s1-turn-3") and after.outcome
    assert before.version != after.version
    assert after.first_ms == T0 + 500_000


def test_a_failed_hand_off_finishes_nothing_and_is_repeated_as_the_same_version(
    tracker: SessionTracker,
) -> None:
    tracker.observe([turn("s1", 1)], now_ms=T0)

    def broker_down(sessions: list[CompletedSession]) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        tracker.complete_due(broker_down, now_ms=T0 + 10_000)
    handed: list[CompletedSession] = []
    assert tracker.complete_due(handed.extend, now_ms=T0 + 11_000) == 1
    assert handed[0].version == CompletedSession(**{**handed[0].__dict__, "due": "x"}).version


def test_a_session_that_never_goes_quiet_completes_at_its_maximum_age(
    tracker: SessionTracker,
) -> None:
    handed: list[CompletedSession] = []
    for n in range(25):  # a turn every 5 s, each inside the 10 s quiet period
        tracker.observe([turn("chatty", n)], now_ms=T0 + 5_000 * n)
        tracker.complete_due(handed.extend, now_ms=T0 + 5_000 * n)
    [session] = handed
    assert len(session.turn_ids) == 21  # turns 0..20 arrived by the 100 s maximum age
    assert tracker.open_count() == 1  # turn 21 opened a new window


def test_turns_beyond_the_cap_are_counted_not_kept(redis_client: redis.Redis) -> None:
    tracker = SessionTracker(redis_client, SessionPolicy(10, 100, 3600, max_turns=3))
    tracker.observe([turn("s1", n) for n in range(5)], now_ms=T0)
    [session] = tracker.read_due(now_ms=T0 + 10_000)
    assert len(session.turn_ids) == 3 and session.overflow


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("a:b", "c"), ("a", "b:c")),
        (("a b", "c"), ("a", "b c")),
        ((None, "s"), ("", "s")),
        (("t", '"s'), ('t"', "s")),
        (("ü*{}", "x" * 128), ("ü*{", "}" + "x" * 128)),
    ],
)
def test_tenants_never_share_a_session_whatever_their_names_hold(
    tracker: SessionTracker, one: tuple[str | None, str], other: tuple[str | None, str]
) -> None:
    tracker.observe([TurnSeen(*one, "t1", False), TurnSeen(*other, "t2", False)], now_ms=T0)
    sessions = tracker.read_due(now_ms=T0 + 10_000)
    assert {(s.tenant, s.session_id, s.turn_ids) for s in sessions} == {
        (*one, ("t1",)),
        (*other, ("t2",)),
    }


def test_samplers_racing_finish_each_session_once(redis_client: redis.Redis) -> None:
    trackers = [SessionTracker(redis_client, POLICY) for _ in range(4)]
    trackers[0].observe([turn(f"s{n}", 1) for n in range(400)], now_ms=T0)
    handed: list[tuple[str, str]] = []
    finished: list[int] = []
    lock = threading.Lock()

    def hand_off(sessions: list[CompletedSession]) -> None:
        with lock:
            handed.extend((s.digest, s.version) for s in sessions)

    def run(tracker: SessionTracker) -> None:
        for _ in range(20):
            finished.append(tracker.complete_due(hand_off, now_ms=T0 + 10_000, limit=50))

    threads = [threading.Thread(target=run, args=(t,)) for t in trackers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(finished) == 400  # each session finished exactly once
    # Handed over at least once each; a repeat is the same (session, version): idempotent.
    assert len(set(handed)) == 400
    assert trackers[0].open_count() == 0


def test_a_turn_moves_completion_later_without_writing_the_due_set(
    tracker: SessionTracker, redis_client: redis.Redis
) -> None:
    tracker.observe([turn("s1", 1)], now_ms=T0)
    digest = session_digest("acme", "s1")
    tracker.observe([turn("s1", 2)], now_ms=T0 + 5_000)
    assert redis_client.zscore(SESSIONS_DUE, digest) == T0 + 10_000  # a lower bound only
    # Not quiet yet at its first due time: moved to the real one instead of handed over.
    assert tracker.complete_due(lambda _: None, now_ms=T0 + 10_000) == 0
    assert redis_client.zscore(SESSIONS_DUE, digest) == T0 + 15_000
    handed: list[CompletedSession] = []
    assert tracker.complete_due(handed.extend, now_ms=T0 + 15_000) == 1
    assert handed[0].turn_ids == ("s1-turn-1", "s1-turn-2") and handed[0].seen == 2


def test_a_turn_during_the_hand_off_at_the_maximum_age_is_not_lost(
    tracker: SessionTracker,
) -> None:
    # At its maximum age a session's due time no longer moves with a new turn: the finish is
    # guarded by the turns seen, so the turn that arrived during the hand-off is evaluated too.
    for n in range(11):
        tracker.observe([turn("s1", n)], now_ms=T0 + 9_000 * n)
    first: list[CompletedSession] = []

    def hand_off_while_a_turn_arrives(sessions: list[CompletedSession]) -> None:
        first.extend(sessions)
        tracker.observe([turn("s1", 11)], now_ms=T0 + 100_000)

    assert tracker.complete_due(hand_off_while_a_turn_arrives, now_ms=T0 + 100_000) == 0
    assert len(first[0].turn_ids) == 11
    second: list[CompletedSession] = []
    assert tracker.complete_due(second.extend, now_ms=T0 + 100_000) == 1
    assert len(second[0].turn_ids) == 12 and second[0].version != first[0].version


def test_completing_a_backlog_goes_past_sessions_that_were_not_due_yet(
    tracker: SessionTracker,
) -> None:
    now = int(time.time() * 1000)
    # The busy ten have the lowest due times, so they fill the first page of the due set; a
    # turn a second ago means they are not due yet, and the twenty behind them are.
    tracker.observe([turn(f"busy-{n}", 1) for n in range(10)], now_ms=now - 70_000)
    tracker.observe([turn(f"quiet-{n}", 1) for n in range(20)], now_ms=now - 60_000)
    tracker.observe([turn(f"busy-{n}", 2) for n in range(10)], now_ms=now - 1_000)
    handed: list[CompletedSession] = []
    assert tracker.complete_all_due(handed.extend, limit=10) == 20
    assert {s.session_id for s in handed} == {f"quiet-{n}" for n in range(20)}
    assert tracker.open_count() == 10


def test_an_observation_given_up_is_safely_observed_again(tracker: SessionTracker) -> None:
    turns = [turn("s1", n) for n in range(3)]
    tracker.start_observing(turns, now_ms=T0).cancel()  # recorded or not: either is safe
    # Its answer is never read as another's: two new sessions are two, whatever s1's was.
    assert tracker.observe([turn("s2", 1), turn("s3", 1)], now_ms=T0) == 2
    tracker.observe(turns, now_ms=T0 + 1_000)
    by_id = {s.session_id: s for s in tracker.read_due(now_ms=T0 + 20_000)}
    assert by_id["s1"].turn_ids == tuple(t.trace_id for t in turns) and by_id["s1"].seen == 3


def test_observing_goes_on_after_redis_lost_its_scripts(
    tracker: SessionTracker, redis_client: redis.Redis
) -> None:
    tracker.observe([turn("s1", 1)], now_ms=T0)
    redis_client.script_flush()  # as after a restart without persistence of scripts
    assert tracker.observe([turn("s2", 1)], now_ms=T0) == 1
    assert {s.session_id for s in tracker.read_due(now_ms=T0 + 10_000)} == {"s1", "s2"}


names = st.text(max_size=80)


@given(tenant=st.none() | names, session_id=names)
def test_a_session_is_the_digest_of_the_json_of_its_tenant_and_id(
    tenant: str | None, session_id: str
) -> None:
    who = json.dumps([tenant, session_id], ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert session_digest(tenant, session_id) == hashlib.blake2b(who, digest_size=16).hexdigest()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    turns=st.lists(
        st.builds(TurnSeen, st.none() | names, names, st.text(min_size=1, max_size=80),
                  st.booleans()),
        min_size=1, max_size=12,
    )
)  # fmt: skip
def test_whatever_names_and_trace_ids_hold_they_come_back_as_they_went_in(
    redis_client: redis.Redis, turns: list[TurnSeen]
) -> None:
    redis_client.flushdb()
    tracker = SessionTracker(redis_client, POLICY)
    tracker.observe(turns, now_ms=T0)
    expected: dict[tuple[str | None, str], set[str]] = {}
    outcome = set()
    for t in turns:
        held = expected.setdefault((t.tenant, t.session_id), set())
        if t.trace_id not in held and t.outcome:  # a turn seen again is the same turn
            outcome.add((t.tenant, t.session_id))
        held.add(t.trace_id)
    sessions = tracker.read_due(now_ms=T0 + 10_000)
    assert {(s.tenant, s.session_id): set(s.turn_ids) for s in sessions} == expected
    assert {(s.tenant, s.session_id) for s in sessions if s.outcome} == outcome
    assert tracker.observe(turns, now_ms=T0 + 5_000) == 0  # again: nothing changes
    assert sorted(s.seen for s in tracker.read_due(now_ms=T0 + 10_000)) == sorted(
        len(ids) for ids in expected.values()
    )
