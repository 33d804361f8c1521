"""Tokens per evaluation, billed by the OpenAI-protocol test server (characters / 4 of the
messages, close to real tokenizers for English; it answers with short JSON, so the completion
side is a lower bound for every row).

    python bench/judge_tokens.py [--n 200] [--rag 30] [--judges DIR]

1. groundedness on bench/judge_errors.py's workload (tests/helpers.make_trace: one context, a
   question, an answer): the fleet's call in json_schema mode and in the JSON-mode fallback
   (a server without json_schema: the schema goes into the system prompt), beside a bare
   json_schema call carrying the same question, contexts and answer under a one-line
   instruction and the same response_format. "+ schema" adds the response_format's JSON Schema
   at characters / 4, which OpenAI bills as prompt too and the test server does not. "cached"
   is what the server reports in usage.prompt_tokens_details.cached_tokens (OpenAI's rule:
   prompts from 1,024 tokens only).
2. quality (correctness, groundedness, relevance, safety in one call) vs RAGAS faithfulness +
   response relevancy, on the RAG traces of datasets/sample_traces.jsonl (needs the ragas
   extra; skipped without it).

``--judges DIR`` reads the judge files from DIR (e.g. an older version's, to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")

import openai  # noqa: E402
from helpers import make_trace  # noqa: E402
from openai.types.chat import ChatCompletionMessageParam  # noqa: E402
from openai.types.shared_params import ResponseFormatJSONSchema  # noqa: E402
from openai_server import OpenAIServer  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from evaluator.ingest import read_lines  # noqa: E402
from evaluator.judging.files import Judge, JudgeSpec, default_judges_dir, load_judges  # noqa: E402
from evaluator.judging.ragas import RagasSpec, ragas_installed  # noqa: E402
from evaluator.judging.runtime import run_judgements  # noqa: E402
from evaluator.models import Trace  # noqa: E402
from evaluator.ops.embedded import EmbeddedRedis  # noqa: E402
from evaluator.settings import Settings  # noqa: E402

BARE_INSTRUCTION = "Is every claim in the answer supported by the contexts? Score 0 to 1."


@dataclass
class Tokens:
    """Per evaluation: prompt and completion tokens the server billed, calls, cached tokens."""

    prompt: float
    completion: float
    calls: float
    cached: float
    schema: float = 0.0  # the response_format's JSON Schema, characters / 4

    @property
    def total(self) -> float:
        return self.prompt + self.completion


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


def schema_tokens(spec: JudgeSpec) -> float:
    return len(json.dumps(spec.response_format(), separators=(",", ":"))) / 4


def fleet_tokens(
    server: OpenAIServer, settings: Settings, spec: Judge, traces: list[Trace]
) -> Tokens:
    """The fleet's judge path (run_judgements), tokens from its call rows."""
    seen, cached = len(server.fake.requests), server.fake.cached_tokens
    results = asyncio.run(run_judgements(settings, [(spec, t) for t in traces]))
    n = len(traces)
    return Tokens(
        prompt=sum(r.call.input_tokens for r in results) / n,
        completion=sum(r.call.output_tokens for r in results) / n,
        calls=(len(server.fake.requests) - seen) / n,
        cached=(server.fake.cached_tokens - cached) / n,
        schema=schema_tokens(spec) if isinstance(spec, JudgeSpec) else 0.0,
    )


def bare_messages(trace: Trace) -> list[dict[str, str]]:
    contexts = "\n".join(f"- {c}" for c in trace.contexts)
    user = (
        f"{BARE_INSTRUCTION}\n\nContexts:\n{contexts}\n\nQuestion: {trace.input}\n\n"
        f"Answer: {trace.output}"
    )
    return [{"role": "user", "content": user}]


