"""Review queue keys built from untrusted tenant names: reversible, unambiguous, isolated.

The review API is exercised end to end (FastAPI app, real Redis, SQLite) with tenant names made
of every awkward character: the key separators ":" and " ", Redis glob and hash-tag characters,
"%", the no-tenant marker "-", unicode, 128 characters.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from helpers import make_trace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_review_queue import failing_score, seed

from evaluator.constants import REVIEW_ENTRIES, REVIEW_GROUP, REVIEW_QUEUE_PREFIX, REVIEW_QUEUES
from evaluator.models import Level, ReviewItem
from evaluator.review.api import create_app
from evaluator.review.queue import QueueFilter, ReviewQueue
from evaluator.review.routing import (
    decode_key_part,
    encode_key_part,
    parse_entry_location,
    parse_queue_key,
    queue_key,
    queue_level,
)
from evaluator.settings import ReviewerAccess, Settings
from evaluator.sinks.sql import SQLStore
from evaluator.streams import text

AWKWARD = [
    "globex",
    "globex:eu",
    "globex:",
    ":",
    "a b",
    " ",
    "a*",
    "*b",
    "{tag}",
    "}{",
    "-",
    "--",
    "%",
    "%2D",
    "a%3Ab",
    "ünïcødé",
    "租户",
    "🙂",
    "x" * 128,
    "é" * 128,
]
# Characters a trace's fields may hold: not NUL, not a lone surrogate (Trace refuses both).
st_trace_characters = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
# Any text a trace may carry as its tenant (1-128 of those characters), but "*": in a token's
# tenant list it means every tenant, so it cannot scope a token.
tenant_names = st.one_of(
    st.sampled_from(AWKWARD),
    st.text(st_trace_characters, min_size=1, max_size=128),
).filter(lambda name: name != "*")


def legacy_queue_key(priority: int, tenant: str | None, evaluator: str) -> str:
    """How queue keys were written before names were encoded."""
    return f"{REVIEW_QUEUE_PREFIX}{priority:03d}:{tenant or '-'}:{evaluator}"


@given(st.text(st.characters(exclude_characters="\x00")))  # lone surrogates too: encoding is total
def test_encoding_is_reversible_and_leaves_no_separator(name: str) -> None:
    encoded = encode_key_part(name)
    assert decode_key_part(encoded) == name
    assert not set(encoded) & set(": *{}\x00")
    assert encoded != "-"  # never the no-tenant marker
    assert set(encoded) <= set(string.ascii_letters + string.digits + "_-%")


@given(
    st.integers(0, 999),
    st.none() | st.text(st.characters(exclude_characters="\x00"), max_size=128),
    st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=128),
)
def test_a_queue_key_parses_back_to_what_built_it(
    priority: int, tenant: str | None, evaluator: str
) -> None:
    # An empty tenant was always "no tenant"; it still is.
    assert parse_queue_key(queue_key(priority, tenant, evaluator)) == (
        priority,
        tenant or None,
        evaluator,
    )


@given(
    st.text(string.ascii_letters + string.digits + "_-", min_size=1).filter(lambda t: t != "-"),
    st.from_regex(r"\A[a-z][a-z0-9_]{0,30}\Z"),
)
def test_ordinary_names_keep_their_keys_byte_for_byte(tenant: str, evaluator: str) -> None:
    """A running fleet's queues keep working: the keys of ordinary tenants did not change."""
    for tenant_or_none in (tenant, None):
        assert queue_key(10, tenant_or_none, evaluator) == legacy_queue_key(
            10, tenant_or_none, evaluator
        )


@given(
    st.integers(0, 999),
    st.none() | st.text(st.characters(exclude_characters="\x00"), max_size=128),
    st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=128),
    st.sampled_from(list(Level)),
)
def test_a_leveled_queue_key_parses_back_and_says_its_level(
    priority: int, tenant: str | None, evaluator: str, level: Level
) -> None:
    key = queue_key(priority, tenant, evaluator, level)
    assert parse_queue_key(key) == (priority, tenant or None, evaluator)
    assert queue_level(key) is level
    if level is Level.TURN:  # a turn's queue is the queue it always was
        assert key == queue_key(priority, tenant, evaluator)


