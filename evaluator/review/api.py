"""The reviewers' HTTP API (JSON, OpenAPI at /docs) and a minimal server-rendered web page.

Every endpoint needs a reviewer token (``EVALFLEET_REVIEWER_TOKENS``): ``Authorization: Bearer``
for the API, an HttpOnly, SameSite=Strict cookie set by the login form for the page (SameSite
keeps other sites from posting forms with it). Missing or wrong token: 401. Items of a tenant
the token does not cover: 403. Trace text is escaped everywhere (Jinja2 autoescape).

While Redis or the database is down, requests that need it get 503 with ``Retry-After`` (not a
500 and a traceback each), ``/readyz`` answers 503 naming what is down, and the server keeps
running; it serves again as soon as the dependency is back (evaluator.health).
"""

from __future__ import annotations

import contextlib
import hmac
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy.exc import InterfaceError, OperationalError

from evaluator import metrics
from evaluator.health import (
    DATABASE,
    REDIS,
    Backoff,
    Prober,
    Readiness,
    database_check,
    outage_of,
    probing,
    until_available,
)
from evaluator.models import ReviewItem, ReviewLabel, Verdict
from evaluator.review.queue import (
    AlreadyLabelled,
    Claimed,
    LeaseLost,
    NotFound,
    QueueFilter,
    ReviewError,
    ReviewQueue,
)
from evaluator.settings import ReviewerAccess, Settings

COOKIE = "evalfleet_review"
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)


class ClaimRequest(BaseModel):
    n: int = Field(default=1, ge=1, le=50)
    evaluator: str | None = None


class LabelRequest(BaseModel):
    verdict: Verdict
    field_scores: dict[str, float | str | bool] = Field(default_factory=dict)
    note: str = Field(default="", max_length=4000)


class ItemView(BaseModel):
    item: ReviewItem
    scores: list[dict[str, Any]]
    holder: str | None
    label: ReviewLabel | None


class QueueCount(BaseModel):
    evaluator: str
    tenant: str | None
    status: str
    count: int


def access_for(settings: Settings, token: str) -> ReviewerAccess | None:
    for known, access in settings.reviewer_tokens.items():
        if token and hmac.compare_digest(token.encode(), known.encode()):
            return access
    return None


def reviewer(request: Request) -> ReviewerAccess:
    """The caller's access, from the bearer token or the page's cookie; 401 without one."""
    header = request.headers.get("authorization", "")
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    access = access_for(request.app.state.settings, token or request.cookies.get(COOKIE, ""))
    if access is None:
        raise HTTPException(
            401, "a valid reviewer token is required", {"WWW-Authenticate": "Bearer"}
        )
    return access


Reviewer = Annotated[ReviewerAccess, Depends(reviewer)]


def _status(exc: ReviewError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, LeaseLost | AlreadyLabelled):
        return 409
    return 400


def review_app(settings: Settings) -> FastAPI:
    """The app for ``evalfleet review-api``, connected as the settings say."""
    from evaluator.sinks.sql import SQLStore
    from evaluator.streams import connect

    readiness = Readiness("review-api")
    # Started during a database outage: wait for it rather than exit.
    store = until_available(
        lambda: SQLStore(settings.sqlalchemy_url),
        threading.Event(),
        readiness,
        Backoff(max_s=settings.outage_backoff_max_s),
    )
    assert store is not None  # the event is never set
    return create_app(
        ReviewQueue(connect(settings.redis_url), store, settings.review_lease_s),
        settings,
        readiness,
    )