def bare_tokens(server: OpenAIServer, spec: JudgeSpec, traces: list[Trace]) -> Tokens:
    """One json_schema call per trace with the bare SDK: the floor a judge's fencing and
    instructions are measured against."""
    cached = server.fake.cached_tokens

    async def run() -> list[tuple[int, int]]:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="bench")
        usages = []
        for trace in traces:
            response = await client.chat.completions.create(
                model=spec.model,
                messages=cast("list[ChatCompletionMessageParam]", bare_messages(trace)),
                temperature=spec.temperature,
                max_tokens=spec.max_tokens,
                response_format=cast("ResponseFormatJSONSchema", spec.response_format()),
            )
            assert response.usage is not None
            usages.append((response.usage.prompt_tokens, response.usage.completion_tokens))
        await client.close()
        return usages

    usages = asyncio.run(run())
    n = len(traces)
    return Tokens(
        prompt=sum(p for p, _ in usages) / n,
        completion=sum(c for _, c in usages) / n,
        calls=1.0,
        cached=(server.fake.cached_tokens - cached) / n,
        schema=schema_tokens(spec),
    )


def row(name: str, tokens: Tokens) -> str:
    with_schema = f"{tokens.total + tokens.schema:,.0f}" if tokens.schema else "-"
    return (
        f"| {name} | {tokens.calls:.2f} | {tokens.prompt:,.0f} | {tokens.completion:,.0f} "
        f"| **{tokens.total:,.0f}** | {with_schema} | {tokens.cached:,.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200, help="groundedness traces")
    parser.add_argument("--rag", type=int, default=30, help="RAG traces for quality vs RAGAS")
    parser.add_argument("--judges", type=Path, default=None, help="judge files to read")
    args = parser.parse_args()
    judges = load_judges(args.judges or default_judges_dir())
    grounded, quality = judges["groundedness"], judges["quality"]
    workload = [make_trace(i, trace_id=f"g-{i:06d}") for i in range(args.n)]
    lines = [
        "| groundedness, per evaluation | calls | prompt | completion | total | + schema "
        "| cached |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    with OpenAIServer() as server, EmbeddedRedis() as redis_server:
        settings = Settings(
            redis_url=redis_server.url,
            judge_base_url=server.base_url,
            judge_api_key=SecretStr("bench"),
        )
        lines.append(row(f"fleet, json_schema ({grounded.version})", fleet_tokens(
            server, settings, grounded, workload
        )))  # fmt: skip
        lines.append(
            row("bare json_schema call, same data", bare_tokens(server, grounded, workload))
        )
        with OpenAIServer() as fallback:  # a fresh endpoint: the mode switch happens on it
            fallback.fake.reject_json_schema = fallback.fake.reject_object_schema = True
            json_mode = settings.model_copy(update={"judge_base_url": fallback.base_url})
            tokens = fleet_tokens(fallback, json_mode, grounded, workload)
            tokens.schema = 0.0  # in the prompt already: billed
            lines.append(row("fleet, JSON-mode fallback (schema in the prompt)", tokens))
        print(f"{args.n} traces of bench/judge_errors.py's workload (tests/helpers.make_trace)\n")
        print("\n".join(lines))
        if not ragas_installed():
            print(
                "\nquality vs RAGAS: skipped (install the ragas extra: pip install -e '.[ragas]')"
            )
            return
        traces = [t.model_copy(update={"reference": None}) for t in rag_traces(args.rag)]
        q = fleet_tokens(server, settings, quality, traces)
        r = fleet_tokens(server, settings, RagasSpec(), traces)
    print(f"\n{len(traces)} RAG traces from datasets/sample_traces.jsonl, no reference\n")
    print("| per trace | calls (chat + embeddings) | tokens |\n|---|---:|---:|")
    print(f"| quality ({quality.version}): correctness, groundedness, relevance, safety "
          f"| {q.calls:.1f} | {q.total:,.0f} |")  # fmt: skip
    print(f"| RAGAS faithfulness + response relevancy | {r.calls:.1f} | {r.total:,.0f} |")
    print(f"\nquality / RAGAS tokens: {q.total / r.total:.2f} (target <= 0.33)")


if __name__ == "__main__":
    main()
