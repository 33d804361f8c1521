"""The reviewers' HTTP API (JSON, OpenAPI at /docs) and a minimal server-rendered web page.

Every endpoint needs a reviewer token (``EVALFLEET_REVIEWER_TOKENS``): ``Authorization: Bearer``
(scheme in any case) for the API, or the session cookie the login form sets for the page. The
cookie is not the token: it is ``<expiry>.<HMAC-SHA256(key, expiry.token)>`` with the key derived
from the configured tokens, so it maps back to its token without a session store, every replica
with the same tokens accepts it, it expires after ``EVALFLEET_REVIEW_SESSION_S`` (12 h)
server-side too, and
changing the token list signs everyone out. It is HttpOnly, SameSite=Strict (other sites cannot
post forms with it) and Secure when the request came over https (or ``X-Forwarded-Proto: https``).
Missing or wrong token: 401 on every route, the OpenAPI document (/openapi.json, /docs, /redoc)
and /metrics included, except the health probes (/healthz, /readyz: Kubernetes probes carry no
token) and the sign-in form; Prometheus scrapes ``EVALFLEET_METRICS_PORT`` instead, a port of
its own that is not exposed with the API. Items of a tenant the token does not cover: 403.
After ``EVALFLEET_REVIEW_MAX_FAILURES`` wrong tokens (bearer, cookie or login form) from one
client address within ``EVALFLEET_REVIEW_FAILURE_WINDOW_S``, that address gets 429 with
``Retry-After`` until the window has passed (in-process, per replica). Every request body is
capped at ``EVALFLEET_REVIEW_MAX_BODY_BYTES`` (413, checked on ``Content-Length`` and on the
bytes streamed); label fields are capped too (422). Every status code a route answers is in
its OpenAPI ``responses`` (tests/test_review_api_schema.py checks with schemathesis). Trace
text is escaped everywhere (Jinja2 autoescape; no template marks anything safe): a tool result
holding ``<script>`` is shown as text.

Items are turns, agent trajectories or whole sessions (``ReviewItem.level``). ``GET
/api/items/{id}`` answers the item with its layout (``evaluator.review.view``): ``conversation``
(every message of ``item.trace.messages`` in order: its turn, whether it is highlighted or
collapsed), ``trajectory`` (the steps as a tree: depth, highlighted, on the highlighted step's
path) and ``highlighted_turns``. ``GET /api/items?level=session`` lists items by level (and
evaluator, status), ``GET /api/queues?level=`` counts them, ``POST /api/claim`` takes a
``level``. The page shows the same: the conversation role by role with tool calls and results,
the long middle folded behind a control, and the trajectory as an indented tree with the
failing step highlighted.

While Redis or the database is down, requests that need it get 503 with ``Retry-After`` (not a
500 and a traceback each), ``/readyz`` answers 503 naming what is down, and the server keeps
running; it serves again as soon as the dependency is back (evaluator.ops.health).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import fastapi
import redis
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evaluator.models import Level, ReviewItem, ReviewLabel, ReviewStatus, Verdict
from evaluator.ops import metrics
from evaluator.ops.health import (
    DATABASE,
    REDIS,
    Backoff,
    Prober,
    Readiness,
    database_check,
    outage_of,
    probing,
    serve,
    until_available,
)
from evaluator.review.queue import (
    AlreadyLabelled,
    Claimed,
    ItemSummary,
    LeaseLost,
    NotFound,
    QueueFilter,
    ReviewError,
    ReviewQueue,
)
from evaluator.review.view import (
    MessageView,
    StepView,
    display_arguments,
    display_value,
    layout,
    message_blocks,
)
from evaluator.settings import ReviewerAccess, Settings

COOKIE = "evalfleet_review"
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)


# Item ids are 32 hex digits (``models.stable_id``); the cap keeps any other path short.
ItemId = Annotated[str, fastapi.Path(max_length=128)]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
FieldScore = (
    Annotated[float, Field(allow_inf_nan=False)] | Annotated[str, Field(max_length=256)] | bool
)


class ClaimRequest(BaseModel):
    n: int = Field(default=1, ge=1, le=50)
    evaluator: str | None = Field(default=None, max_length=128)
    level: Level | None = Field(default=None, description="Only items of this level.")


class LabelRequest(BaseModel):
    verdict: Verdict
    field_scores: dict[FieldName, FieldScore] = Field(
        default_factory=dict,
        max_length=32,
        description="At most 32 fields; names of 1-64 characters; values finite numbers, "
        "booleans or strings of at most 256 characters.",
    )
    note: str = Field(default="", max_length=4000)


class ItemView(BaseModel):
    item: ReviewItem
    scores: list[dict[str, Any]]
    holder: str | None
    label: ReviewLabel | None
    conversation: list[MessageView] = Field(
        description="Every message of item.trace.messages in order (a session: the whole "
        "conversation), with its turn and whether it is highlighted or collapsed."
    )
    trajectory: list[StepView] = Field(
        description="Every step of item.trace.steps as a tree (depth-first by parent_id), the "
        "steps the failing scores name highlighted."
    )
    highlighted_turns: list[int] = Field(
        description="A session's turns (1-based) the failing scores are about."
    )
    unmatched_steps: list[str] = Field(
        description="Step ids the failing scores name that the trace does not hold (cut from "
        "a long session's middle)."
    )


class QueueCount(BaseModel):
    evaluator: str
    tenant: str | None
    level: Level = Level.TURN
    status: str
    count: int


def access_for(settings: Settings, token: str) -> ReviewerAccess | None:
    for known, access in settings.reviewer_tokens.items():
        if token and hmac.compare_digest(token.encode(), known.encode()):
            return access
    return None


def bearer_token(header: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header ("" if it is not one); the
    scheme is case-insensitive (RFC 7235)."""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _session_key(settings: Settings) -> bytes:
    """The cookies' HMAC key: a hash of every configured token (so replicas agree, and changing
    the tokens invalidates every session)."""
    digest = hashlib.sha256(b"evalfleet-review-session\0")
    for token in sorted(settings.reviewer_tokens):
        digest.update(hashlib.sha256(token.encode()).digest())
    return digest.digest()


