"""Langfuse sink: every Score becomes a Langfuse score on what it is about, every human review
label an annotation score beside them. Turn and trajectory scores are trace scores (``traceId``,
and ``observationId`` when the trace names its span); session scores (``Score.level`` session,
whose ``trace_id`` is the session subject ``session:<digest>``) are Langfuse *session scores*:
``sessionId`` is the app's session id (the one its traces carry, so the score sits on the
session Langfuse already shows) and there is no ``traceId`` or ``observationId``.
``metadata.level`` says a trajectory or session score's level (a turn score's body is what it
was before levels, so its outbox digest does not change).

Sent as ``score-create`` events to ``POST /api/public/ingestion``, with the SDK's API client
configuration (base URL, Basic auth, SDK headers), rather than through ``Langfuse().create_score``:
that one queues in memory and, with the server down for more than about 1.5 s, drops scores with
only a log line. Here the relay sends outbox rows and counts a row as delivered only when Langfuse
confirmed that event. Why the ingestion endpoint: it is the batch endpoint of every server
version users run (v2 and v3 — the compose file pins ``langfuse/langfuse:3`` — and v4, where it
still takes scores in events-only mode: web/src/pages/api/public/ingestion.ts in
langfuse/langfuse), and its 207 answer names each event's outcome, so one refused score is
found without re-sending the others. ``POST /api/public/scores`` takes one object on servers
older than its batch form (an array gets 400) and its batch form's 207 names no score.

What the real server checks, and how this sink keeps to it (paths are of langfuse/langfuse):

- value by data type: BOOLEAN 0 or 1, NUMERIC a (finite) number, CATEGORICAL a string
  (packages/shared/src/server/ingestion/types.ts, ScoreBody): ``_value`` and ``_refusal``;
- exactly one of traceId / sessionId / datasetRunId, observationId only with traceId
  (packages/shared/src/utils/scores.ts, applyScoreValidation, on both ScoreBody and
  PostScoresBody): ``_subject`` gives a trace score traceId (with observationId) and a session
  score sessionId alone; a session score without a session id is not sent;
- CORRECTION scores only on traces (validateAndInflateScore.ts drops one with a sessionId
  later, silently): never sent, this sink sends NUMERIC, BOOLEAN and CATEGORICAL only;
- a non-empty name, an id of 1 to 800 characters (types.ts: NonEmptyString, idSchema);
- environment: at most 40 of ``[a-z0-9_-]``, not starting with "langfuse" (types.ts at v3.100;
  later servers rewrite such a value instead): ``normalize_environment`` gives what the server
  files the trace under;
- ANNOTATION scores need a score config (packages/shared/src/domain/scores.ts,
  isAnnotationScoreMissingConfigId; on ingestion they are dropped later, silently:
  packages/shared/src/server/ingestion/validateAndInflateScore.ts): labels are ANNOTATION only
  where ``EVALFLEET_LANGFUSE_SCORE_CONFIGS`` names a config;
- 4.5 MB per ingestion request (ingestion.ts bodyParser sizeLimit): batches are capped by bytes
  (``EVALFLEET_LANGFUSE_MAX_REQUEST_BYTES``, 1 MB), sent as UTF-8.

A re-sent score replaces the stored one only when it keeps its timestamp: ClickHouse's scores
table is ordered by (project, toDate(timestamp), name, id) and the ingestion worker merges an
event into an existing row only when that row is not older than the event
(worker/src/services/IngestionService/index.ts). So the score's timestamp is the trace's time
(its end, else its start; the score's own time only for traces without one), the same on every
re-send, and the event id is the score id: the server keeps one event file per (score, event
id) (packages/shared/src/server/ingestion/processEventBatch.ts), so a changed score overwrites
its file instead of adding a second one with the same time, whose merge order would be
undefined.

Each event's outcome is read from the 207 by the event id sent (the score id): a success is
delivered; an error entry with a 4xx status is a permanent rejection, kept with the server's
message; one with a 5xx or 429 (the real server's 500 "Internal Server Error" entry for any
failure on its side, aggregateBatchResult in processEventBatch.ts) or with no readable status
leaves the row pending for a retry with backoff (``deliver_each`` tells the relay which), so a
transient failure never becomes a rejection and no accepted score is sent again. Only a 207
whose errors name no event (not the real server) makes the sink re-send the unconfirmed rows,
in halves, to find the refused ones.

A server that answers the whole request 400, 401, 403, 404 or 405 is misconfigured (wrong keys,
wrong host path, a server without this endpoint): nothing is rejected, every row stays pending,
the sink logs it once, sets ``evalfleet_sink_config_error{sink="langfuse"}`` to 1 and only
probes again every ``probe_s`` (doubling to 5 minutes) until the server takes scores again.

Enabled by the standard ``LANGFUSE_PUBLIC_KEY`` / ``LANGFUSE_SECRET_KEY`` / ``LANGFUSE_HOST``
(or ``LANGFUSE_BASE_URL``) variables.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client import Gauge
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from evaluator.models import (
    Level,
    ReviewLabel,
    Score,
    ScoreStatus,
    ScoreType,
    Trace,
    Verdict,
    display_name,
    is_session_subject,
    stable_id,
)
from evaluator.sinks.base import SinkUnavailable

log = logging.getLogger(__name__)

# Score metadata copied from judge scores: which model judged and what it cost.
_JUDGE_METADATA = ("model", "call_input_tokens", "call_output_tokens", "call_cost_usd", "mode")
_MAX_COMMENT_CHARS = 4000
# The real ingestion route's body limit (web/src/pages/api/public/ingestion.ts: "4.5mb").
INGESTION_BODY_LIMIT = int(4.5 * 1024 * 1024)
_ENVIRONMENT = re.compile(r"^[a-z0-9_-]+$")
_LANGFUSE_PREFIX = re.compile(r"^(?:langfuse[-_]?)+")
# One encoder (json.dumps with options builds one per call): UTF-8 text, not \uXXXX escapes;
# NaN / Infinity refused (not JSON: the server would refuse the whole request).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_EMPTY_BATCH = b'{"batch":[]}'
# Keys of the trace's metadata that say its Langfuse environment: the app's own, or the one the
# backfill read from Langfuse (evaluator/ingest/langfuse.py).
_ENVIRONMENT_KEYS = ("environment", "langfuse_environment")

SINK_CONFIG_ERROR = Gauge(
    "evalfleet_sink_config_error",
    "1 while the sink's server refuses every request for a configuration reason (keys, host "
    "path, an endpoint it lacks): rows wait, nothing is rejected.",
    ["sink"],
    multiprocess_mode="mostrecent",
)


class SinkMisconfigured(SinkUnavailable):
    """The server refused the request itself (keys, path, shape), not a score in it: an operator
    must act. The relay keeps the rows pending, as for an outage."""


class LangfuseSettings(BaseSettings):
    """The Langfuse SDK's own environment variables, and Evalfleet's Langfuse knobs."""

    model_config = SettingsConfigDict(env_prefix="LANGFUSE_", extra="ignore")

    public_key: str | None = None
    secret_key: SecretStr | None = None
    host: str = Field(
        default="https://cloud.langfuse.com",
        validation_alias=AliasChoices("LANGFUSE_BASE_URL", "LANGFUSE_HOST"),
    )
    timeout: float = Field(default=20.0, gt=0, description="Seconds per API request.")
    environment: str = Field(
        default="default",
        validation_alias=AliasChoices(
            "EVALFLEET_LANGFUSE_ENVIRONMENT", "LANGFUSE_TRACING_ENVIRONMENT"
        ),
        description="The Langfuse environment of scores whose trace does not say its own "
        "(metadata 'environment'); the SDK's LANGFUSE_TRACING_ENVIRONMENT by default.",
    )
    score_configs: dict[str, str] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("EVALFLEET_LANGFUSE_SCORE_CONFIGS"),
        description='Langfuse score config ids by score name, e.g. {"groundedness.verdict": '
        '"cfg-1"}: human labels of those names are sent as ANNOTATION scores with the config.',
    )
    max_request_bytes: int = Field(
        default=1_000_000,
        ge=20_000,
        le=INGESTION_BODY_LIMIT,
        validation_alias=AliasChoices("EVALFLEET_LANGFUSE_MAX_REQUEST_BYTES"),
        description="Largest request body sent to Langfuse.",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.public_key and self.secret_key)


def langfuse_api(settings: LangfuseSettings, http: httpx.Client) -> Any:
    """The SDK's API client, authenticated like the SDK does it (Basic auth with the key pair)."""
    from langfuse import __version__
    from langfuse.api import LangfuseAPI

    if not (settings.public_key and settings.secret_key):
        raise ValueError("Langfuse needs LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY")
    return LangfuseAPI(
        base_url=settings.host.rstrip("/"),
        username=settings.public_key,
        password=settings.secret_key.get_secret_value(),
        x_langfuse_public_key=settings.public_key,
        x_langfuse_sdk_name="python",
        x_langfuse_sdk_version=__version__,
        httpx_client=http,
    )


