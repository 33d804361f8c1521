"""A real HTTP server for the parts of Langfuse's public API Evalfleet uses, for sink tests.

``POST /api/public/scores`` takes the JSON array the langfuse SDK sends (Basic auth with the
key pair), stores scores by id as Langfuse does (a second score with the same id replaces the
first) and answers 202, or 207 with counts when a score's name is in ``reject_names``.
``GET /api/public/v2/observations`` serves ``observations`` through the structured ``filter``
parameter and an opaque cursor. Failures can be injected: ``fail_next`` answers that many
requests with 500; ``stop()`` / ``start()`` take the server down and bring it back on the same
port. Every request is recorded.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from helpers import RestartableServer

PUBLIC_KEY, SECRET_KEY = "pk-lf-test", "sk-lf-test"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _matches(observation: dict[str, Any], condition: dict[str, Any]) -> bool:
    column, operator, value = condition["column"], condition["operator"], condition["value"]
    actual = observation.get(column)
    kind = condition["type"]
    if kind == "boolean" and operator == "=":
        return bool(actual) == value
    if kind == "datetime" and operator in (">=", "<"):
        moment, bound = _time(actual), _time(value)
        return moment >= bound if operator == ">=" else moment < bound
    if kind == "string" and operator == "=":
        return bool(actual == value)
    if kind == "stringOptions" and operator == "any of":
        return actual in value
    if kind == "arrayOptions" and operator == "all of":
        return set(value) <= set(actual or [])
    raise ValueError(f"filter not supported by the fake: {condition}")


@dataclass
class FakeLangfuse(RestartableServer):
    fail_next: int = 0
    reject_names: set[str] = field(default_factory=set)
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "LANGFUSE_PUBLIC_KEY": PUBLIC_KEY,
            "LANGFUSE_SECRET_KEY": SECRET_KEY,
            "LANGFUSE_HOST": self.url,
        }

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                fake.handle(self, "POST")

            def do_GET(self) -> None:
                fake.handle(self, "GET")

        return Handler

    def score_posts(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST"]

    def handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        request = Request(
            method,
            url.path,
            parse_qs(url.query),
            {k.lower(): v for k, v in handler.headers.items()},
            json.loads(raw) if raw else None,
        )
        with self.lock:
            self.requests.append(request)
            fail = self.fail_next > 0
            self.fail_next -= 1 if fail else 0
        expected = "Basic " + base64.b64encode(f"{PUBLIC_KEY}:{SECRET_KEY}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return self.answer(handler, 401, {"message": "Invalid credentials"})
        if fail:
            return self.answer(handler, 500, {"message": "injected failure"})
        if method == "POST" and url.path == "/api/public/scores":
            return self.answer(handler, *self.take_scores(request.body))
        if method == "GET" and url.path == "/api/public/v2/observations":
            return self.answer(handler, *self.list_observations(request.query))
        return self.answer(handler, 404, {"message": "not found"})

    def take_scores(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, list):
            return 400, {"message": "expected an array of scores"}
        errors = []
        with self.lock:
            for score in body:
                if score.get("name") in self.reject_names:
                    errors.append({"message": f"score {score['name']} does not match its config"})
                    continue
                self.scores[score["id"]] = score
        if errors:
            counts = {"accepted": len(body) - len(errors), "rejected": len(errors)}
            return 207, {**counts, "errors": errors}
        return 202, {"message": "Accepted"}

    def list_observations(self, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        conditions = json.loads(query.get("filter", ["[]"])[0])
        try:
            rows = [o for o in self.observations if all(_matches(o, c) for c in conditions)]
        except ValueError as exc:
            return 400, {"message": str(exc)}
        rows.sort(key=lambda o: (o["startTime"], o["id"]))
        offset = int(base64.b64decode(query["cursor"][0])) if "cursor" in query else 0
        limit = int(query.get("limit", ["50"])[0])
        page = rows[offset : offset + limit]
        meta: dict[str, Any] = {}
        if offset + limit < len(rows):
            meta["cursor"] = base64.b64encode(str(offset + limit).encode()).decode()
        return 200, {"data": page, "meta": meta}

    @staticmethod
    def answer(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
