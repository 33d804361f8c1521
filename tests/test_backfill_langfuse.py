"""Backfill from Langfuse through its public API (tests/langfuse_server.py serves it): the
observations v2 API where the server has it (v4), /api/public/traces where it answers 404 (v3)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
import redis
from langfuse_server import FakeLangfuse

from evaluator.constants import TRACES_STREAM
from evaluator.ingest.langfuse import BackfillQuery, LangfuseBackfill
from evaluator.models import Trace
from evaluator.settings import Settings
from evaluator.sinks.langfuse import LangfuseSettings, langfuse_api
from evaluator.timeparse import parse_since

SINCE = datetime(2026, 11, 20, tzinfo=UTC)


def observations(
    index: int, day: int = 21, tags: list[str] | None = None
) -> list[dict[str, object]]:
    """A RAG trace as Langfuse stores it: a root span, a retriever and a generation."""
    trace_id = f"{index:032x}"
    start = f"2026-11-{day:02d}T10:{index:02d}:00Z"
    common = {"traceId": trace_id, "projectId": "p1", "startTime": start}
    return [
        {
            **common,
            "id": f"root-{index}",
            "type": "SPAN",
            "isRootObservation": True,
            "name": "support-chat",
            "traceName": "support-chat",
            "tags": tags if tags is not None else ["prod"],
            "userId": f"user-{index % 2}",
            "sessionId": "s-1",
            "release": "app-1.4.0",
            "environment": "production",
            "endTime": f"2026-11-{day:02d}T10:{index:02d}:02Z",
            "latency": 2.0,
            "input": json.dumps({"question": f"How do I reset my password? ({index})"}),
            "output": json.dumps({"answer": "Open Settings > Security and click Reset."}),
            "metadata": {"tenant": "acme"},
        },
        {
            **common,
            "id": f"ret-{index}",
            "type": "RETRIEVER",
            "parentObservationId": f"root-{index}",
            "output": json.dumps(
                [{"page_content": "Passwords are reset under Settings > Security."}]
            ),
            "endTime": start,
        },
        {
            **common,
            "id": f"gen-{index}",
            "type": "GENERATION",
            "parentObservationId": f"root-{index}",
            "model": "gpt-4o-mini",
            "usageDetails": {"input": 120, "output": 18, "total": 138},
            "promptName": "support",
            "promptVersion": 7,
            "metadata": {"finish_reason": "stop"},
            "input": json.dumps(
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]
            ),
            "output": json.dumps(
                {"role": "assistant", "content": "Open Settings > Security and click Reset."}
            ),
            "endTime": f"2026-11-{day:02d}T10:{index:02d}:01Z",
        },
    ]


def served(version: str) -> FakeLangfuse:
    fake = FakeLangfuse(version=version)
    for i in range(1, 8):
        fake.observations += observations(i)
    fake.observations += observations(20, day=10)  # before --since
    fake.observations += observations(21, tags=["staging"])  # filtered out by tag
    fake.start()
    return fake


@pytest.fixture(params=["v4", "v3"])
def langfuse(request: pytest.FixtureRequest) -> Iterator[FakeLangfuse]:
    fake = served(request.param)
    yield fake
    fake.stop()


def published(client: redis.Redis) -> list[Trace]:
    return [Trace.model_validate_json(f[b"trace"]) for _, f in client.xrange(TRACES_STREAM)]


def test_backfill_converts_pages_and_resumes(
    langfuse: FakeLangfuse, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in langfuse.env().items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    query = BackfillQuery(SINCE, name="support-chat", tags=("prod",))
    with httpx.Client() as http:
        backfill = LangfuseBackfill(
            langfuse_api(LangfuseSettings(), http), redis_client, settings, 3
        )
        first = backfill.run(query, limit=3)  # interrupted after one page
        assert (first.published, first.pages, first.finished) == (3, 1, False)
        second = LangfuseBackfill(langfuse_api(LangfuseSettings(), http), redis_client, settings, 3)
        rest = second.run(query)
        assert rest.resumed and rest.finished and rest.published == 7 and rest.pages == 2
        assert second.run(query).pages == 0  # finished: nothing more to do
    traces = published(redis_client)
    assert sorted(t.trace_id for t in traces) == [f"{i:032x}" for i in range(1, 8)]  # no repeats
    trace = next(t for t in traces if t.trace_id == f"{1:032x}")
    assert trace.input == "How do I reset my password? (1)"
    assert trace.output == "Open Settings > Security and click Reset."
    assert trace.contexts == ["Passwords are reset under Settings > Security."]
    assert trace.retrieval and trace.model == "gpt-4o-mini"
    assert trace.tokens is not None and (trace.tokens.input, trace.tokens.output) == (120, 18)
    assert trace.span_id == "gen-1"  # Langfuse scores then land on the generation
    assert trace.prompt_version == "support@7" and trace.app_version == "app-1.4.0"
    assert (trace.tenant, trace.feature, trace.finish_reason) == ("acme", "support-chat", "stop")
    assert trace.latency_ms == 2000.0
    assert trace.metadata["langfuse_user_id"] == "user-1"
    assert trace.session_id == "s-1"  # its conversation: evaluated as a session too
    gets = [r for r in langfuse.requests if r.method == "GET"]
    if langfuse.version == "v4":
        assert all(r.path == "/api/public/v2/observations" for r in gets)
        roots = [r for r in gets if "isRootObservation" in r.query["filter"][0]]
        assert json.loads(roots[0].query["filter"][0])[1] == {
            "type": "datetime",
            "column": "startTime",
            "operator": ">=",
            "value": SINCE.isoformat(),
        }
        return
    # v3: the first request finds no observations v2 API; the resumed run goes straight on.
    assert [r.path for r in gets].count("/api/public/v2/observations") == 1
    lists = [r for r in gets if r.path == "/api/public/traces"]
    assert [r.query["page"] for r in lists] == [["1"], ["2"], ["3"]]
    assert lists[0].query["fromTimestamp"] == [SINCE.isoformat()]
    assert lists[0].query["tags"] == ["prod"] and lists[0].query["name"] == ["support-chat"]
    details = [r.path for r in gets if r.path.startswith("/api/public/traces/")]
    assert sorted(details) == sorted(f"/api/public/traces/{i:032x}" for i in range(1, 8))


def test_v3_fallback_retries_transient_errors(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    langfuse = served("v3")
    try:
        for key, value in langfuse.env().items():
            monkeypatch.setenv(key, value)
        with httpx.Client() as http:
            backfill = LangfuseBackfill(
                langfuse_api(LangfuseSettings(), http), redis_client, Settings(), 5
            )
            pages = backfill.trace_pages(BackfillQuery(SINCE, tags=("prod",)))
            first = next(pages)  # after the v2 request's 404
            langfuse.fail_next = 2  # the next page's list request fails twice, then works
            rest = list(pages)
    finally:
        langfuse.stop()
    assert len(first.traces) == 5 and [len(p.traces) for p in rest] == [2]
    assert first.cursor == "v1:2" and rest[-1].cursor is None


def test_cli_backfill_with_progress(
    langfuse: FakeLangfuse, redis_url: str, redis_client: redis.Redis
) -> None:
    env = {"EVALFLEET_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin", **langfuse.env()}
    command = [
        sys.executable,
        "-m",
        "evaluator.cli",
        "backfill",
        "langfuse",
        "--since",
        "2026-11-20",
        "--tag",
        "prod",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "7 traces published in total" in done.stdout and "finished" in done.stdout
    assert redis_client.xlen(TRACES_STREAM) == 7
    bad = subprocess.run(
        [*command[:5], "--since", "last tuesday"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "cannot read 'last tuesday' as a time" in bad.stderr


def test_parse_since() -> None:
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 11, 16, 12, tzinfo=UTC)
    assert parse_since("90m", now) == datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
    assert parse_since("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since("2026-11-01T08:00:00Z") == datetime(2026, 11, 1, 8, tzinfo=UTC)
    with pytest.raises(ValueError, match="use a duration"):
        parse_since("yesterday")