def normalize_environment(value: str) -> str:
    """The environment Langfuse files data under for ``value``: lowercased, without a leading
    "langfuse" (reserved), cut to 40 characters, "default" unless only [a-z0-9_-] remain
    (PublicEnvironmentName in packages/shared/src/server/ingestion/types.ts). The result also
    passes the stricter rule of servers that refuse instead of rewriting (v3.100)."""
    cut = _LANGFUSE_PREFIX.sub("", value.lower())[:40]
    return cut if _ENVIRONMENT.fullmatch(cut) else "default"


def _value(score: Score) -> tuple[str, float | str] | str:
    """(Langfuse data type, value), or why the score cannot be sent."""
    if score.data_type is ScoreType.BOOLEAN:
        passed = score.passed if score.passed is not None else bool(score.value)
        return "BOOLEAN", 1.0 if passed else 0.0
    if score.data_type is ScoreType.CATEGORICAL:
        return ("CATEGORICAL", score.label) if score.label is not None else "no label"
    if score.value is None:
        return "no value"
    return ("NUMERIC", score.value) if math.isfinite(score.value) else "non-finite value"


def _field_value(value: float | str | bool) -> tuple[str, float | str] | None:
    """A reviewer's field score as (data type, value); None for a number JSON cannot carry."""
    if isinstance(value, bool):
        return "BOOLEAN", 1.0 if value else 0.0
    if isinstance(value, str):
        return "CATEGORICAL", value
    return ("NUMERIC", float(value)) if math.isfinite(value) else None


