"""Backfill from Langfuse: read historical traces through its public API and publish them.

Used to evaluate past traffic, e.g. after a new judge version ships. Traces are read as their
root observations (``GET /api/public/v2/observations``, cursor-paged, filtered by start time,
trace name, tags and user); per page, one more request fetches the traces' generations and
retrievals, which give the answer, model, tokens and retrieved contexts. The cursor is saved in
Redis after each published page, so an interrupted backfill resumes where it stopped. Delivery
is at least once: a page published just before a crash is published again on resume, which the
fleet absorbs (scores are keyed by trace, evaluator and version).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from pydantic import ValidationError
from redis.typing import EncodableT, FieldT

from evaluator.ingest.otel import json_messages, last_user_text, message_text
from evaluator.ingest.publish import publish_many
from evaluator.models import TokenUsage, Trace, describe_validation_error, stable_id
from evaluator.settings import Settings
from evaluator.streams import text

ROOT_FIELDS = "core,basic,time,io,metadata,model,usage,prompt,metrics,trace_context"
CHILD_FIELDS = "core,basic,io,metadata,model,usage"
STATE_PREFIX = "evalfleet:backfill:langfuse:"


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
        return STATE_PREFIX + stable_id(self.filter_json())


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
        while True:
            page = self.api.observations.get_many(
                fields=ROOT_FIELDS, limit=self.page_size, cursor=cursor, filter=query.filter_json()
            )
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