def _signature(key: bytes, expires: int, token: str) -> str:
    return hmac.new(key, f"{expires}.{token}".encode(), hashlib.sha256).hexdigest()


def session_cookie(settings: Settings, token: str, now: float | None = None) -> str:
    """The page's cookie for ``token``: its expiry and an HMAC binding the expiry to the token."""
    expires = int(now if now is not None else time.time()) + settings.review_session_s
    return f"{expires}.{_signature(_session_key(settings), expires, token)}"


def session_access(settings: Settings, cookie: str) -> ReviewerAccess | None:
    """The access of an unexpired cookie from ``session_cookie``, else None (every token's
    signature is computed and compared in constant time)."""
    expires, _, signature = cookie.partition(".")
    if not (expires.isdigit() and len(expires) <= 12) or int(expires) < time.time():
        return None
    key, found = _session_key(settings), None
    for known, access in settings.reviewer_tokens.items():
        if hmac.compare_digest(signature.encode(), _signature(key, int(expires), known).encode()):
            found = access
    return found


class Throttle:
    """Wrong tokens per client address: after ``limit`` within ``window_s`` the address is
    refused (429) until the oldest of them is ``window_s`` old. In-process and bounded: at most
    ``max_clients`` addresses are tracked (the stalest are forgotten first)."""

    def __init__(self, limit: int, window_s: float, max_clients: int = 10_000) -> None:
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again; 0 when it may now."""
        with self._lock:
            failures = self._failures.get(client)
            if failures is None or len(failures) < self.limit:
                return 0
            wait = self.window_s - (time.monotonic() - failures[0])
            return math.ceil(wait) if wait > 0 else 0

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            failures = self._failures.pop(client, None) or deque(maxlen=self.limit)
            failures.append(now)
            self._failures[client] = failures  # re-inserted: the dict is stalest-first
            if len(self._failures) > self.max_clients:
                for stale in [k for k, v in self._failures.items() if now - v[-1] > self.window_s]:
                    del self._failures[stale]
                while len(self._failures) > self.max_clients:
                    del self._failures[next(iter(self._failures))]

    def clear(self) -> None:
        with self._lock:
            self._failures.clear()


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def throttled(request: Request) -> None:
    """429 with Retry-After while the caller's address has too many recent wrong tokens."""
    wait = request.app.state.throttle.retry_after(client_address(request))
    if wait:
        raise HTTPException(429, "too many wrong tokens; retry later", {"Retry-After": str(wait)})


