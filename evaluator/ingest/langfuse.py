"""Backfill from Langfuse: read historical traces through its public API and publish them.

Used to evaluate past traffic, e.g. after a new judge version ships. Traces are read as their
root observations (``GET /api/public/v2/observations``, cursor-paged, filtered by start time,
trace name, tags and user); per page, one more request fetches the traces' generations and
retrievals, which give the answer, model, tokens and retrieved contexts. The cursor is saved in
Redis after each published page, so an interrupted backfill resumes where it stopped. Delivery
is at least once: a page published just before a crash is published again on resume, which the
fleet absorbs (scores are keyed by trace, evaluator and version).

Langfuse v3 answers the observations v2 API with 404 unless its v4 preview is switched on
(web/src/pages/api/public/v2/observations/index.ts at v3.225 in langfuse/langfuse). There the
backfill reads ``GET /api/public/traces`` instead (page-based, ordered by timestamp, same
filters) and each trace's observations from ``GET /api/public/traces/{id}``: one request more
per trace. Its saved position is ``v1:<next page>``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import redis
from pydantic import ValidationError
from redis.typing import EncodableT, FieldT

from evaluator.constants import LANGFUSE_BACKFILL_PREFIX
from evaluator.ingest.otel import json_messages, last_user_text, message_text
from evaluator.ingest.publish import publish_many
from evaluator.models import TokenUsage, Trace, describe_validation_error, stable_id
from evaluator.settings import Settings
from evaluator.streams import text

ROOT_FIELDS = "core,basic,time,io,metadata,model,usage,prompt,metrics,trace_context"
CHILD_FIELDS = "core,basic,io,metadata,model,usage"
V1_CURSOR = "v1:"  # a saved position in the /api/public/traces fallback: "v1:<next page>"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackfillQuery:
    since: datetime
    until: datetime | None = None
    name: str | None = None
    tags: tuple[str, ...] = ()
    user: str | None = None

    def filter_json(self) -> str:
        """The observations API's structured filter: root observations in the window."""
        conditions = [
            _condition("boolean", "isRootObservation", "=", True),
            _condition("datetime", "startTime", ">=", self.since.isoformat()),
        ]
        if self.until is not None:
            conditions.append(_condition("datetime", "startTime", "<", self.until.isoformat()))
        if self.name:
            conditions.append(_condition("string", "traceName", "=", self.name))
        if self.tags:
            conditions.append(_condition("arrayOptions", "tags", "all of", list(self.tags)))
        if self.user:
            conditions.append(_condition("string", "userId", "=", self.user))
        return json.dumps(conditions)

    @property
    def state_key(self) -> str:
        return LANGFUSE_BACKFILL_PREFIX + stable_id(self.filter_json())

    def traces_params(self, page: int, limit: int) -> dict[str, Any]:
        """The same query for ``GET /api/public/traces`` (GetTracesV1Query)."""
        params: dict[str, Any] = {
            "page": page,
            "limit": limit,
            "fromTimestamp": self.since.isoformat(),
            "orderBy": "timestamp.asc",  # new traces land after the pages already read
        }
        if self.until is not None:
            params["toTimestamp"] = self.until.isoformat()
        if self.name:
            params["name"] = self.name
        if self.tags:
            params["tags"] = list(self.tags)  # all of them
        if self.user:
            params["userId"] = self.user
        return params


def _condition(kind: str, column: str, operator: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "column": column, "operator": operator, "value": value}


def _children_filter(trace_ids: list[str]) -> str:
    return json.dumps(
        [
            _condition("stringOptions", "traceId", "any of", trace_ids),
            _condition("stringOptions", "type", "any of", ["GENERATION", "RETRIEVER"]),
        ]
    )


