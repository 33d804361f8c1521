"""A real HTTP server for the parts of Langfuse's public API Evalfleet uses, for sink and backfill
tests. It enforces the real server's validation rules and models its score store, so a test that
passes here does not pass only because the peer is lenient.

Each rule names the file of langfuse/langfuse (or langfuse/langfuse-python) it comes from; paths
are of the langfuse repository unless they say otherwise.

Endpoints (Basic auth with the key pair, as the SDK sends it; anything else: 401):

- ``POST /api/public/ingestion`` (web/src/pages/api/public/ingestion.ts): ``{"batch": [events]}``,
  body limit 4.5 MB, answers 207 with one entry per event in ``successes`` or ``errors``
  (packages/shared/src/server/ingestion/processEventBatch.ts). ``score-create`` events are
  validated against ``ScoreBody`` (packages/shared/src/server/ingestion/types.ts); checks the real
  server only makes later in its worker (score configs, ANNOTATION without ``configId``:
  packages/shared/src/server/ingestion/validateAndInflateScore.ts) are accepted with 201 and then
  dropped, as the real one does: see ``dropped``.
- ``POST /api/public/scores``: with ``version="v4"`` the batch endpoint (a JSON array; 202, or 207
  with counts and messages, as langfuse-python's ``api/scores`` client describes it), body limit
  1 MB; with ``version="v3"`` the older endpoint that takes one object
  (web/src/pages/api/public/scores/index.ts, ``PostScoresBody`` in
  packages/shared/src/features/scores/interfaces/api/shared.ts) and answers 400 to an array.
- ``GET /api/public/v2/observations``: cursor-paged, structured ``filter``; with ``version="v3"``
  404, as a v3 server without ``LANGFUSE_MIGRATION_V4_ALLOW_PREVIEW_OPT_IN`` answers
  (web/src/pages/api/public/v2/observations/index.ts at v3.225.4).
- ``GET /api/public/traces`` (page-based) and ``GET /api/public/traces/{id}`` (with the trace's
  observations), built from the same ``observations`` (web/src/features/public-api/types/traces.ts).

A score is on exactly one subject: a trace (``traceId``, optionally with ``observationId``), a
session (``sessionId`` alone) or a dataset run (``datasetRunId`` alone); anything else is a 400
on both endpoints (applyScoreValidation in packages/shared/src/utils/scores.ts, applied to
ScoreBody and PostScoresBody), and a CORRECTION score on a session or dataset run is taken and
dropped later (validateAndInflateScore.ts). ``session_scores(id)`` reads a session's scores.

Scores are kept the way the real store keeps them: ClickHouse's ``scores`` table is a
ReplacingMergeTree ordered by (project, toDate(timestamp), name, id)
(packages/shared/clickhouse/migrations/unclustered/0003_scores.up.sql), and the ingestion worker
merges a score event into an existing row only when it finds one with that id and a timestamp
not earlier than the event's; timestamp, environment and trace id stay the first row's
(worker/src/services/IngestionService/index.ts: processScoreEventList, immutableEntityKeys). So a
score re-sent with a later timestamp on a later day is a second row (``duplicates()``).

Failures can be injected: ``fail_next`` answers that many requests with 500 (after
``fail_after`` requests); ``force_status`` answers everything with one status; ``missing_paths``
answer 404 (a wrong host path, an older server); ``reject_names`` makes the server refuse scores
of those names (207 errors) as if a rule refused them; ``fail_items`` answers the next that many
valid score events with a per-event 500 in the 207 and does not store them, as the real server
does for an event whose processing failed on its side (aggregateBatchResult in
processEventBatch.ts: any error that is not a validation, auth or not-found error; in a v2
server's synchronous path a database that blinked); ``secret_key`` is the key it accepts;
``stop()`` / ``start()`` take the server down and bring it back on the same port. Every request
is recorded.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from helpers import RestartableServer

PUBLIC_KEY, SECRET_KEY = "pk-lf-test", "sk-lf-test"

# Next.js's default API body limit ("1mb" = 1 MiB, raw-body / bytes): the scores route sets none
# (web/src/pages/api/public/scores/index.ts); the ingestion route raises it to "4.5mb"
# (web/src/pages/api/public/ingestion.ts). Over it Next.js answers 413 "Body exceeded … limit".
SCORES_BODY_LIMIT = 1024 * 1024
INGESTION_BODY_LIMIT = int(4.5 * 1024 * 1024)
# packages/shared/src/domain/scores.ts: TEXT_SCORE_MAX_LENGTH.
TEXT_SCORE_MAX_LENGTH = 500
# packages/shared/src/server/ingestion/types.ts at v3.100.0 (PublicEnvironmentName): at most 40
# characters of ``^(?!langfuse)[a-z0-9-_]+$``; langfuse-python enforces the same
# (langfuse/_client/propagation.py: _ENVIRONMENT_VALUE_PATTERN). Later servers rewrite such a
# value instead (strip the prefix, or "default"), which files the score elsewhere just the same:
# refusing it is the stricter of the two, and a sink must never send one.
ENVIRONMENT = re.compile(r"^(?!langfuse)[a-z0-9_-]+$")
ENVIRONMENT_MAX = 40
# packages/shared/src/domain/scores.ts: ScoreSourceArray (stored and accepted by ingestion) and
# PublicApiCreateScoreSourceDomain (what POST /api/public/scores accepts: EVAL is internal).
INGESTION_SOURCES = ("API", "EVAL", "ANNOTATION")
SCORES_API_SOURCES = ("API", "ANNOTATION")
# packages/shared/src/server/ingestion/types.ts: eventTypes.
EVENT_TYPES = (
    "trace-create",
    "score-create",
    "event-create",
    "span-create",
    "span-update",
    "generation-create",
    "generation-update",
    "agent-create",
    "tool-create",
    "chain-create",
    "retriever-create",
    "evaluator-create",
    "embedding-create",
    "guardrail-create",
    "sdk-log",
    "dataset-run-item-create",
    "observation-create",
    "observation-update",
)
# zod's z.iso.datetime({offset: true}) (types.ts: the event envelope's timestamp).
ISO_WITH_OFFSET = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$"
)
V2_OBSERVATIONS_MISSING = (
    "The observations v2 API is only available in a Langfuse v4 write mode. "
    "Learn more at: https://langfuse.com/docs/v4"
)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    raw: bytes = b""


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _is_number(value: Any) -> bool:
    # JSON true/false are not numbers for zod's z.number(); JSON has no NaN.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _optional_string(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        return f"{key}: expected a string"
    return None


def score_errors(body: Any, *, sources: tuple[str, ...], endpoint: str) -> list[str]:
    """Why the real server refuses this score body at the API (empty: accepted).

    ``endpoint`` is "ingestion" (the score-create event body, ScoreBody in
    packages/shared/src/server/ingestion/types.ts) or "scores" (PostScoresBody in
    packages/shared/src/features/scores/interfaces/api/shared.ts); they differ in the sources
    they allow, in the id rule and in refusing ANNOTATION without configId synchronously."""
    if not isinstance(body, dict):
        return ["expected an object"]
    errors: list[str] = []
    score_id = body.get("id")
    if score_id is not None:
        if not isinstance(score_id, str):
            errors.append("id: expected a string")
        elif endpoint == "ingestion" and not 1 <= len(score_id) <= 800:
            errors.append("id: 1 to 800 characters (idSchema, ingestion/types.ts)")
        elif endpoint == "ingestion" and "\r" in score_id:
            errors.append("ID cannot contain carriage return characters")
    # NonEmptyString (packages/shared/src/utils/zod.ts).
    name = body.get("name")
    if not isinstance(name, str) or not name:
        errors.append("name: a non-empty string is required")
    for key in ("traceId", "sessionId", "datasetRunId", "observationId", "comment", "configId"):
        error = _optional_string(body, key)
        if error:
            errors.append(error)
    # packages/shared/src/utils/scores.ts: applyScoreValidation.
    trace, session, run = (bool(body.get(k)) for k in ("traceId", "sessionId", "datasetRunId"))
    observation = bool(body.get("observationId"))
    if not (
        (trace and not session and not run)
        or (session and not trace and not run and not observation)
        or (run and not trace and not session and not observation)
    ):
        errors.append(
            "Provide exactly one of the following: traceId (with optional observationId), "
            "sessionId or datasetRunId. ObservationId requires traceId."
        )
    # The discriminated union on dataType (ScoreBody / PostScoresBody).
    data_type, value = body.get("dataType"), body.get("value")
    if data_type == "NUMERIC" and not _is_number(value):
        errors.append("value: a number is required for data type NUMERIC")
    elif data_type == "BOOLEAN" and not (_is_number(value) and value in (0, 1)):
        errors.append("Value must be a number equal to either 0 or 1 for data type BOOLEAN")
    elif data_type in ("CATEGORICAL", "CORRECTION") and not isinstance(value, str):
        errors.append(f"value: a string is required for data type {data_type}")
    elif data_type == "CORRECTION" and body.get("configId"):
        errors.append("configId: a CORRECTION score cannot have a config")
    elif data_type == "TEXT" and not (
        isinstance(value, str) and 1 <= len(value) <= TEXT_SCORE_MAX_LENGTH
    ):
        errors.append(f"value: a string of 1 to {TEXT_SCORE_MAX_LENGTH} characters for TEXT")
    elif data_type is None and not (_is_number(value) or isinstance(value, str)):
        errors.append("value: a number or a string is required")
    elif data_type not in (None, "NUMERIC", "BOOLEAN", "CATEGORICAL", "CORRECTION", "TEXT"):
        errors.append(f"dataType: invalid discriminator value {data_type!r}")
    source = body.get("source", "API")
    if source not in sources:
        errors.append(f"source: expected one of {', '.join(sources)}, got {source!r}")
    environment = body.get("environment")
    if environment is not None and not (
        isinstance(environment, str)
        and len(environment) <= ENVIRONMENT_MAX
        and ENVIRONMENT.fullmatch(environment)
    ):
        errors.append(
            "environment: lowercase letters, digits, '-' and '_', at most 40, "
            "and it must not start with 'langfuse'"
        )
    if endpoint == "scores":
        stamp = body.get("timestamp")
        if stamp is not None and not (isinstance(stamp, str) and ISO_WITH_OFFSET.match(stamp)):
            errors.append("timestamp: an ISO 8601 datetime with a zone offset")
        # PostScoresBody's refine (domain/scores.ts: isAnnotationScoreMissingConfigId).
        if _annotation_without_config(body):
            errors.append("configId is required when source is ANNOTATION (except for CORRECTION)")
    return errors


def _annotation_without_config(body: dict[str, Any]) -> bool:
    return (
        body.get("source") == "ANNOTATION"
        and not body.get("configId")
        and body.get("dataType") != "CORRECTION"
    )


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
    version: str = "v4"  # "v4": batch scores endpoint and observations v2; "v3": neither
    fail_next: int = 0
    fail_after: int = 0  # requests let through before ``fail_next`` applies
    force_status: int | None = None  # answer every request with this status (and no data)
    reject_names: set[str] = field(default_factory=set)
    fail_items: int = 0  # valid score events answered with a per-event 500 (not stored)
    # Errors of the 207 name no event ("unknown"): not the real server, which names every event
    # by the id it was sent; for the sink's fallback.
    unnamed_errors: bool = False
    missing_paths: set[str] = field(default_factory=set)
    # Score configs by id: {"name", "dataType", optional "minValue", "maxValue", "categories",
    # "isArchived"} (packages/shared/src/server/ingestion/validateAndInflateScore.ts).
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Stored score rows by (date of timestamp, name, id): the ClickHouse table's sorting key.
    rows: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    # (score id, why) for events answered 201 and dropped later, as the real worker does.
    dropped: list[tuple[str, str]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)
    secret_key: str = SECRET_KEY
    lock: threading.Lock = field(default_factory=threading.Lock)
    _writes: int = 0
    _keys: dict[str, set[tuple[str, str, str]]] = field(default_factory=dict)  # rows of an id

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "LANGFUSE_PUBLIC_KEY": PUBLIC_KEY,
            "LANGFUSE_SECRET_KEY": SECRET_KEY,
            "LANGFUSE_HOST": self.url,
        }

    def session_scores(self, session_id: str) -> dict[str, dict[str, Any]]:
        """The stored scores on one session (``sessionId``, no trace), by id."""
        return {k: v for k, v in self.scores.items() if v.get("sessionId") == session_id}

    @property
    def scores(self) -> dict[str, dict[str, Any]]:
        """The stored scores by id (the newest row when an id has several)."""
        with self.lock:
            rows = sorted(self.rows.values(), key=lambda r: r["_written"])
        return {row["id"]: _public(row) for row in rows}

    def duplicates(self) -> dict[str, int]:
        """Score ids stored in more than one row, with their number of rows."""
        with self.lock:
            counts: dict[str, int] = {}
            for _, _, score_id in self.rows:
                counts[score_id] = counts.get(score_id, 0) + 1
        return {score_id: n for score_id, n in counts.items() if n > 1}

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
        """Requests that sent scores, each with ``body`` the list of score bodies it carried
        (the event bodies of an ingestion batch, the array or object of the scores endpoint)."""
        posts = []
        for r in list(self.requests):
            if r.method != "POST" or not isinstance(r.body, dict | list):
                continue
            if r.path == "/api/public/ingestion" and isinstance(r.body, dict):
                batch = r.body.get("batch") or []
                scores = [e.get("body") for e in batch if isinstance(e, dict)]
                scores = [s for s in scores if isinstance(s, dict)]
            elif r.path == "/api/public/scores":
                scores = r.body if isinstance(r.body, list) else [r.body]
            else:
                continue
            posts.append(Request(r.method, r.path, r.query, r.headers, scores, r.raw))
        return posts

    def handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = ValueError("Invalid JSON")
        request = Request(
            method,
            url.path,
            parse_qs(url.query),
            {k.lower(): v for k, v in handler.headers.items()},
            parsed,
            raw,
        )
        with self.lock:
            self.requests.append(request)
            if self.fail_after > 0:
                self.fail_after -= 1
                fail = False
            else:
                fail = self.fail_next > 0
                self.fail_next -= 1 if fail else 0
        if self.force_status is not None:
            return self.answer(handler, self.force_status, {"message": "forced"})
        if url.path in self.missing_paths:
            return self.answer(handler, 404, {"message": "This page could not be found."})
        limit = INGESTION_BODY_LIMIT if url.path == "/api/public/ingestion" else SCORES_BODY_LIMIT
        if len(raw) > limit:
            # Next.js answers before the route runs (its body parser), auth or not.
            return self.answer_text(handler, 413, f"Body exceeded {_limit_name(limit)} limit")
        expected = "Basic " + base64.b64encode(f"{PUBLIC_KEY}:{self.secret_key}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return self.answer(
                handler, 401, {"error": "UnauthorizedError", "message": "Invalid credentials"}
            )
        if fail:
            return self.answer(handler, 500, {"message": "injected failure"})
        if isinstance(request.body, ValueError):
            return self.answer(handler, 400, {"message": "Invalid JSON"})
        if url.path == "/api/public/ingestion":
            if method != "POST":
                return self.answer(handler, 405, {"message": "Method not allowed"})
            return self.answer(handler, *self.ingest(request.body))
        if method == "POST" and url.path == "/api/public/scores":
            return self.answer(handler, *self.post_scores(request.body))
        if method == "GET" and url.path == "/api/public/v2/observations":
            if self.version == "v3":
                return self.answer(
                    handler,
                    404,
                    {"error": "LangfuseNotFoundError", "message": V2_OBSERVATIONS_MISSING},
                )
            return self.answer(handler, *self.list_observations(request.query))
        if method == "GET" and url.path == "/api/public/traces":
            return self.answer(handler, *self.list_traces(request.query))
        if method == "GET" and url.path.startswith("/api/public/traces/"):
            return self.answer(handler, *self.get_trace(url.path.rsplit("/", 1)[1]))
        return self.answer(handler, 404, {"message": "This page could not be found."})

    # -- writing scores ------------------------------------------------------------------------

    def ingest(self, body: Any) -> tuple[int, dict[str, Any]]:
        """POST /api/public/ingestion: 207 with each event's outcome (processEventBatch.ts)."""
        if not (isinstance(body, dict) and isinstance(body.get("batch"), list)):
            return 400, {"message": "Invalid request data", "errors": ["batch: expected array"]}
        successes: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for event in body["batch"]:
            event_id = event.get("id") if isinstance(event, dict) else None
            event_id = event_id if isinstance(event_id, str) else "unknown"
            problems = self._event_errors(event)
            if not problems and event["type"] == "score-create":
                problems = score_errors(
                    event["body"], sources=INGESTION_SOURCES, endpoint="ingestion"
                )
                if not problems and event["body"].get("name") in self.reject_names:
                    problems = [f"score {event['body']['name']} refused (injected)"]
            if problems:
                errors.append(
                    {
                        "id": event_id,
                        "status": 400,
                        "message": "Invalid request data",
                        "error": "; ".join(problems),
                    }
                )
                continue
            if event["type"] == "score-create" and self._take_item_failure():
                # aggregateBatchResult's entry for any other error: no "message".
                errors.append({"id": event_id, "status": 500, "error": "Internal Server Error"})
                continue
            successes.append({"id": event_id, "status": 201})
            if event["type"] == "score-create":
                self._store(event["body"], _time(event["timestamp"]))
        if self.unnamed_errors:
            errors = [{**error, "id": "unknown"} for error in errors]
        return 207, {"successes": successes, "errors": errors}

    def _take_item_failure(self) -> bool:
        with self.lock:
            if self.fail_items <= 0:
                return False
            self.fail_items -= 1
            return True

    @staticmethod
    def _event_errors(event: Any) -> list[str]:
        # The event envelope (types.ts: ``base``): id (idSchema), timestamp with offset, type.
        if not isinstance(event, dict):
            return ["expected an object"]
        errors = []
        event_id = event.get("id")
        if not (isinstance(event_id, str) and 1 <= len(event_id) <= 800 and "\r" not in event_id):
            errors.append("id: 1 to 800 characters, no carriage return")
        stamp = event.get("timestamp")
        if not (isinstance(stamp, str) and ISO_WITH_OFFSET.match(stamp)):
            errors.append("timestamp: an ISO 8601 datetime with a zone offset")
        if event.get("type") not in EVENT_TYPES:
            errors.append(f"type: invalid discriminator value {event.get('type')!r}")
        if not isinstance(event.get("body"), dict):
            errors.append("body: expected an object")
        return errors

    def post_scores(self, body: Any) -> tuple[int, dict[str, Any]]:
        now = datetime.now(UTC)
        if self.version == "v3" or isinstance(body, dict):
            # One object (PostScoresBody); the server stamps the event with the time it got it
            # (web/src/features/public-api/server/scores-api-service.ts: createScore).
            problems = score_errors(body, sources=SCORES_API_SOURCES, endpoint="scores")
            if problems:
                return 400, {"message": "Invalid request data", "error": problems}
            score = {**body, "id": body.get("id") or f"generated-{len(self.rows)}"}
            score.pop("timestamp", None)  # not part of PostScoresBody: stripped by zod
            self._store(score, now)
            return 200, {"id": score["id"]}
        if not isinstance(body, list):
            return 400, {"message": "Invalid request data", "error": ["expected an array"]}
        errors = []
        for score in body:
            problems = score_errors(score, sources=SCORES_API_SOURCES, endpoint="scores")
            if not problems and score.get("name") in self.reject_names:
                problems = [f"score {score['name']} refused (injected)"]
            if problems:
                errors.append({"message": "; ".join(problems)})
                continue
            stamp = score.get("timestamp")
            self._store(
                {k: v for k, v in score.items() if k != "timestamp"},
                _time(stamp) if stamp else now,
            )
        if errors:
            counts = {"accepted": len(body) - len(errors), "rejected": len(errors)}
            return 207, {**counts, "errors": errors}
        return 202, {"message": "Accepted"}

    def _store(self, body: dict[str, Any], timestamp: datetime) -> None:
        """What the ingestion worker does with an accepted score event."""
        score_id = body["id"]
        with self.lock:
            # validateAndInflateScore.ts: checks made after the API answered; a failure drops
            # the score with only a log line on the server.
            reason = self._late_rejection(body)
            if reason:
                self.dropped.append((score_id, reason))
                return
            if body.get("configId"):
                body = {**body, "name": self.configs[body["configId"]]["name"]}
            # processScoreEventList: an existing row of this id at or after the event's time.
            existing = [
                self.rows[key]
                for key in self._keys.get(score_id, ())
                if self.rows[key]["_timestamp"] >= timestamp
            ]
            row = {**body, "environment": body.get("environment") or "default"}
            row["_timestamp"] = timestamp
            if existing:
                first = max(existing, key=lambda r: r["_written"])
                for key in ("_timestamp", "environment", "traceId"):  # immutableEntityKeys
                    if key in first:  # a session or dataset-run score has no trace id
                        row[key] = first[key]
                    else:
                        row.pop(key, None)
            self._writes += 1
            row["_written"] = self._writes
            row["timestamp"] = row["_timestamp"].isoformat()
            key = (row["_timestamp"].date().isoformat(), row["name"], score_id)
            self.rows[key] = row
            self._keys.setdefault(score_id, set()).add(key)

    def _late_rejection(self, body: dict[str, Any]) -> str | None:
        if _annotation_without_config(body):
            return "configId is required when source is ANNOTATION (except for CORRECTION scores)."
        if body.get("dataType") == "CORRECTION" and (
            body.get("sessionId") or body.get("datasetRunId")
        ):
            # validateAndInflateScore.ts: CORRECTION scores only on traces or observations.
            return "CORRECTION scores cannot be associated with sessions or dataset runs."
        config_id = body.get("configId")
        if not config_id:
            return None
        config = self.configs.get(config_id)
        if config is None or config.get("isArchived"):
            return "The configId you provided does not match a valid config in this project"
        data_type = body.get("dataType")
        if data_type and data_type != config["dataType"]:
            return f"Data type mismatch based on config: expected {config['dataType']}"
        value = body["value"]
        if config["dataType"] in ("NUMERIC", "BOOLEAN"):
            low, high = config.get("minValue"), config.get("maxValue")
            if (
                not _is_number(value)
                or (low is not None and value < low)
                or (high is not None and value > high)
            ):
                return "Ingested score body not valid against provided config: value"
        if config["dataType"] == "CATEGORICAL" and value not in [
            c["label"] for c in config.get("categories", [])
        ]:
            return "Ingested score body not valid against provided config: categories"
        return None

    # -- reading traces ------------------------------------------------------------------------

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

    def _trace(self, root: dict[str, Any]) -> dict[str, Any]:
        """A v1 trace (APITrace) from the root observation of the served traces."""
        members = [o for o in self.observations if o["traceId"] == root["traceId"]]
        return {
            "id": root["traceId"],
            "projectId": root.get("projectId", "p1"),
            "timestamp": root["startTime"],
            "name": root.get("traceName"),
            "userId": root.get("userId"),
            "sessionId": root.get("sessionId"),
            "release": root.get("release"),
            "version": None,
            "environment": root.get("environment") or "default",
            "tags": root.get("tags") or [],
            "input": root.get("input"),
            "output": root.get("output"),
            "metadata": root.get("metadata") or {},
            "latency": root.get("latency"),
            "totalCost": root.get("totalCost"),
            "public": False,
            "bookmarked": False,
            "externalId": None,
            "observations": [o["id"] for o in members],
            "scores": [],
        }

    def _roots(self) -> list[dict[str, Any]]:
        return [o for o in self.observations if o.get("isRootObservation")]

    def list_traces(self, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """GET /api/public/traces (GetTracesV1Query): page, limit, fromTimestamp,
        toTimestamp, name, userId, tags (all of them), orderBy=timestamp.asc."""
        roots = self._roots()
        if "fromTimestamp" in query:
            since = _time(query["fromTimestamp"][0])
            roots = [r for r in roots if _time(r["startTime"]) >= since]
        if "toTimestamp" in query:
            until = _time(query["toTimestamp"][0])
            roots = [r for r in roots if _time(r["startTime"]) < until]
        if "name" in query:
            roots = [r for r in roots if r.get("traceName") == query["name"][0]]
        if "userId" in query:
            roots = [r for r in roots if r.get("userId") == query["userId"][0]]
        if "tags" in query:
            roots = [r for r in roots if set(query["tags"]) <= set(r.get("tags") or [])]
        if query.get("orderBy", [""])[0] != "timestamp.asc":
            return 400, {"message": "the fake serves orderBy=timestamp.asc only"}
        roots.sort(key=lambda r: (r["startTime"], r["traceId"]))
        page = int(query.get("page", ["1"])[0])
        limit = int(query.get("limit", ["50"])[0])
        chunk = roots[(page - 1) * limit : page * limit]
        meta = {
            "page": page,
            "limit": limit,
            "totalItems": len(roots),
            "totalPages": math.ceil(len(roots) / limit),
        }
        return 200, {"data": [self._trace(r) for r in chunk], "meta": meta}

    def get_trace(self, trace_id: str) -> tuple[int, dict[str, Any]]:
        """GET /api/public/traces/{id}: the trace with its observations (APIObservation)."""
        root = next((r for r in self._roots() if r["traceId"] == trace_id), None)
        if root is None:
            return 404, {"error": "LangfuseNotFoundError", "message": "Trace not found"}
        members = []
        for o in self.observations:
            if o["traceId"] != trace_id:
                continue
            v1 = {k: v for k, v in o.items() if k not in ("isRootObservation", "traceName", "tags")}
            v1.setdefault("parentObservationId", None)
            members.append(v1)
        return 200, {**self._trace(root), "observations": members}

    # -- answering -----------------------------------------------------------------------------

    @staticmethod
    def answer(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def answer_text(handler: BaseHTTPRequestHandler, status: int, text: str) -> None:
        data = text.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def _limit_name(limit: int) -> str:
    return "4.5mb" if limit == INGESTION_BODY_LIMIT else "1mb"


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}