def create_app(
    queue: ReviewQueue, settings: Settings, readiness: Readiness | None = None
) -> FastAPI:
    readiness = readiness or Readiness("review-api")
    for dependency in (REDIS, DATABASE):
        readiness.expect(dependency)  # unready until the first check (at start-up)
    prober = Prober(
        readiness,
        {REDIS: queue.client.ping, DATABASE: database_check(queue.store.engine)},
        settings.health_probe_interval_s,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        with probing(prober):
            yield

    app = FastAPI(title="Evalfleet review", version="1", docs_url="/docs", lifespan=lifespan)
    app.state.settings = settings
    app.state.readiness = readiness

    async def unavailable(_: Request, exc: Exception) -> Response:
        """Redis or the database is away: 503, retry shortly (logged once per outage)."""
        dependency = outage_of(exc) or REDIS
        readiness.down(dependency, exc)
        return JSONResponse(
            {"detail": f"{dependency} unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    for error in (redis.ConnectionError, redis.TimeoutError, OperationalError, InterfaceError):
        app.add_exception_handler(error, unavailable)

    def scope(access: ReviewerAccess, evaluator: str | None = None) -> QueueFilter:
        return QueueFilter(access.tenant_scope, evaluator)

    def visible_item(item_id: str, access: ReviewerAccess) -> ReviewItem:
        try:
            item = queue.get(item_id)
        except ReviewError as exc:
            raise HTTPException(_status(exc), str(exc)) from None
        if not scope(access).allows(item.tenant, item.evaluator):
            raise HTTPException(403, "this item belongs to a tenant your token does not cover")
        return item

    def act(action: Any, *args: Any) -> Any:
        try:
            return action(*args)
        except ReviewError as exc:
            raise HTTPException(_status(exc), str(exc)) from None

    def item_view(item: ReviewItem) -> ItemView:
        scores = [
            {k: v for k, v in record.model_dump().items() if k not in ("details",)}
            for record in queue.store.scores_by_id(item.score_ids)
        ]
        return ItemView(
            item=item, scores=scores, holder=queue.holder(item.id), label=queue.store.label(item.id)
        )

    def counts(access: ReviewerAccess) -> list[QueueCount]:
        allowed = scope(access)
        return [
            QueueCount(evaluator=e, tenant=t, status=s, count=c)
            for e, t, s, c in queue.store.review_counts()
            if allowed.allows(t, e)
        ]

    def record_label(label: ReviewLabel) -> ReviewLabel:
        metrics.REVIEW_LABELLED.labels(label.evaluator, label.verdict.value).inc()
        return label

    # -- JSON API ------------------------------------------------------------------------------

    @app.get("/api/queues", response_model=list[QueueCount])
    def api_queues(access: Reviewer) -> list[QueueCount]:
        return counts(access)

    @app.post("/api/claim", response_model=list[ReviewItem])
    def api_claim(body: ClaimRequest, access: Reviewer) -> list[ReviewItem]:
        claimed: list[Claimed] = act(
            queue.claim, access.reviewer, body.n, scope(access, body.evaluator)
        )
        return [c.item for c in claimed]

    @app.get("/api/items/{item_id}", response_model=ItemView)
    def api_item(item_id: str, access: Reviewer) -> ItemView:
        return item_view(visible_item(item_id, access))

    @app.post("/api/items/{item_id}/label", response_model=ReviewLabel)
    def api_label(item_id: str, body: LabelRequest, access: Reviewer) -> ReviewLabel:
        visible_item(item_id, access)
        label = act(
            queue.label, item_id, access.reviewer, body.verdict, body.field_scores, body.note
        )
        return record_label(label)

    @app.post("/api/items/{item_id}/release", status_code=204)
    def api_release(item_id: str, access: Reviewer) -> None:
        visible_item(item_id, access)
        act(queue.release, item_id, access.reviewer)

    @app.post("/api/items/{item_id}/skip", status_code=204)
    def api_skip(item_id: str, access: Reviewer) -> None:
        visible_item(item_id, access)
        act(queue.skip, item_id, access.reviewer)

    @app.post("/api/items/{item_id}/renew", status_code=204)
    def api_renew(item_id: str, access: Reviewer) -> None:
        visible_item(item_id, access)
        act(queue.renew, item_id, access.reviewer)

    # -- web page ------------------------------------------------------------------------------

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(_templates.get_template(name).render(**context), status_code=status)

    def see_other(url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303)

    @app.get("/review/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form() -> HTMLResponse:
        return page("login.html")

    @app.post("/review/login", include_in_schema=False)
    def login(token: Annotated[str, Form()]) -> Response:
        if access_for(settings, token) is None:
            return page("login.html", 401, error="Unknown token.")
        response = see_other("/review")
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    def queue_page(access: Reviewer, empty: bool = False) -> HTMLResponse:
        return page("queue.html", access=access, counts=counts(access), empty=empty)

    @app.post("/review/next", include_in_schema=False)
    def next_item(access: Reviewer, evaluator: Annotated[str, Form()] = "") -> Response:
        claimed = act(queue.claim, access.reviewer, 1, scope(access, evaluator or None))
        return see_other(f"/review/items/{claimed[0].item.id}" if claimed else "/review?empty=1")

    @app.get("/review/items/{item_id}", response_class=HTMLResponse, include_in_schema=False)
    def item_page(item_id: str, access: Reviewer) -> HTMLResponse:
        view = item_view(visible_item(item_id, access))
        return page("item.html", access=access, view=view)

    @app.post("/review/items/{item_id}/label", include_in_schema=False)
    def label_form(
        item_id: str,
        access: Reviewer,
        verdict: Annotated[Verdict, Form()],
        note: Annotated[str, Form(max_length=4000)] = "",
    ) -> Response:
        visible_item(item_id, access)
        record_label(act(queue.label, item_id, access.reviewer, verdict, {}, note))
        return next_item(access)

    @app.post("/review/items/{item_id}/{action}", include_in_schema=False)
    def release_form(item_id: str, action: str, access: Reviewer) -> Response:
        visible_item(item_id, access)
        if action not in ("release", "skip"):
            raise HTTPException(404, f"unknown action {action!r}")
        act(queue.release if action == "release" else queue.skip, item_id, access.reviewer)
        return see_other("/review")

    # -- operations ----------------------------------------------------------------------------

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        """Liveness: the server runs (it waits dependency outages out; see /readyz)."""
        return Response("ok\n", media_type="text/plain")

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        """200 while Redis and the database answer, else 503 naming what is down (JSON)."""
        status, body = readiness.response()
        return Response(body, status_code=status, media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