def _text(value: Any, *, prompt: bool) -> str:
    """Observation input/output (a string, a JSON string, messages or a dict) as plain text."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return str(value)
    if isinstance(value, dict):
        for key in ("messages", "input", "question", "query", "output", "answer", "content"):
            if key in value:
                return _text(value[key], prompt=prompt)
        if value.get("choices"):
            return _text(value["choices"][0].get("message"), prompt=prompt)
        if "role" in value:
            return message_text(value)
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        messages = json_messages(value)
        if prompt:
            return last_user_text(messages)
        return "".join(message_text(m) for m in messages[-1:])
    return str(value)


def _documents(value: Any) -> list[str]:
    docs = []
    for doc in json_messages(value) if value is not None else []:
        if isinstance(doc, dict):
            text = doc.get("page_content") or doc.get("content") or doc.get("text")
        else:
            text = doc
        if text:
            docs.append(str(text))
    return docs


def _end(observation: Any) -> datetime:
    return observation.end_time or observation.start_time  # type: ignore[no-any-return]


def observation_to_trace(root: Any, children: list[Any]) -> Trace:
    """A Trace from a Langfuse root observation and its generations and retrievals.

    The answer is the root's output, else the last generation's; the generation that ended last
    is "the LLM call" (model, tokens, observation id for scores)."""
    generations = sorted((c for c in children if c.type == "GENERATION"), key=_end)
    if root.type == "GENERATION":
        generations.append(root)
    answer = generations[-1] if generations else None
    retrievals = [c for c in children if c.type == "RETRIEVER"]
    contexts = [doc for r in sorted(retrievals, key=_end) for doc in _documents(r.output)]
    metadata = dict(root.metadata or {})
    usage = (answer.usage_details if answer else None) or {}
    prompt_source = answer if answer is not None and answer.prompt_name else root
    fields: dict[str, Any] = {
        "trace_id": root.trace_id,
        "input": _text(root.input, prompt=True)
        or (_text(answer.input, prompt=True) if answer else ""),
        "output": _text(root.output, prompt=False)
        or (_text(answer.output, prompt=False) if answer else ""),
        "contexts": contexts,
        "retrieval": bool(retrievals),
        "model": answer.model if answer else None,
        "prompt_version": (
            f"{prompt_source.prompt_name}@{prompt_source.prompt_version}"
            if prompt_source.prompt_name
            else None
        ),
        "app_version": root.release,
        "tenant": metadata.get("tenant"),
        "feature": root.trace_name,
        "latency_ms": root.latency * 1000 if root.latency is not None else None,
        "finish_reason": (answer.metadata or {}).get("finish_reason") if answer else None,
        "error": (root.status_message or "error") if root.level == "ERROR" else None,
        "cost_usd": root.total_cost if root.total_cost is not None else None,
        "span_id": answer.id if answer is not None else None,
        "started_at": root.start_time,
        "ended_at": root.end_time,
        # Langfuse's session is the conversation: the turns of it are evaluated as a session
        # too (an id longer than a Trace takes stays in metadata only, never cut).
        "session_id": root.session_id if root.session_id and len(root.session_id) <= 256 else None,
        "metadata": {
            "source": "langfuse",
            "langfuse_user_id": root.user_id,
            "langfuse_session_id": root.session_id,
            "langfuse_tags": list(root.tags or []),
            "langfuse_environment": root.environment,
        },
    }
    if usage:
        fields["tokens"] = TokenUsage(
            input=int(usage.get("input", 0)), output=int(usage.get("output", 0))
        )
    return Trace(**fields)


def _v1_observations(trace: dict[str, Any]) -> tuple[Any, list[Any]]:
    """(root, generations and retrievals) as observations v2 objects from a v1 trace with its
    observations (``GET /api/public/traces/{id}``): the root observation carries the trace's
    own fields (name, user, session, tags, input/output, latency, cost), as v2 has them."""
    from langfuse.api.commons.types.observation_v2 import ObservationV2
    from langfuse.api.core.pydantic_utilities import parse_obj_as

    observations = [o for o in trace.get("observations") or [] if isinstance(o, dict)]
    roots = [o for o in observations if not o.get("parentObservationId")]
    first = min(roots, key=lambda o: str(o.get("startTime"))) if roots else None
    root: dict[str, Any] = dict(first) if first is not None else {"id": trace["id"], "type": "SPAN"}
    root.setdefault("startTime", trace.get("timestamp"))
    root.setdefault("projectId", trace.get("projectId") or "")
    own, shared = root.get("metadata"), trace.get("metadata")
    metadata = {
        **(own if isinstance(own, dict) else {}),
        **(shared if isinstance(shared, dict) else {}),
    }
    root |= {
        "traceId": trace["id"],
        "isRootObservation": True,
        "traceName": trace.get("name"),
        "userId": trace.get("userId"),
        "sessionId": trace.get("sessionId"),
        "tags": trace.get("tags") or [],
        "metadata": metadata,
    }
    for key in ("input", "output", "latency", "totalCost", "release", "environment"):
        if trace.get(key) is not None:
            root[key] = trace[key]
    children = [
        parse_obj_as(ObservationV2, {**o, "traceId": trace["id"]})
        for o in observations
        if o is not first and o.get("type") in ("GENERATION", "RETRIEVER")
    ]
    return parse_obj_as(ObservationV2, root), children


@dataclass
class TracePage:
    traces: list[Trace]
    skipped: list[str]  # "trace id: why it could not be read"
    cursor: str | None  # the next page's; None after the last


@dataclass
class BackfillResult:
    published: int = 0
    skipped: int = 0
    pages: int = 0
    resumed: bool = False
    finished: bool = False
    skip_reasons: list[str] = field(default_factory=list)


class LangfuseBackfill:
    def __init__(
        self, api: Any, client: redis.Redis, settings: Settings, page_size: int = 100
    ) -> None:
        self.api = api
        self.client = client
        self.settings = settings
        self.page_size = page_size

    def _pages(self, filter_json: str, fields: str, cursor: str | None) -> Iterator[Any]:
        while True:
            page = self.api.observations.get_many(
                fields=fields, limit=self.page_size, cursor=cursor, filter=filter_json
            )
            yield page
            cursor = page.meta.cursor
            if not cursor:
                return

    def _children(self, trace_ids: list[str]) -> dict[str, list[Any]]:
        children: dict[str, list[Any]] = defaultdict(list)
        for page in self._pages(_children_filter(trace_ids), CHILD_FIELDS, None):
            for observation in page.data:
                children[observation.trace_id].append(observation)
        return children

    def trace_pages(self, query: BackfillQuery, cursor: str | None = None) -> Iterator[TracePage]:
        """The query's traces page by page, with what could not be converted and why."""
        from langfuse.api.core.api_error import ApiError

        if cursor and cursor.startswith(V1_CURSOR):
            yield from self._v1_trace_pages(query, int(cursor[len(V1_CURSOR) :]))
            return
        while True:
            try:
                page = self.api.observations.get_many(
                    fields=ROOT_FIELDS,
                    limit=self.page_size,
                    cursor=cursor,
                    filter=query.filter_json(),
                )
            except ApiError as exc:
                if exc.status_code != 404:
                    raise
                log.warning(
                    "Langfuse has no observations v2 API here (v3 without the v4 preview): "
                    "reading /api/public/traces instead"
                )
                yield from self._v1_trace_pages(query, 1)
                return
            roots = page.data
            children = self._children([r.trace_id for r in roots]) if roots else {}
            converted = TracePage([], [], page.meta.cursor or None)
            for root in roots:
                try:
                    converted.traces.append(
                        observation_to_trace(root, children.get(root.trace_id, []))
                    )
                except ValidationError as exc:
                    converted.skipped.append(f"{root.trace_id}: {describe_validation_error(exc)}")
            yield converted
            cursor = page.meta.cursor
            if not cursor:
                return

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET a public API path with the SDK client's base URL and auth; 429, 5xx and transport
        errors are tried twice more (as the SDK's own calls are)."""
        import httpx
        from langfuse.api.core.api_error import ApiError

        wrapper = self.api._client_wrapper
        url = wrapper.get_base_url().rstrip("/") + path
        for attempt in range(3):
            try:
                response = wrapper.httpx_client.httpx_client.get(
                    url, params=params, headers=wrapper.get_headers()
                )
            except httpx.TransportError:
                if attempt == 2:
                    raise
                time.sleep(0.5 * 2**attempt)
                continue
            if (response.status_code != 429 and response.status_code < 500) or attempt == 2:
                break
            time.sleep(0.5 * 2**attempt)
        if not 200 <= response.status_code < 300:
            raise ApiError(
                status_code=response.status_code,
                headers=dict(response.headers),
                body=response.text[:1000],
            )
        return response.json()

    def _v1_trace_pages(self, query: BackfillQuery, page: int) -> Iterator[TracePage]:
        """The fallback for servers without the observations v2 API (see the module)."""
        while True:
            listed = self._get("/api/public/traces", query.traces_params(page, self.page_size))
            data = listed.get("data") or []
            more = bool(data) and page < int(listed.get("meta", {}).get("totalPages") or 0)
            converted = TracePage([], [], f"{V1_CURSOR}{page + 1}" if more else None)
            for summary in data:
                trace = self._get(f"/api/public/traces/{quote(str(summary['id']), safe='')}")
                try:
                    root, children = _v1_observations(trace)
                    converted.traces.append(observation_to_trace(root, children))
                except ValidationError as exc:
                    converted.skipped.append(f"{summary['id']}: {describe_validation_error(exc)}")
            yield converted
            if not more:
                return
            page += 1

    def run(
        self,
        query: BackfillQuery,
        restart: bool = False,
        limit: int | None = None,
        on_page: Callable[[BackfillResult], None] | None = None,
    ) -> BackfillResult:
        key = query.state_key
        if restart:
            self.client.delete(key)
        state = {text(k): text(v) for k, v in self.client.hgetall(key).items()}
        result = BackfillResult(
            published=int(state.get("published", 0)), resumed=bool(state), finished="done" in state
        )
        if result.finished:
            return result
        for page in self.trace_pages(query, state.get("cursor") or None):
            payloads = [trace.model_dump_json(exclude_none=True) for trace in page.traces]
            result.skipped += len(page.skipped)
            result.skip_reasons += page.skipped
            publish_many(self.client, payloads, self.settings)
            result.published += len(payloads)
            result.pages += 1
            cursor = page.cursor
            progress: dict[FieldT, EncodableT] = {
                "published": result.published,
                "cursor": cursor or "",
            }
            if not cursor:
                progress["done"] = "1"
            self.client.hset(key, mapping=progress)
            if on_page is not None:
                on_page(result)
            if not cursor:
                result.finished = True
                return result
            if limit is not None and result.published >= limit:
                return result
        return result
