"""Tokens and calls per trace: the one-call `quality` judge vs. RAGAS faithfulness + response
relevancy, on the same RAG traces from datasets/sample_traces.jsonl.

    python bench/judge_tokens.py [--n 30]

Runs against the OpenAI-protocol test server, which bills prompt tokens as characters / 4 (close
to real tokenizers for English) and answers with short JSON, so the prompt side is realistic and
the completion side is a lower bound for both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")

from openai_server import OpenAIServer  # noqa: E402

from evaluator.ingest import read_lines  # noqa: E402
from evaluator.judging.files import default_judges_dir, load_judges  # noqa: E402
from evaluator.judging.limits import RateLimiter  # noqa: E402
from evaluator.judging.ragas import RagasRunner, RagasSpec, ragas_installed  # noqa: E402
from evaluator.judging.runtime import run_judgements  # noqa: E402
from evaluator.models import Trace  # noqa: E402
from evaluator.ops.embedded import EmbeddedRedis  # noqa: E402
from evaluator.settings import Settings  # noqa: E402


def rag_traces(n: int) -> list[Trace]:
    traces = []
    for line in read_lines(ROOT / "datasets" / "sample_traces.jsonl"):
        try:
            trace = Trace.model_validate_json(line)
        except ValueError:
            continue
        if trace.contexts and trace.input and trace.output:
            traces.append(trace)
        if len(traces) == n:
            break
    return traces


async def ragas_two_metrics(settings: Settings, traces: list[Trace]) -> list[dict[str, Any]]:
    """Only faithfulness + answer relevancy (the dimensions `quality` also covers)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.redis_url)
    runner = RagasRunner(
        RagasSpec(), settings, settings.judge_base_url, "bench", RateLimiter(client, {}, {})
    )
    calls = []
    for trace in traces:
        _, call = await runner.evaluate(trace.model_copy(update={"reference": None}))
        calls.append(call)
    await runner.close()
    await client.aclose()
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=30)
    args = parser.parse_args()
    if not ragas_installed():
        raise SystemExit("install the ragas extra first: pip install -e '.[ragas]'")
    traces = rag_traces(args.n)
    quality = load_judges(default_judges_dir())["quality"]
    with OpenAIServer() as server, EmbeddedRedis() as redis_server:
        settings = Settings(
            redis_url=redis_server.url, judge_base_url=server.base_url, judge_api_key="bench"
        )  # type: ignore[arg-type]
        judged = asyncio.run(run_judgements(settings, [(quality, t) for t in traces]))
        quality_requests = len(server.fake.requests)
        ragas_calls = asyncio.run(ragas_two_metrics(settings, traces))
        ragas_requests = len(server.fake.requests) - quality_requests
    q_tokens = sum(r.call["input_tokens"] + r.call["output_tokens"] for r in judged) / len(traces)
    r_tokens = sum(c["input_tokens"] + c["output_tokens"] for c in ragas_calls) / len(traces)
    print(f"{len(traces)} RAG traces from datasets/sample_traces.jsonl")
    print(
        f"quality judge (correctness, groundedness, relevance, safety): "
        f"{quality_requests / len(traces):.1f} calls, {q_tokens:,.0f} tokens per trace"
    )
    print(
        f"RAGAS faithfulness + response relevancy: {ragas_requests / len(traces):.1f} calls "
        f"(chat + embeddings), {r_tokens:,.0f} tokens per trace"
    )
    print(f"quality / RAGAS tokens: {q_tokens / r_tokens:.2f}")


if __name__ == "__main__":
    main()