def _refusal(body: dict[str, Any]) -> str | None:
    """Why the real server would refuse this score body (see the module's list), if it would.
    A short, fixed reason: it becomes a metric label."""
    score_id, name = body.get("id"), body.get("name")
    if not isinstance(score_id, str) or not 1 <= len(score_id) <= 800 or "\r" in score_id:
        return "invalid id"
    if not isinstance(name, str) or not name:
        return "empty name"
    trace, session, run = (bool(body.get(k)) for k in ("traceId", "sessionId", "datasetRunId"))
    if trace + session + run != 1:
        return "not exactly one of trace, session, dataset run"
    if body.get("observationId") and not trace:
        return "observation without trace"
    environment = body.get("environment", "default")
    if len(environment) > 40 or not _ENVIRONMENT.fullmatch(environment):
        return "invalid environment"
    if environment.startswith("langfuse"):
        return "invalid environment"
    return None


def _subject(
    trace: Trace, session_level: bool, trace_id: str | None = None
) -> dict[str, str] | str:
    """Whom the score is on in Langfuse: ``{"traceId"}`` for a trace score (``trace_id``, else
    the trace's; ``_observation`` adds its span), ``{"sessionId"}`` for a session score (the
    app's session id), or why there is none."""
    if session_level:
        if not trace.session_id:
            return "no session id"
        return {"sessionId": trace.session_id}
    return {"traceId": trace_id or trace.trace_id}


