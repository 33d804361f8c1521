"""The review queue: claims through a consumer group, leases, priority, tenants, final labels."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from helpers import make_trace

from evaluator.models import (
    ReviewItem,
    ReviewLabel,
    ReviewStatus,
    Score,
    Severity,
    Trace,
    Verdict,
)
from evaluator.review import ReviewRouter
from evaluator.review.queue import AlreadyLabelled, LeaseLost, QueueFilter, ReviewQueue
from evaluator.sinks.sql import SQLStore, score_row


def failing_score(trace: Trace, evaluator: str) -> Score:
    return Score.for_trace(
        trace.trace_id,
        evaluator,
        "3",
        evaluator,
        value=0.2,
        passed=False,
        severity=Severity.HIGH,
        reason="claim 2 is not in the context",
    )


def review_item(
    index: int, priority: int = 10, tenant: str = "acme", evaluator: str = "groundedness"
) -> ReviewItem:
    trace = make_trace(index, tenant=tenant)
    return ReviewItem.for_scores(trace, [failing_score(trace, evaluator)], priority=priority)


def seed(store: SQLStore, client: redis.Redis, items: list[ReviewItem]) -> None:
    """Store the items and their failing scores, and route them."""
    scores = [failing_score(item.trace, item.evaluator) for item in items]
    rows = [score_row(s, "acme", None, None) for s in scores]
    store.write_batch([], rows, items)
    assert len(ReviewRouter().publish(client, items)) == len(items)


@pytest.fixture
def queue(store: SQLStore, redis_client: redis.Redis) -> Iterator[ReviewQueue]:
    yield ReviewQueue(
        redis_client, store, lease_s=1.5
    )  # short, for the expiry tests; room for a slow CI machine


def test_two_reviewers_lease_expiry_no_item_lost_or_labelled_twice(
    queue: ReviewQueue, store: SQLStore, redis_client: redis.Redis
) -> None:
    seed(store, redis_client, [review_item(i) for i in range(10)])
    ana = queue.claim("ana", 3)
    ben = queue.claim("ben", 3)
    assert {c.item.id for c in ana}.isdisjoint({c.item.id for c in ben})
    assert store.review_item(ana[0].item.id).status == ReviewStatus.CLAIMED.value  # type: ignore[union-attr]
    for claimed in ana:
        queue.label(claimed.item.id, "ana", Verdict.FAIL, {"groundedness": 0.1}, "made-up claim")
    time.sleep(1.6)  # ben vanished: his lease runs out
    rest = queue.claim("ana", 10)
    assert {c.item.id for c in ben} <= {c.item.id for c in rest}
    assert len(rest) == 7
    with pytest.raises(LeaseLost, match="held by ana"):
        queue.label(ben[0].item.id, "ben", Verdict.PASS)
    for claimed in rest:
        queue.label(claimed.item.id, "ana", Verdict.PASS)
    labels = store.labels("groundedness")
    assert len(labels) == 10 and len({label.id for label in labels}) == 10
    assert queue.claim("ben", 10) == [] and queue.claim("ana", 10) == []
    first = store.label(ana[0].item.id)
    assert first is not None
    assert (first.reviewer, first.verdict, first.evaluator_version) == ("ana", Verdict.FAIL, "3")
    assert first.field_scores == {"groundedness": 0.1} and first.note == "made-up claim"
    assert first.trace.trace_id == ana[0].item.trace_id


def test_label_is_idempotent_and_final(
    queue: ReviewQueue, store: SQLStore, redis_client: redis.Redis
) -> None:
    seed(store, redis_client, [review_item(1)])
    [claimed] = queue.claim("ana")
    label = queue.label(claimed.item.id, "ana", Verdict.FAIL)
    assert queue.label(claimed.item.id, "ana", Verdict.FAIL) == label  # a retried request
    with pytest.raises(AlreadyLabelled, match="labelled fail by ana"):
        queue.label(claimed.item.id, "ana", Verdict.PASS)
    with pytest.raises(AlreadyLabelled):
        queue.label(claimed.item.id, "ben", Verdict.FAIL)
    assert store.review_item(claimed.item.id).status == ReviewStatus.LABELLED.value  # type: ignore[union-attr]


def test_most_urgent_first_and_tenant_scope(
    queue: ReviewQueue, store: SQLStore, redis_client: redis.Redis
) -> None:
    seed(
        store,
        redis_client,
        [
            review_item(1, priority=5),
            review_item(2, priority=20, evaluator="safety"),
            review_item(3, priority=10),
            review_item(4, priority=20, tenant="globex", evaluator="safety"),
        ],
    )
    acme = QueueFilter(frozenset({"acme"}))
    order = [c.item.trace_id for c in queue.claim("ana", 10, acme)]
    assert order == ["t-000002", "t-000003", "t-000001"]
    only_safety = queue.claim("ben", 10, QueueFilter(None, "safety"))
    assert [c.item.tenant for c in only_safety] == ["globex"]


def test_release_and_skip(queue: ReviewQueue, store: SQLStore, redis_client: redis.Redis) -> None:
    seed(store, redis_client, [review_item(1), review_item(2)])
    first, second = queue.claim("ana", 2)
    queue.release(first.item.id, "ana")
    queue.skip(second.item.id, "ana")
    assert store.review_item(first.item.id).status == ReviewStatus.PENDING.value  # type: ignore[union-attr]
    assert [c.item.id for c in queue.claim("ana", 5)] == [first.item.id]  # not the skipped one
    assert [c.item.id for c in queue.claim("ben", 5)] == [second.item.id]  # at once, no lease wait
    with pytest.raises(LeaseLost):
        queue.release(second.item.id, "ana")


def test_a_label_written_before_a_crash_is_not_served_again(
    queue: ReviewQueue, store: SQLStore, redis_client: redis.Redis
) -> None:
    item = review_item(1)
    seed(store, redis_client, [item])
    queue.claim("ana")
    # The label reached SQL, then the process died before XACK.
    store.add_labels(
        [
            ReviewLabel(
                id=item.id,
                trace_id=item.trace_id,
                evaluator=item.evaluator,
                reviewer="ana",
                verdict=Verdict.FAIL,
                trace=item.trace,
            )
        ]
    )
    time.sleep(1.6)
    assert queue.claim("ben") == []
    assert redis_client.xpending(queue.queues()[0], "reviewers")["pending"] == 0
