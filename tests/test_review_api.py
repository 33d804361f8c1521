"""The review API: auth on every endpoint, tenant isolation, the claim → label flow."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from test_review_queue import review_item, seed

from evaluator.models import ReviewItem
from evaluator.review.api import create_app
from evaluator.review.queue import ReviewQueue
from evaluator.settings import ReviewerAccess, Settings
from evaluator.sinks.sql import SQLStore

TOKENS = {
    "tok-ana": ReviewerAccess(reviewer="ana", tenants=["acme"]),
    "tok-ops": ReviewerAccess(reviewer="ops", tenants=["*"]),
}
ANA = {"Authorization": "Bearer tok-ana"}
OPS = {"Authorization": "Bearer tok-ops"}


@pytest.fixture
def items(
    sqlite_url: str, redis_client: redis.Redis
) -> Iterator[tuple[TestClient, list[ReviewItem]]]:
    store = SQLStore(sqlite_url)
    seeded = [review_item(1), review_item(2), review_item(3, tenant="globex")]
    seed(store, redis_client, seeded)
    app = create_app(ReviewQueue(redis_client, store, lease_s=60), Settings(reviewer_tokens=TOKENS))
    with TestClient(app) as client:
        yield client, seeded
    store.close()


def endpoints(item_id: str) -> list[tuple[str, str, dict[str, object] | None]]:
    return [
        ("GET", "/api/queues", None),
        ("POST", "/api/claim", {"n": 1}),
        ("GET", f"/api/items/{item_id}", None),
        ("POST", f"/api/items/{item_id}/label", {"verdict": "fail"}),
        ("POST", f"/api/items/{item_id}/release", None),
        ("POST", f"/api/items/{item_id}/skip", None),
        ("POST", f"/api/items/{item_id}/renew", None),
        ("GET", "/review", None),
        ("POST", "/review/next", None),
        ("GET", f"/review/items/{item_id}", None),
        ("POST", f"/review/items/{item_id}/label", None),
        ("POST", f"/review/items/{item_id}/release", None),
        ("POST", f"/review/items/{item_id}/skip", None),
    ]


def call(client: TestClient, method: str, path: str, body: object, headers: dict[str, str]) -> int:
    if method == "GET":
        return client.get(path, headers=headers).status_code
    if path.startswith("/review/"):
        form = {"verdict": "fail"} if path.endswith("/label") else {}
        return client.post(path, data=form, headers=headers, follow_redirects=False).status_code
    return client.post(path, json=body, headers=headers).status_code


def test_every_endpoint_refuses_a_missing_or_wrong_token(
    items: tuple[TestClient, list[ReviewItem]],
) -> None:
    client, seeded = items
    for method, path, body in endpoints(seeded[0].id):
        assert call(client, method, path, body, {}) == 401, (method, path)
        assert call(client, method, path, body, {"Authorization": "Bearer nope"}) == 401, path
        client.cookies.set("evalfleet_review", "nope")
        assert call(client, method, path, body, {}) == 401, (method, path, "cookie")
        client.cookies.clear()


def test_a_reviewer_cannot_read_or_label_another_tenants_items(
    items: tuple[TestClient, list[ReviewItem]],
) -> None:
    client, seeded = items
    foreign = seeded[2]
    item_endpoints = [e for e in endpoints(foreign.id) if foreign.id in e[1]]
    for method, path, body in item_endpoints:
        assert call(client, method, path, body, ANA) == 403, (method, path)
    claimed = client.post("/api/claim", json={"n": 10}, headers=ANA).json()
    assert {c["tenant"] for c in claimed} == {"acme"} and len(claimed) == 2
    assert {q["tenant"] for q in client.get("/api/queues", headers=ANA).json()} == {"acme"}
    assert client.get(f"/api/items/{foreign.id}", headers=OPS).status_code == 200


def test_claim_label_flow_and_conflicts(items: tuple[TestClient, list[ReviewItem]]) -> None:
    client, seeded = items
    [claimed] = client.post("/api/claim", json={"n": 1}, headers=ANA).json()
    view = client.get(f"/api/items/{claimed['id']}", headers=ANA).json()
    assert view["holder"] == "ana"
    assert [(s["name"], s["passed"]) for s in view["scores"]] == [("groundedness", False)]
    assert view["item"]["trace"]["output"]
    body = {"verdict": "fail", "field_scores": {"groundedness": 0.2}, "note": "invented step"}
    first = client.post(f"/api/items/{claimed['id']}/label", json=body, headers=ANA)
    assert first.status_code == 200 and first.json()["reviewer"] == "ana"
    again = client.post(f"/api/items/{claimed['id']}/label", json=body, headers=ANA)
    assert again.json() == first.json()  # idempotent
    assert (
        client.post(f"/api/items/{claimed['id']}/label", json=body, headers=OPS).status_code == 409
    )
    unclaimed = next(i for i in seeded if i.id != claimed["id"] and i.tenant == "acme")
    answer = client.post(f"/api/items/{unclaimed.id}/label", json=body, headers=ANA)
    assert answer.status_code == 409 and "claim it first" in answer.json()["detail"]
    assert client.get("/api/items/nope", headers=ANA).status_code == 404
    bad = client.post(f"/api/items/{claimed['id']}/label", json={"verdict": "maybe"}, headers=ANA)
    assert bad.status_code == 422
    spec = client.get("/openapi.json").json()
    assert {"/api/claim", "/api/items/{item_id}/label", "/api/queues"} <= set(spec["paths"])
    assert client.get("/healthz").text == "ok\n"
    assert (
        'evalfleet_review_labelled_total{evaluator="groundedness",verdict="fail"}'
        in client.get("/metrics").text
    )