def _observation(body: dict[str, Any], trace: Trace) -> None:
    # Only with a trace id (an observation is a trace's), and last, where it always was: a turn
    # score's body is byte for byte what it was before levels.
    if "traceId" in body and trace.span_id:
        body["observationId"] = trace.span_id


def _trace_time(trace: Trace) -> str | None:
    """The trace's time (end, else start), ISO with offset: a timestamp no re-run changes."""
    moment = trace.ended_at or trace.started_at
    return moment.astimezone(UTC).isoformat() if moment is not None else None


class LangfuseSink:
    name = "langfuse"

    def __init__(
        self, settings: LangfuseSettings, probe_s: float = 30.0, probe_max_s: float = 300.0
    ) -> None:
        self.settings = settings
        self.probe_s = probe_s
        self.probe_max_s = probe_max_s
        self._http: httpx.Client | None = None
        self._api: Any = None
        self.config_error: str | None = None
        self._next_probe = 0.0
        self._probe_wait = probe_s
        self._default_environment = normalize_environment(settings.environment)
        # Rows whose outcome Langfuse confirmed in a delivery that then failed as a whole (a
        # later request of the same batch could not be sent): row id -> (hash of what was sent,
        # rejection or None). When the relay hands them over again unchanged they are not sent
        # again. In memory: after a restart they are sent again, which changes nothing there.
        self._settled: dict[str, tuple[int, str | None]] = {}

    @property
    def api(self) -> Any:
        if self._api is None:  # created in the relay only; workers just build payloads
            self._http = httpx.Client(timeout=self.settings.timeout)
            self._api = langfuse_api(self.settings, self._http)
            SINK_CONFIG_ERROR.labels(self.name).set(0)
        return self._api

    # -- payloads (workers and the review queue: no I/O) ----------------------------------------

    def _environment(self, trace: Trace) -> str:
        for key in _ENVIRONMENT_KEYS:
            value = trace.metadata.get(key)
            if isinstance(value, str) and value:
                return normalize_environment(value)
        return normalize_environment(self.settings.environment)

    def _checked(self, body: dict[str, Any]) -> dict[str, Any] | str:
        return _refusal(body) or body

    def payload(self, score: Score, trace: Trace) -> dict[str, Any] | str:
        # Failed evaluations stay in SQL and metrics; a Langfuse score needs a value.
        if score.status is ScoreStatus.ERROR:
            return "error score"
        typed = _value(score)
        if isinstance(typed, str):
            return typed
        data_type, value = typed
        subject = _subject(trace, score.level is Level.SESSION)
        if isinstance(subject, str):
            return subject
        metadata: dict[str, Any] = {
            "evaluator": score.evaluator,
            "evaluator_version": score.evaluator_version,
            "severity": score.severity.value,
            "source": "evalfleet",
        }
        level = Level.SESSION if "sessionId" in subject else score.level
        if level is not Level.TURN:  # a turn score's body stays as it was before levels
            metadata["level"] = level.value
        if level is Level.SESSION and "session_version" in score.metadata:
            metadata["session_version"] = score.metadata["session_version"]
        if score.passed is not None:
            metadata["passed"] = score.passed
        metadata |= {k: score.metadata[k] for k in _JUDGE_METADATA if k in score.metadata}
        body: dict[str, Any] = {
            "id": score.id,
            **subject,
            "name": display_name(score.evaluator, score.name),
            "value": value,
            "dataType": data_type,
            "environment": self._environment(trace),
            "metadata": metadata,
        }
        _observation(body, trace)
        if score.reason:
            body["comment"] = score.reason[:_MAX_COMMENT_CHARS]
        at = _trace_time(trace)
        if at is not None:
            body["_timestamp"] = at  # the event's time (see deliver); not a score field
        return self._checked(body)

    def label_payloads(self, label: ReviewLabel) -> list[tuple[str, dict[str, Any] | str]]:
        """A reviewer's label as Langfuse scores, (score id, body or why not): the verdict as
        BOOLEAN ``<evaluator>.verdict`` (1 = pass) and each field score under the judge's score
        name, so they sit beside the judge's scores. A name with a score config in
        ``EVALFLEET_LANGFUSE_SCORE_CONFIGS`` is sent as an ANNOTATION score with that config;
        others as API scores named ``human.<name>`` (Langfuse drops ANNOTATION scores without a
        config). A label of a session (its trace is the session's) is a session score, like the
        session's own scores."""
        subject = _subject(label.trace, is_session_subject(label.trace.trace_id), label.trace_id)
        verdict = ("BOOLEAN", 1.0 if label.verdict is Verdict.PASS else 0.0)
        fields: list[tuple[str, tuple[str, float | str] | None]] = [
            (f"{label.evaluator}.verdict", verdict)
        ]
        for field, value in sorted(label.field_scores.items()):
            name = display_name(label.evaluator, field)
            if name not in {n for n, _ in fields}:  # one score per name (and outbox row id)
                fields.append((name, _field_value(value)))
        metadata = {
            "source": "evalfleet-review",
            "reviewer": label.reviewer,
            "verdict": label.verdict.value,
            "evaluator": label.evaluator,
            "evaluator_version": label.evaluator_version,
            "review_item": label.id,
        }
        payloads: list[tuple[str, dict[str, Any] | str]] = []
        for name, typed in fields:
            score_id = stable_id("review", label.id, name)
            if typed is None or isinstance(subject, str):
                payloads.append(
                    (score_id, subject if isinstance(subject, str) else "non-finite value")
                )
                continue
            config = self.settings.score_configs.get(name)
            body: dict[str, Any] = {
                "id": score_id,
                **subject,
                "name": name if config else f"human.{name}",
                "value": typed[1],
                "dataType": typed[0],
                "environment": self._environment(label.trace),
                "metadata": metadata,
                "_timestamp": label.labelled_at.astimezone(UTC).isoformat(),  # labels are final
            }
            if config:
                body |= {"source": "ANNOTATION", "configId": config}
            _observation(body, label.trace)
            if label.note:
                body["comment"] = label.note[:_MAX_COMMENT_CHARS]
            payloads.append((score_id, self._checked(body)))
        return payloads

    # -- delivery (the relay) --------------------------------------------------------------------

    def _event(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The score-create event for an outbox payload (the relay added ``timestamp``, the
        score's time; ``_timestamp``, the trace's, wins)."""
        body = dict(payload)
        stamp = body.pop("_timestamp", None) or body.pop("timestamp", None)
        body.pop("timestamp", None)
        if "environment" not in body:  # rows written before environments were sent
            body["environment"] = self._default_environment
        return {
            "id": body["id"],
            "type": "score-create",
            "timestamp": stamp or datetime.now(UTC).isoformat(),
            "body": body,
        }

    @staticmethod
    def _encode(event: dict[str, Any]) -> bytes | str:
        """The event as UTF-8 JSON, or why it is not JSON."""
        try:
            return _ENCODER.encode(event).encode()
        except ValueError:
            return "not JSON (NaN or Infinity)"

    def deliver(self, payloads: dict[str, dict[str, Any]]) -> dict[str, str]:
        """The Sink protocol's form of ``deliver_each``: a row Langfuse could not take now makes
        the whole call SinkUnavailable. The others' outcomes are kept, so they are not sent
        again when the relay hands the rows over again unchanged."""
        outcomes, retry = self._deliver(payloads)
        if retry:
            self._remember(payloads, outcomes)
            why = next(iter(retry.values()))
            raise SinkUnavailable(f"Langfuse did not take {len(retry)} of {len(payloads)}: {why}")
        return {row_id: why for row_id, why in outcomes.items() if why is not None}

    def deliver_each(
        self, payloads: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Send the payloads (keyed by outbox row id). Returns (rejected, retry): the rows
        Langfuse refused for good (a 4xx entry of its 207 answer) and those it could not take
        now (a 5xx or 429 entry, or a later request of the batch that failed as a whole), each
        with the reason; every other row was accepted. Raises SinkUnavailable when the first
        request fails as a whole (nothing was answered), SinkMisconfigured when the server
        refuses the request itself."""
        outcomes, retry = self._deliver(payloads)
        return {row_id: why for row_id, why in outcomes.items() if why is not None}, retry

    def _deliver(
        self, payloads: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, str | None], dict[str, str]]:
        """(outcomes, retry): row id -> None (accepted) or the rejection, and row id -> why it
        waits for another attempt."""
        if self.config_error is not None and time.monotonic() < self._next_probe:
            raise SinkMisconfigured(f"{self.config_error} (next check in a while)")
        self.api  # noqa: B018 - the client (and the config-error gauge) before the first send
        outcomes: dict[str, str | None] = {}
        events: list[tuple[str, dict[str, Any]]] = []  # (row id, event)
        for row_id, payload in payloads.items():
            event = self._event(payload)
            settled = self._settled.pop(row_id, None) if self._settled else None
            if settled is not None and settled[0] == hash(self._encode(event)):
                outcomes[row_id] = settled[1]
                continue  # its outcome was confirmed before: not sent twice
            events.append((row_id, event))
        retry: dict[str, str] = {}
        requests = self._requests(events, outcomes)
        try:
            for index, (chunk, body) in enumerate(requests):
                try:
                    self._post(chunk, body, outcomes, retry)
                except SinkMisconfigured:
                    raise
                except SinkUnavailable as exc:
                    if index == 0:
                        raise  # nothing was answered: the server is down, the batch waits
                    # The server answered the earlier requests: their outcomes stand, the
                    # rest of the batch waits for its retry (the server just went away).
                    for rest, _ in requests[index:]:
                        retry |= {row_id: str(exc) for row_id, _ in rest}
                    break
        except SinkUnavailable:
            self._remember(payloads, outcomes)
            raise
        if requests:  # the server answered: whatever was wrong with its configuration is not
            self._configured()
        return outcomes, retry

    def _remember(
        self, payloads: dict[str, dict[str, Any]], outcomes: dict[str, str | None]
    ) -> None:
        """Keep the confirmed outcomes of a delivery that failed as a whole (see __init__)."""
        for row_id, outcome in outcomes.items():
            sent = hash(self._encode(self._event(payloads[row_id])))
            self._settled[row_id] = (sent, outcome)
        while len(self._settled) > 100_000:  # rows another relay took over
            self._settled.pop(next(iter(self._settled)))

    def _requests(
        self, events: list[tuple[str, dict[str, Any]]], rejected: dict[str, str | None]
    ) -> list[tuple[list[tuple[str, dict[str, Any]]], bytes]]:
        """The requests to send: (events, body), each body within the byte limit. One
        serialisation of the whole batch when it fits (the usual case); else event by event."""
        if not events:
            return []
        limit = self.settings.max_request_bytes
        try:
            whole = _ENCODER.encode({"batch": [event for _, event in events]}).encode()
        except ValueError:
            whole = None
        if whole is not None and len(whole) <= limit:
            return [(events, whole)]
        requests: list[tuple[list[tuple[str, dict[str, Any]]], bytes]] = []
        chunk: list[tuple[str, dict[str, Any]]] = []
        parts: list[bytes] = []
        size = len(_EMPTY_BATCH)
        for row_id, event in events:
            data = self._encode(event)
            if isinstance(data, str):
                rejected[row_id] = data
                continue
            if len(data) + len(_EMPTY_BATCH) > limit:
                rejected[row_id] = f"{len(data):,} bytes: over the request limit"
                continue
            if parts and size + len(data) + 1 > limit:
                requests.append((chunk, _batch(parts)))
                chunk, parts, size = [], [], len(_EMPTY_BATCH)
            chunk.append((row_id, event))
            parts.append(data)
            size += len(data) + 1
        if parts:
            requests.append((chunk, _batch(parts)))
        return requests

    def _post(
        self,
        chunk: list[tuple[str, dict[str, Any]]],
        body: bytes,
        outcomes: dict[str, str | None],
        retry: dict[str, str],
    ) -> None:
        """Send one request; record each row's outcome in ``outcomes`` (None: accepted, else the
        rejection) or, when Langfuse could not take it now, in ``retry``. Raises SinkUnavailable
        (SinkMisconfigured) when the request as a whole was not taken."""
        wrapper = self.api._client_wrapper
        url = wrapper.get_base_url().rstrip("/") + "/api/public/ingestion"
        headers = {**wrapper.get_headers(), "Content-Type": "application/json; charset=utf-8"}
        try:
            response = wrapper.httpx_client.httpx_client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SinkUnavailable(f"Langfuse unreachable: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status == 413:  # a proxy with a lower limit than Langfuse's
            if len(chunk) == 1:
                outcomes[chunk[0][0]] = f"HTTP 413: {response.text[:200]}"
                return
            for half in _halves(chunk):
                self._post(half, _encode_batch(half), outcomes, retry)
            return
        if status in (408, 429) or status >= 500:
            raise SinkUnavailable(f"Langfuse answered HTTP {status}")
        if status in (401, 403):
            raise self._misconfigured(
                f"Langfuse refused the keys (HTTP {status}: {response.text[:200]}); check "
                "LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY and the project's access"
            )
        if status in (404, 405):
            raise self._misconfigured(
                f"{url} answered HTTP {status}: no Langfuse ingestion API there; check "
                "LANGFUSE_HOST (the server's base URL, without /api/public)"
            )
        if status >= 400 or status < 200:
            raise self._misconfigured(
                f"Langfuse refused the request as a whole (HTTP {status}: "
                f"{response.text[:200]}); scores stay pending"
            )
        try:
            answer = response.json()
            successes, errors = list(answer["successes"]), list(answer["errors"])
        except (ValueError, KeyError, TypeError):
            raise self._misconfigured(
                f"{url} answered HTTP {status} without the ingestion API's result "
                f"({response.text[:200]!r}); check LANGFUSE_HOST"
            ) from None
        rows = {str(event["id"]): row_id for row_id, event in chunk}
        named: set[str] = set()
        for success in successes:
            event_id = str(success.get("id")) if isinstance(success, dict) else ""
            if event_id in rows:
                named.add(event_id)
                outcomes[rows[event_id]] = None
        unnamed_errors: list[tuple[int, str]] = []
        for error in errors:
            if not isinstance(error, dict):
                continue
            code, reason = _item_status(error), _item_reason(error)
            event_id = str(error.get("id"))
            if event_id not in rows:  # "unknown": the server could not read the event's id
                unnamed_errors.append((code, reason))
                continue
            named.add(event_id)
            self._item_error(rows[event_id], code, reason, outcomes, retry)
        unconfirmed = [(row_id, event) for row_id, event in chunk if str(event["id"]) not in named]
        if unconfirmed:
            self._unnamed(unconfirmed, unnamed_errors, outcomes, retry)

    def _item_error(
        self,
        row_id: str,
        code: int,
        reason: str,
        outcomes: dict[str, str | None],
        retry: dict[str, str],
    ) -> None:
        """One event's entry in ``errors`` (packages/shared/src/server/ingestion/
        processEventBatch.ts, aggregateBatchResult: 400 invalid, 401 scope, 404 not found, 500
        anything else, such as a database that blinked in a v2 server's synchronous path)."""
        if code in (401, 403):
            raise self._misconfigured(
                f"Langfuse refused scores for this key ({reason}); give the key access to scores"
            )
        outcomes.pop(row_id, None)  # an error entry outweighs a success entry of the same id
        if code in (408, 429) or code >= 500:
            retry[row_id] = f"HTTP {code}: {reason}"[:1000]
        else:
            outcomes[row_id] = f"HTTP {code}: {reason}"[:1000]

    def _unnamed(
        self,
        unconfirmed: list[tuple[str, dict[str, Any]]],
        unnamed_errors: list[tuple[int, str]],
        outcomes: dict[str, str | None],
        retry: dict[str, str],
    ) -> None:
        """Rows a 207 did not name. Without a 4xx error that names no event, nothing says any
        of them was refused: they wait for a retry. With one, the answer cannot be mapped (the
        real server names every event by the id it was sent, so this is another server): one
        row takes it, more are sent again in halves to find the refused ones."""
        if not any(400 <= code < 500 for code, _ in unnamed_errors):
            why = f"HTTP {unnamed_errors[0][0]}: {unnamed_errors[0][1]}" if unnamed_errors else ""
            for row_id, _ in unconfirmed:
                retry[row_id] = (why or "Langfuse did not confirm it")[:1000]
            return
        if len(unconfirmed) == 1:
            code, reason = next(e for e in unnamed_errors if 400 <= e[0] < 500)
            self._item_error(unconfirmed[0][0], code, reason, outcomes, retry)
            return
        for half in _halves(unconfirmed):
            self._post(half, _encode_batch(half), outcomes, retry)

    def _misconfigured(self, reason: str) -> SinkMisconfigured:
        if self.config_error is None:
            log.error(
                "langfuse sink stopped: %s. Scores stay pending (nothing is rejected) and are "
                "sent once the server takes them; checking again every %.0f s up to %.0f s",
                reason,
                self.probe_s,
                self.probe_max_s,
            )
            SINK_CONFIG_ERROR.labels(self.name).set(1)
            self._probe_wait = self.probe_s
        else:
            self._probe_wait = min(self.probe_max_s, self._probe_wait * 2)
        self.config_error = reason
        self._next_probe = time.monotonic() + self._probe_wait
        return SinkMisconfigured(reason)

    def _configured(self) -> None:
        if self.config_error is not None:
            log.warning("langfuse sink: the server takes scores again; resuming delivery")
            SINK_CONFIG_ERROR.labels(self.name).set(0)
            self.config_error = None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()


def _batch(events: list[bytes]) -> bytes:
    return b'{"batch":[' + b",".join(events) + b"]}"


def _encode_batch(chunk: list[tuple[str, dict[str, Any]]]) -> bytes:
    return _ENCODER.encode({"batch": [event for _, event in chunk]}).encode()


def _halves(
    chunk: list[tuple[str, dict[str, Any]]],
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    return chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]


def _item_status(error: dict[str, Any]) -> int:
    """An error entry's status; one without a readable status counts as a server error (500):
    retried, never taken for a refusal."""
    try:
        return int(error.get("status"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 500


def _item_reason(error: dict[str, Any]) -> str:
    # The real entries: {"message": "Invalid request data", "error": <zod's message>} for a
    # 400, {"error": "Internal Server Error"} for a 500 (processEventBatch.ts).
    return "; ".join(str(e) for e in (error.get("message"), error.get("error")) if e)


def label_sinks() -> list[LangfuseSink]:
    """The sinks that take human labels, as the environment enables them (Langfuse)."""
    settings = LangfuseSettings()
    return [LangfuseSink(settings)] if settings.enabled else []
