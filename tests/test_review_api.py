"""The review API: auth on every endpoint, tenant isolation, the claim → label flow."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from test_review_queue import review_item, seed

from evaluator.models import ReviewItem
from evaluator.review.api import COOKIE, create_app, session_cookie
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
        client.app.state.throttle.clear()  # type: ignore[attr-defined]  # 26 wrong tokens here
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


def test_an_undeclared_query_parameter_is_refused_not_ignored(
    items: tuple[TestClient, list[ReviewItem]],
) -> None:
    # "?levle=session" ignored would list every level as if it were the session queue.
    client, _ = items
    assert client.get("/api/queues?level=session", headers=OPS).status_code == 200
    refused = client.get("/api/queues?levle=session", headers=OPS)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["query", "levle"]
    assert client.get("/api/items?limit=5&x=1", headers=OPS).status_code == 422


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
    spec = client.get("/openapi.json", headers=ANA).json()
    assert {"/api/claim", "/api/items/{item_id}/label", "/api/queues"} <= set(spec["paths"])
    assert client.get("/healthz").text == "ok\n"
    assert (
        'evalfleet_review_labelled_total{evaluator="groundedness",verdict="fail"}'
        in client.get("/metrics", headers=ANA).text
    )


def test_the_bearer_scheme_is_case_insensitive(items: tuple[TestClient, list[ReviewItem]]) -> None:
    client, _ = items
    for header in ("bearer tok-ana", "BEARER tok-ana", "Bearer  tok-ana "):
        answer = client.get("/api/queues", headers={"Authorization": header})
        assert answer.status_code == 200, header
    assert client.get("/api/queues", headers={"Authorization": "Basic tok-ana"}).status_code == 401
    assert client.get("/api/queues", headers={"Authorization": "tok-ana"}).status_code == 401


def test_the_login_cookie_is_not_the_token_and_signs_the_page_in(
    items: tuple[TestClient, list[ReviewItem]],
) -> None:
    client, _ = items
    answer = client.post("/review/login", data={"token": "tok-ana"}, follow_redirects=False)
    assert answer.status_code == 303
    set_cookie = answer.headers["set-cookie"]
    cookie = client.cookies[COOKIE]
    assert "tok-ana" not in set_cookie and cookie != "tok-ana"
    assert "HttpOnly" in set_cookie and "samesite=strict" in set_cookie.lower()
    assert (
        f"Max-Age={Settings().review_session_s}" in set_cookie and "Secure" not in set_cookie
    )  # plain http
    page = client.get("/review")
    assert page.status_code == 200 and "ana" in page.text
    assert client.get("/api/queues").status_code == 200  # the cookie works for the API too
    # The raw token, an expired session or a tampered one are no cookies.
    settings = client.app.state.settings  # type: ignore[attr-defined]
    expired = session_cookie(settings, "tok-ana", now=time.time() - settings.review_session_s - 1)
    expires, _, signature = cookie.partition(".")
    later = f"{int(expires) + 3600}.{signature}"
    tampered = f"{expires}.{signature[:-1]}{'1' if signature.endswith('0') else '0'}"
    for forged in ("tok-ana", expired, later, tampered, "."):
        client.cookies.clear()
        client.cookies.set(COOKIE, forged)
        assert client.get("/review").status_code == 401, forged
    # Another replica with the same tokens accepts the cookie (the key comes from the tokens).
    client.cookies.clear()
    client.cookies.set(COOKIE, session_cookie(settings, "tok-ops"))
    assert "ops" in client.get("/review").text


def test_the_cookie_is_secure_behind_https(items: tuple[TestClient, list[ReviewItem]]) -> None:
    client, _ = items
    behind_proxy = client.post(
        "/review/login",
        data={"token": "tok-ana"},
        headers={"X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    assert "Secure" in behind_proxy.headers["set-cookie"]
    direct = client.post(
        "https://testserver/review/login", data={"token": "tok-ana"}, follow_redirects=False
    )
    assert "Secure" in direct.headers["set-cookie"]


def test_wrong_tokens_are_throttled_per_address(
    items: tuple[TestClient, list[ReviewItem]],
) -> None:
    client, _ = items
    for attempt in range(10):
        answer = client.post("/review/login", data={"token": f"guess-{attempt}"})
        assert answer.status_code == 401, attempt
    eleventh = client.post("/review/login", data={"token": "guess-10"})
    assert eleventh.status_code == 429 and 0 < int(eleventh.headers["Retry-After"]) <= 60
    # Refused even with the right token until the minute is over, on the API as well.
    assert client.post("/review/login", data={"token": "tok-ana"}).status_code == 429
    refused = client.get("/api/queues", headers=ANA)
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    client.app.state.throttle.clear()  # type: ignore[attr-defined]
    # Wrong bearer tokens count too; no token at all (a browser before signing in) does not.
    for _ in range(20):
        assert client.get("/review").status_code == 401
    for _ in range(10):
        assert client.get("/api/queues", headers={"Authorization": "Bearer no"}).status_code == 401
    assert client.get("/api/queues", headers=ANA).status_code == 429


def test_field_scores_and_notes_are_capped(items: tuple[TestClient, list[ReviewItem]]) -> None:
    client, _ = items
    [claimed] = client.post("/api/claim", json={"n": 1}, headers=ANA).json()
    url = f"/api/items/{claimed['id']}/label"
    too_big: list[dict[str, object]] = [
        {"field_scores": {f"f{i}": 1.0 for i in range(33)}},
        {"field_scores": {"k" * 65: 1.0}},
        {"field_scores": {"": 1.0}},
        {"field_scores": {"why": "x" * 257}},
        {"note": "x" * 4001},
    ]
    for extra in too_big:
        answer = client.post(url, json={"verdict": "fail", **extra}, headers=ANA)
        assert answer.status_code == 422, list(extra)
    not_finite = json.dumps({"verdict": "fail", "field_scores": {"score": float("nan")}})
    answer = client.post(
        url, content=not_finite, headers={**ANA, "Content-Type": "application/json"}
    )
    assert answer.status_code == 422
    assert client.post("/api/claim", json={"evaluator": "e" * 129}, headers=ANA).status_code == 422
    fine = {f"f{i}": "y" * 256 for i in range(31)} | {"k" * 64: 0.5}
    answer = client.post(url, json={"verdict": "fail", "field_scores": fine}, headers=ANA)
    assert answer.status_code == 200 and answer.json()["field_scores"] == fine


def test_request_bodies_are_capped(items: tuple[TestClient, list[ReviewItem]]) -> None:
    client, _ = items
    megabyte = b'{"n": 1, "evaluator": "' + b"x" * 1024 * 1024 + b'"}'
    json_type = {"Content-Type": "application/json"}
    answer = client.post("/api/claim", content=megabyte, headers={**ANA, **json_type})
    limit = Settings().review_max_body_bytes
    assert answer.status_code == 413 and str(limit) in answer.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes received are counted
        yield megabyte

    streamed = client.post("/api/claim", content=chunks(), headers={**ANA, **json_type})
    assert streamed.status_code == 413
    login = client.post("/review/login", data={"token": "t" * 100_000})
    assert login.status_code == 413
    assert client.post("/api/claim", json={"n": 1}, headers=ANA).status_code == 200


# Open without a token, by decision (README, "Human review"): the probes, which Kubernetes sends
# without one, and the sign-in form, which is where a token is given.
OPEN_ROUTES = {"/healthz", "/readyz", "/review/login"}


def test_every_route_needs_a_token_but_the_probes_and_the_sign_in(
    items: tuple[TestClient, list[ReviewItem]],
) -> None:
    """Enumerated from the app's routes, so a route added without the token check fails here."""
    client, seeded = items
    paths: set[str] = set()
    for route in client.app.routes:  # type: ignore[attr-defined]
        path_template: str = route.path
        path = path_template.replace("{item_id}", seeded[0].id).replace("{action}", "release")
        assert "{" not in path, f"{path_template}: give its parameter a value in this test"
        paths.add(path_template)
        for method in sorted(route.methods):
            client.app.state.throttle.clear()  # type: ignore[attr-defined]
            answer = client.request(method, path, follow_redirects=False)
            if path_template in OPEN_ROUTES:
                assert answer.status_code != 401, (method, path_template)
            else:
                assert answer.status_code == 401, (method, path_template, answer.status_code)
                assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert {"/docs", "/redoc", "/openapi.json", "/metrics", "/api/claim"} <= paths
    assert paths >= OPEN_ROUTES


