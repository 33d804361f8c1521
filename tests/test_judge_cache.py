"""Prompt caching as the judges see it: a judge whose static prefix is long enough is read from
the provider's cache on its second call; the cached tokens are recorded and billed at the
cached rate (the OpenAI-protocol test server caches by OpenAI's rule)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from helpers import make_trace
from openai_server import OpenAIServer

from evaluator.judging.files import default_judges_dir, load_judge
from evaluator.judging.runtime import run_judgements
from evaluator.ops import metrics
from evaluator.settings import Settings


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def test_cached_prompt_tokens_are_recorded_and_billed_at_the_cached_rate(
    server: OpenAIServer, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # Groundedness with ~1,500 tokens of static rubric: over OpenAI's 1,024-token minimum.
    document = yaml.safe_load((default_judges_dir() / "groundedness.yaml").read_text())
    rubric = " ".join(f"Rule {i}: a claim needs a context that states it." for i in range(120))
    document["user"] = rubric + "\n" + document["user"]
    path = tmp_path / "groundedness.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    spec = load_judge(path)
    settings = Settings(
        redis_url=redis_url,
        judge_base_url=server.base_url,
        judge_api_key="sk-test",  # type: ignore[arg-type]
        model_prices={"gpt-4o-mini": (0.15, 0.60, 0.075)},
    )
    [first] = asyncio.run(run_judgements(settings, [(spec, make_trace(1))]))
    [second] = asyncio.run(run_judgements(settings, [(spec, make_trace(2))]))

    assert first.call.cached_tokens == 0  # nothing cached yet
    cached = second.call.cached_tokens
    assert cached >= 1024 and cached % 128 == 0 and cached < second.call.input_tokens
    assert cached == server.fake.cached_tokens  # what the server said it served from cache
    uncached = second.call.input_tokens - cached
    expected = (uncached * 0.15 + cached * 0.075 + second.call.output_tokens * 0.60) / 1e6
    assert second.call.cost_usd == pytest.approx(expected, rel=1e-12)
    assert second.scores[0].metadata["call_cached_tokens"] == cached
    before = metrics.JUDGE_TOKENS.labels(spec.name, spec.model, "cached")._value.get()
    metrics.record_judge_calls([second.call.row()])
    after = metrics.JUDGE_TOKENS.labels(spec.name, spec.model, "cached")._value.get()
    assert after - before == cached
    # Without a cached rate in the price table, cached tokens are billed as input.
    flat = Settings(model_prices={"gpt-4o-mini": (0.15, 0.60)})
    assert flat.cost_usd("gpt-4o-mini", 2000, 10, cached_tokens=1024) == pytest.approx(
        (2000 * 0.15 + 10 * 0.60) / 1e6
    )
