"""The RAGAS evaluator end to end through the local OpenAI-protocol server (chat + embeddings)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
import redis
from helpers import make_trace
from openai_server import OpenAIServer

from evaluator.judging.ragas import RagasSpec, ragas_installed
from evaluator.judging.runtime import run_judgements
from evaluator.models import ScoreStatus
from evaluator.settings import Settings

pytestmark = pytest.mark.skipif(
    not ragas_installed(), reason="the ragas extra is not installed (pip install -e '.[ragas]')"
)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def test_ragas_metrics_metered_and_rate_limited(
    server: OpenAIServer, redis_url: str, redis_client: redis.Redis
) -> None:
    settings = Settings(
        redis_url=redis_url,
        judge_base_url=server.base_url,
        judge_api_key="sk-test",  # type: ignore[arg-type]
        judge_requests_per_minute={"gpt-4o-mini": 240},  # 4/s, burst 4
    )
    trace = make_trace(1, reference="Rotate the key under Settings > Security.")
    [result] = asyncio.run(run_judgements(settings, [(RagasSpec(), trace)]))

    assert os.environ["RAGAS_DO_NOT_TRACK"] == "true"
    scores = {s.name: s for s in result.scores}
    assert set(scores) == {
        "faithfulness",
        "answer_relevancy",
        "context_precision",
        "context_recall",
    }
    for score in scores.values():
        assert score.status is ScoreStatus.OK, score.reason
        assert score.value is not None and 0.0 <= score.value <= 1.0
        assert score.evaluator == "ragas" and score.evaluator_version.startswith("ragas-0.4")
    assert scores["faithfulness"].value == 1.0  # every statement judged supported by the server

    chat = [r for r in server.fake.requests if "messages" in r.body]
    embeddings = [r for r in server.fake.requests if "input" in r.body]
    assert chat and embeddings  # answer relevancy embeds its generated questions
    assert all(r.body["response_format"] == {"type": "json_object"} for r in chat)
    call = result.call
    assert call.attempts == len(server.fake.requests)
    prompt_tokens = sum(sum(len(m["content"]) for m in r.body["messages"]) // 4 for r in chat)
    assert call.input_tokens == prompt_tokens + len(embeddings)  # the server bills 1 per embed
    assert call.cost_usd is not None and call.cost_usd > 0
    # The fleet-wide limiter saw every chat request: beyond the burst of 4, one per 0.25 s.
    times = sorted(r.at for r in chat)
    assert times[-1] - times[0] >= (len(chat) - 4) * 0.25 * 0.9


def test_ragas_applies_only_with_contexts_and_input() -> None:
    spec = RagasSpec()
    assert spec.applies_when.why_not(make_trace(1)) is None
    assert spec.applies_when.why_not(make_trace(2, contexts=[])) == "needs retrieved contexts"


def test_ragas_requests_go_through_the_judges_retry_policy(
    server: OpenAIServer, redis_url: str, redis_client: redis.Redis
) -> None:
    # The judges' retries, not the SDK's: 500s and a 429 are retried by the one policy (the
    # server sees every attempt, and the call row counts them), and nothing reaches a score.
    server.fake.script.extend(["500", "429", "503"])
    settings = Settings(
        redis_url=redis_url,
        judge_base_url=server.base_url,
        judge_api_key="sk-test",  # type: ignore[arg-type]
        judge_backoff_base_s=0.01,
    )
    [result] = asyncio.run(run_judgements(settings, [(RagasSpec(), make_trace(1))]))
    assert not result.deferred
    assert all(s.status is ScoreStatus.OK for s in result.scores), [s.reason for s in result.scores]
    assert result.call.attempts == len(server.fake.requests)
    assert [status for _, status in server.fake.statuses][:3] == [500, 429, 503]


def test_ragas_against_an_endpoint_that_is_down_is_deferred_not_failed(
    server: OpenAIServer, redis_url: str, redis_client: redis.Redis
) -> None:
    server.fake.down = True
    settings = Settings(
        redis_url=redis_url,
        judge_base_url=server.base_url,
        judge_api_key="sk-test",  # type: ignore[arg-type]
        judge_backoff_base_s=0.01,
        judge_max_attempts=3,
    )
    [result] = asyncio.run(run_judgements(settings, [(RagasSpec(), make_trace(1))]))
    assert result.deferred and result.scores == [] and result.call.status == "deferred"
    # Every metric stopped at the first deferred request: 3 attempts, not 3 per metric.
    assert result.call.attempts == len(server.fake.requests) == 3