@given(
    st.text(st_trace_characters, min_size=1, max_size=64),
    st.sampled_from(["session", "trajectory", "groundedness"]),
)
def test_a_key_from_before_the_encoding_never_reads_as_a_leveled_key(
    tenant: str, evaluator: str
) -> None:
    """A tenant written raw (":" and "/" included) cannot make a legacy key parse as another
    tenant's leveled queue: the level lives in the priority part, which only our code wrote."""
    legacy = legacy_queue_key(10, tenant, evaluator)
    try:
        parsed = parse_queue_key(legacy)
    except ValueError:
        return
    assert parsed == (10, decode_or_raw(tenant), evaluator) and queue_level(legacy) is Level.TURN


def decode_or_raw(tenant: str) -> str | None:
    """What a legacy key's tenant parses to when it parses at all (it held no ":")."""
    return None if tenant == "-" else decode_key_part(tenant)


def test_entry_locations_split_at_the_last_space() -> None:
    assert parse_entry_location("evalfleet:review:q:010:a%20b:g 1-0") == (
        "evalfleet:review:q:010:a%20b:g",
        "1-0",
    )
    legacy = legacy_queue_key(10, "a b", "g")  # written before the encoding: holds a space
    assert parse_entry_location(f"{legacy} 1700000000000-3") == (legacy, "1700000000000-3")
    for broken in ("", "1-0", "queue "):
        with pytest.raises(ValueError):
            parse_entry_location(broken)


def test_a_queue_key_from_before_the_encoding_is_never_served_to_the_wrong_tenant(
    sqlite_url: str, redis_client: redis.Redis
) -> None:
    """The bug: "globex:eu"'s items sat in a key that parsed as tenant "globex". Such a key is
    served to all-tenant reviewers only, and each item's own tenant is checked on claim."""
    store = SQLStore(sqlite_url)
    trace = make_trace(1, tenant="globex:eu")
    item = ReviewItem.for_scores(trace, [failing_score(trace, "groundedness")], priority=10)
    store.write_batch([], [], [item])
    old_key = legacy_queue_key(10, "globex:eu", "groundedness")
    entry = text(redis_client.xadd(old_key, {"id": item.id, "item": item.model_dump_json()}))
    redis_client.xgroup_create(old_key, REVIEW_GROUP, "0")
    redis_client.sadd(REVIEW_QUEUES, old_key)
    redis_client.hset(REVIEW_ENTRIES, item.id, f"{old_key} {entry}")
    queue = ReviewQueue(redis_client, store, lease_s=60, sinks=[])
    try:
        assert queue.claim("globex-reviewer", 5, QueueFilter(frozenset({"globex"}))) == []
        assert queue.claim("eu-reviewer", 5, QueueFilter(frozenset({"globex:eu"}))) == []
        [claimed] = queue.claim("admin", 5, QueueFilter())
        assert claimed.item.tenant == "globex:eu"
        assert queue.get(item.id).tenant == "globex:eu"
    finally:
        store.close()