def test_the_documentation_opens_with_a_token_or_the_pages_cookie(
    items: tuple[TestClient, list[ReviewItem]],
) -> None:
    client, _ = items
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path, headers=ANA).status_code == 200, path
    spec = client.get("/openapi.json", headers=ANA).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    client.post("/review/login", data={"token": "tok-ana"}, follow_redirects=False)
    docs = client.get("/docs")  # Swagger UI fetches /openapi.json with the same cookie
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assert client.get("/openapi.json").json()["info"]["title"] == "Evalfleet review"


def test_metrics_are_served_without_a_token_on_the_metrics_port_only(
    sqlite_url: str, redis_client: redis.Redis
) -> None:
    from helpers import http_get

    from evaluator.ops.embedded import free_port

    port = free_port()
    store = SQLStore(sqlite_url)
    settings = Settings(reviewer_tokens=TOKENS, metrics_port=port)
    app = create_app(ReviewQueue(redis_client, store, lease_s=60), settings)
    try:
        with TestClient(app) as client:
            assert client.get("/metrics").status_code == 401
            status, body = http_get(port, "/metrics")
            assert status == 200 and "evalfleet_dependency_up" in body
            assert http_get(port, "/healthz") == (200, "ok\n")
        assert http_get(port, "/metrics", timeout=1)[0] == 0  # stopped with the app
    finally:
        store.close()


def test_the_limits_come_from_the_settings(sqlite_url: str, redis_client: redis.Redis) -> None:
    store = SQLStore(sqlite_url)
    seed(store, redis_client, [review_item(1)])
    settings = Settings(
        reviewer_tokens=TOKENS,
        review_max_body_bytes=2048,
        review_session_s=120,
        review_max_failures=2,
        review_failure_window_s=30,
    )
    app = create_app(ReviewQueue(redis_client, store, lease_s=60), settings)
    try:
        with TestClient(app) as client:
            over = {"n": 1, "evaluator": "x" * 2048}
            assert client.post("/api/claim", json=over, headers=ANA).status_code == 413
            assert client.post("/api/claim", json={"n": 1}, headers=ANA).status_code == 200
            signed_in = client.post("/review/login", data={"token": "tok-ana"})
            assert "Max-Age=120" in signed_in.history[0].headers["set-cookie"]
            client.cookies.clear()
            for _ in range(2):
                assert client.post("/review/login", data={"token": "nope"}).status_code == 401
            refused = client.post("/review/login", data={"token": "nope"})
            assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 30
    finally:
        store.close()


def test_item_ids_in_paths_are_capped(items: tuple[TestClient, list[ReviewItem]]) -> None:
    client, _ = items
    assert client.get(f"/api/items/{'a' * 128}", headers=ANA).status_code == 404
    assert client.get(f"/api/items/{'a' * 129}", headers=ANA).status_code == 422