# Declares the bearer scheme in the OpenAPI document (Swagger's "Authorize"); ``reviewer``
# reads the header itself, as it also accepts the page's cookie.
_BEARER = HTTPBearer(auto_error=False, description="A token of EVALFLEET_REVIEWER_TOKENS.")


def reviewer(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
) -> ReviewerAccess:
    """The caller's access, from the bearer token or the page's cookie; 401 without one."""
    throttled(request)
    settings: Settings = request.app.state.settings
    token = bearer_token(request.headers.get("authorization", ""))
    cookie = request.cookies.get(COOKIE, "")
    access = access_for(settings, token) if token else session_access(settings, cookie)
    if access is None:
        if token or cookie:  # a wrong one, not just none (a browser before signing in)
            request.app.state.throttle.failed(client_address(request))
        raise HTTPException(
            401, "a valid reviewer token is required", {"WWW-Authenticate": "Bearer"}
        )
    return access


Reviewer = Annotated[ReviewerAccess, Depends(reviewer)]


def _https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, decided on
    ``Content-Length`` before reading, else on the bytes received (at most one chunk past the
    limit is read; the body, at most ``limit`` bytes, is then replayed to the app)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").decode("latin-1").strip()
        if declared.isdigit() and int(declared) > self.limit:
            await self.too_large(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client left: let the app see it
            size += len(message.get("body", b""))
            if size > self.limit:
                await self.too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = JSONResponse(
            {"detail": f"request body over {self.limit} bytes"},
            status_code=413,
            headers={"Connection": "close"},
        )
        await answer(scope, receive, send)


class Problem(BaseModel):
    """The body of an error answer."""

    detail: str


_ERROR_DESCRIPTIONS = {
    400: "The body cannot be parsed (not UTF-8 JSON), or the action cannot be done.",
    401: "No token, or a wrong one (bearer or the page's cookie).",
    403: "The item belongs to a tenant the token does not cover.",
    404: "No such review item.",
    409: "The caller does not hold the item's lease, or it is labelled already.",
    413: "The request body is over EVALFLEET_REVIEW_MAX_BODY_BYTES.",
    429: "Too many wrong tokens from this address; see Retry-After.",
    503: "Redis or the database is unavailable; see Retry-After.",
}
# Every route can answer these: the token check, the body limit (a middleware, before any
# route) and a dependency outage.
_ALWAYS = (401, 413, 429, 503)
_ITEM = (403, 404, 409)  # routes on one item: another tenant's, an unknown one, not held


def _declared_query_only(request: Request) -> None:
    """An API request with a query parameter its route does not declare is refused (422), as
    its OpenAPI document says (FastAPI would ignore it: a typo such as ``?levle=session`` would
    silently list every level). The HTML pages keep ignoring unknown parameters."""
    route = request.scope.get("route")
    if not request.query_params or not request.url.path.startswith("/api/"):
        return  # most requests: nothing to check
    if not isinstance(route, APIRoute):
        return
    declared: set[str] = set()
    pending = [route.dependant]
    while pending:  # the route's own parameters and its dependencies'
        dependant = pending.pop()
        declared.update(param.alias for param in dependant.query_params)
        pending.extend(dependant.dependencies)
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        raise RequestValidationError(
            [
                {"type": "extra_forbidden", "loc": ["query", name], "msg": "unknown parameter"}
                for name in unknown[:10]
            ]
        )


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (422 FastAPI adds by itself)."""
    return {
        status: {"model": Problem, "description": _ERROR_DESCRIPTIONS[status]}
        for status in sorted(statuses)
    }


def form_level(text: str) -> Level | None:
    """The level a page form asks for ("" for any); 400 for one that is not a level."""
    if text and text not in {known.value for known in Level}:
        raise HTTPException(400, f"unknown level {text[:16]!r}")
    return Level(text) if text else None


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
        # /metrics without a token, for Prometheus, on a port of its own (evaluator.ops.health).
        metrics_server = None
        if settings.metrics_port is not None:
            metrics_server = serve(settings.metrics_port, readiness)
        try:
            with probing(prober):
                yield
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()

    # The documentation routes are added below, behind the token like everything else.
    app = FastAPI(
        title="Evalfleet review",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        dependencies=[Depends(_declared_query_only)],
    )
    app.state.settings = settings
    app.state.readiness = readiness
    app.state.throttle = Throttle(settings.review_max_failures, settings.review_failure_window_s)
    app.add_middleware(BodyLimit, limit=settings.review_max_body_bytes)

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

    async def invalid(_: Request, exc: Exception) -> Response:
        """422 as FastAPI answers it, without echoing the input (it may be large, or a NaN
        that JSON cannot encode: FastAPI's own handler would fail with a 500 then)."""
        assert isinstance(exc, RequestValidationError)
        errors = [{k: v for k, v in e.items() if k != "input"} for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)

    def scope(
        access: ReviewerAccess, evaluator: str | None = None, level: Level | None = None
    ) -> QueueFilter:
        return QueueFilter(access.tenant_scope, evaluator, level)

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
        shown = layout(item)
        return ItemView(
            item=item,
            scores=scores,
            holder=queue.holder(item.id),
            label=queue.store.label(item.id),
            conversation=shown.conversation,
            trajectory=shown.trajectory,
            highlighted_turns=shown.highlighted_turns,
            unmatched_steps=shown.unmatched_steps,
        )

    def counts(access: ReviewerAccess, level: Level | None = None) -> list[QueueCount]:
        allowed = scope(access, level=level)
        return [
            QueueCount(evaluator=e, tenant=t, level=lv, status=s, count=c)
            for e, t, lv, s, c in queue.counts(allowed)
            if allowed.allows(t, e, lv)
        ]

    def record_label(label: ReviewLabel) -> ReviewLabel:
        metrics.REVIEW_LABELLED.labels(label.evaluator, label.verdict.value).inc()
        return label

    # -- JSON API ------------------------------------------------------------------------------

    @app.get("/api/queues", response_model=list[QueueCount], responses=errors(*_ALWAYS))
    def api_queues(
        access: Reviewer,
        level: Annotated[Level | None, Query(description="Only items of this level.")] = None,
    ) -> list[QueueCount]:
        return counts(access, level)

    @app.get("/api/items", response_model=list[ItemSummary], responses=errors(*_ALWAYS))
    def api_items(
        access: Reviewer,
        level: Annotated[Level | None, Query(description="turn, trajectory or session.")] = None,
        evaluator: Annotated[str | None, Query(max_length=128)] = None,
        status: Annotated[ReviewStatus | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[ItemSummary]:
        """Review items in the caller's tenants (without their traces), most urgent first."""
        return queue.listing(scope(access, evaluator, level), status, limit)

    @app.post("/api/claim", response_model=list[ReviewItem], responses=errors(400, *_ALWAYS))
    def api_claim(body: ClaimRequest, access: Reviewer) -> list[ReviewItem]:
        claimed: list[Claimed] = act(
            queue.claim, access.reviewer, body.n, scope(access, body.evaluator, body.level)
        )
        return [c.item for c in claimed]

    @app.get("/api/items/{item_id}", response_model=ItemView, responses=errors(*_ALWAYS, 403, 404))
    def api_item(item_id: ItemId, access: Reviewer) -> ItemView:
        return item_view(visible_item(item_id, access))

    @app.post(
        "/api/items/{item_id}/label",
        response_model=ReviewLabel,
        responses=errors(400, *_ALWAYS, *_ITEM),
    )
    def api_label(item_id: ItemId, body: LabelRequest, access: Reviewer) -> ReviewLabel:
        visible_item(item_id, access)
        label = act(
            queue.label, item_id, access.reviewer, body.verdict, body.field_scores, body.note
        )
        return record_label(label)

    @app.post("/api/items/{item_id}/release", status_code=204, responses=errors(*_ALWAYS, *_ITEM))
    def api_release(item_id: ItemId, access: Reviewer) -> None:
        visible_item(item_id, access)
        act(queue.release, item_id, access.reviewer)

    @app.post("/api/items/{item_id}/skip", status_code=204, responses=errors(*_ALWAYS, *_ITEM))
    def api_skip(item_id: ItemId, access: Reviewer) -> None:
        visible_item(item_id, access)
        act(queue.skip, item_id, access.reviewer)

    @app.post("/api/items/{item_id}/renew", status_code=204, responses=errors(*_ALWAYS, *_ITEM))
    def api_renew(item_id: ItemId, access: Reviewer) -> None:
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
    def login(request: Request, token: Annotated[str, Form(max_length=4096)]) -> Response:
        wait = app.state.throttle.retry_after(client_address(request))
        if wait:
            refused = page("login.html", 429, error="Too many wrong tokens; try again later.")
            refused.headers["Retry-After"] = str(wait)
            return refused
        if access_for(settings, token) is None:
            app.state.throttle.failed(client_address(request))
            return page("login.html", 401, error="Unknown token.")
        response = see_other("/review")
        response.set_cookie(
            COOKIE,
            session_cookie(settings, token),
            max_age=settings.review_session_s,
            secure=_https(request),
            httponly=True,
            samesite="strict",
        )
        return response

    @app.get("/review", response_class=HTMLResponse, include_in_schema=False)
    def queue_page(access: Reviewer, empty: bool = False) -> HTMLResponse:
        return page(
            "queue.html", access=access, counts=counts(access), empty=empty, levels=list(Level)
        )

    @app.post("/review/next", include_in_schema=False)
    def next_item(
        access: Reviewer,
        evaluator: Annotated[str, Form(max_length=128)] = "",
        level: Annotated[str, Form(max_length=16)] = "",
    ) -> Response:
        wanted = form_level(level)
        claimed = act(queue.claim, access.reviewer, 1, scope(access, evaluator or None, wanted))
        if not claimed:
            return see_other("/review?empty=1")
        # The level asked for rides along, so "Label and next" keeps to it.
        keep = f"?level={wanted.value}" if wanted else ""
        return see_other(f"/review/items/{claimed[0].item.id}{keep}")

    @app.get("/review/items/{item_id}", response_class=HTMLResponse, include_in_schema=False)
    def item_page(item_id: ItemId, access: Reviewer, level: Level | None = None) -> HTMLResponse:
        view = item_view(visible_item(item_id, access))
        return page(
            "item.html",
            access=access,
            view=view,
            next_level=level.value if level else "",
            blocks=message_blocks(view.conversation),
            show=display_value,
            show_arguments=display_arguments,
        )

    @app.post("/review/items/{item_id}/label", include_in_schema=False)
    def label_form(
        item_id: ItemId,
        access: Reviewer,
        verdict: Annotated[Verdict, Form()],
        note: Annotated[str, Form(max_length=4000)] = "",
        level: Annotated[str, Form(max_length=16)] = "",
    ) -> Response:
        visible_item(item_id, access)
        form_level(level)  # refused before the label is stored, not after
        record_label(act(queue.label, item_id, access.reviewer, verdict, {}, note))
        return next_item(access, "", level)

    @app.post("/review/items/{item_id}/{action}", include_in_schema=False)
    def release_form(item_id: ItemId, action: str, access: Reviewer) -> Response:
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
    def prometheus_metrics(_: Reviewer) -> Response:
        """With a token here; Prometheus scrapes the metrics port (EVALFLEET_METRICS_PORT)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # -- documentation, behind the token (the page's cookie works: Swagger UI is same-origin) -

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document(_: Reviewer) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(_: Reviewer) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    @app.get("/redoc", include_in_schema=False)
    def redoc(_: Reviewer) -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    return app