def test_an_item_in_a_misleading_queue_is_released_not_served(
    sqlite_url: str, redis_client: redis.Redis
) -> None:
    """A key from before the encoding can also parse as another tenant's valid key (tenant
    "a%20b" was written raw, which now reads as "a b"): claim checks the item's own tenant."""
    store = SQLStore(sqlite_url)
    trace = make_trace(2, tenant="a%20b")
    item = ReviewItem.for_scores(trace, [failing_score(trace, "groundedness")], priority=10)
    store.write_batch([], [], [item])
    old_key = legacy_queue_key(10, "a%20b", "groundedness")
    assert parse_queue_key(old_key)[1] == "a b"
    redis_client.xadd(old_key, {"id": item.id, "item": item.model_dump_json()})
    redis_client.xgroup_create(old_key, REVIEW_GROUP, "0")
    redis_client.sadd(REVIEW_QUEUES, old_key)
    queue = ReviewQueue(redis_client, store, lease_s=60, sinks=[])
    try:
        assert queue.claim("space-reviewer", 5, QueueFilter(frozenset({"a b"}))) == []
        [claimed] = queue.claim("admin", 5, QueueFilter())
        assert claimed.item.id == item.id  # released by the first claim, not lost
    finally:
        store.close()


_trace_numbers = itertools.count(100_000)


@pytest.fixture
def review_store(sqlite_url: str) -> Iterator[SQLStore]:
    store = SQLStore(sqlite_url)
    yield store
    store.close()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tenants=st.lists(tenant_names, min_size=2, max_size=4, unique=True))
def test_reviewers_see_only_their_tenant_and_every_item_can_be_worked(
    tenants: list[str], review_store: SQLStore, redis_client: redis.Redis
) -> None:
    """Through the real app: a reviewer scoped to one tenant never sees, claims, reads, labels
    or releases another's items, and every item of every tenant can be claimed, read, released
    and labelled (TestClient re-raises any server error, so a 500 fails here too)."""
    redis_client.flushdb()
    by_tenant: dict[str, list[ReviewItem]] = {}
    for tenant in tenants:
        traces = [make_trace(next(_trace_numbers), tenant=tenant) for _ in range(2)]
        by_tenant[tenant] = [
            ReviewItem.for_scores(t, [failing_score(t, "groundedness")], priority=10)
            for t in traces
        ]
    seed(review_store, redis_client, [item for items in by_tenant.values() for item in items])
    tokens = {
        f"tok-{index}": ReviewerAccess(reviewer=f"reviewer-{index}", tenants=[tenant])
        for index, tenant in enumerate(tenants)
    }
    app = create_app(
        ReviewQueue(redis_client, review_store, lease_s=60, sinks=[]),
        Settings(reviewer_tokens=tokens),
    )
    with TestClient(app) as client:
        for index, tenant in enumerate(tenants):
            auth = {"Authorization": f"Bearer tok-{index}"}
            own = {item.id for item in by_tenant[tenant]}
            foreign = [i.id for t, items in by_tenant.items() if t != tenant for i in items]

            counts = client.get("/api/queues", headers=auth).json()
            assert {c["tenant"] for c in counts} == {tenant}
            claimed = client.post("/api/claim", json={"n": 10}, headers=auth).json()
            assert {c["id"] for c in claimed} == own
            assert {c["tenant"] for c in claimed} == {tenant}
            for item_id in foreign:
                assert client.get(f"/api/items/{item_id}", headers=auth).status_code == 403
                label = client.post(
                    f"/api/items/{item_id}/label", json={"verdict": "fail"}, headers=auth
                )
                assert label.status_code == 403
                release = client.post(f"/api/items/{item_id}/release", headers=auth)
                assert release.status_code == 403

            first, second = sorted(own)
            view = client.get(f"/api/items/{first}", headers=auth)
            assert view.status_code == 200 and view.json()["item"]["tenant"] == tenant
            assert client.post(f"/api/items/{first}/release", headers=auth).status_code == 204
            [again] = client.post("/api/claim", json={"n": 1}, headers=auth).json()
            assert again["id"] == first
            assert client.post(f"/api/items/{first}/renew", headers=auth).status_code == 204
            for item_id in (first, second):
                label = client.post(
                    f"/api/items/{item_id}/label", json={"verdict": "pass"}, headers=auth
                )
                assert label.status_code == 200 and label.json()["reviewer"] == f"reviewer-{index}"
            assert client.post("/api/claim", json={"n": 10}, headers=auth).json() == []
