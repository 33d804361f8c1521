"""RAGAS metrics as an evaluator (optional extra ``evalfleet[ragas]``, imported on first use).

Runs faithfulness and response relevancy, plus context precision and recall when the trace has
a reference, against the same OpenAI-compatible endpoint as the judges. Every HTTP request
RAGAS makes goes through an httpx hook that waits on the fleet-wide rate limiter, and every
response's token usage is added to the evaluation's cost, so RAGAS is metered like any judge.
RAGAS telemetry is switched off before the import (it posts to its vendor on every call).
"""

from __future__ import annotations

import json
import os
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from evaluator.models import Score, ScoreStatus, ScoreType, Severity, Trace, stable_id
from evaluator.settings import Settings

RAGAS = "ragas"
_usage: ContextVar[dict[str, int] | None] = ContextVar("ragas_usage", default=None)


class RagasApplies:
    def why_not(self, trace: Trace) -> str | None:
        if not trace.contexts:
            return "needs retrieved contexts"
        if not trace.input.strip():
            return "needs an input"
        return None


@dataclass(frozen=True)
class RagasSpec:
    """Stands beside judge files in the registry: ``EVALFLEET_ENABLED_JUDGES='["ragas"]'``."""

    name: str = RAGAS
    model: str = "gpt-4o-mini"
    embedding_model: str = "text-embedding-3-small"
    thresholds: dict[str, float] = field(
        default_factory=lambda: {"faithfulness": 0.7, "answer_relevancy": 0.5}
    )
    applies_when: RagasApplies = field(default_factory=RagasApplies)

    @property
    def version(self) -> str:
        try:
            return f"ragas-{metadata.version('ragas')}"
        except metadata.PackageNotFoundError:
            return "ragas-missing"


def ragas_installed() -> bool:
    try:
        metadata.version("ragas")
        return True
    except metadata.PackageNotFoundError:
        return False


class RagasRunner:
    """RAGAS metric objects for one event loop, sharing a metered OpenAI client."""

    def __init__(
        self, spec: RagasSpec, settings: Settings, base_url: str | None, api_key: str, limiter: Any
    ) -> None:
        os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient
        from ragas.embeddings import OpenAIEmbeddings
        from ragas.llms import llm_factory
        from ragas.metrics.collections import (
            AnswerRelevancy,
            ContextPrecision,
            ContextRecall,
            Faithfulness,
        )

        self.spec = spec
        self.settings = settings

        async def before(request: Any) -> None:  # httpx.Request
            body = json.loads(request.content or b"{}")
            estimate = len(request.content or b"") // 4 + int(body.get("max_tokens") or 0)
            await limiter.acquire(str(body.get("model", spec.model)), estimate)

        async def after(response: Any) -> None:  # httpx.Response
            await response.aread()
            usage, counter = response.json().get("usage") or {}, _usage.get()
            if counter is not None and response.is_success:
                counter["calls"] += 1
                counter["input"] += int(usage.get("prompt_tokens") or 0)
                counter["output"] += int(usage.get("completion_tokens") or 0)

        http_client = DefaultAsyncHttpxClient(
            event_hooks={"request": [before], "response": [after]}
        )
        self.client = AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "unset",
            http_client=http_client,
            timeout=settings.judge_timeout_s,
            max_retries=2,
        )
        llm = llm_factory(spec.model, client=self.client)
        embeddings = OpenAIEmbeddings(client=self.client, model=spec.embedding_model)
        self.faithfulness = Faithfulness(llm=llm)
        self.relevancy = AnswerRelevancy(llm=llm, embeddings=embeddings)
        self.precision = ContextPrecision(llm=llm)
        self.recall = ContextRecall(llm=llm)

    async def close(self) -> None:
        await self.client.close()

    async def _metrics(self, trace: Trace) -> dict[str, Any]:
        """Metric name -> coroutine, for the metrics this trace supports."""
        metrics = {
            "faithfulness": self.faithfulness.ascore(
                user_input=trace.input, response=trace.output, retrieved_contexts=trace.contexts
            ),
            "answer_relevancy": self.relevancy.ascore(
                user_input=trace.input, response=trace.output
            ),
        }
        if trace.reference is not None:
            metrics["context_precision"] = self.precision.ascore(
                user_input=trace.input, reference=trace.reference, retrieved_contexts=trace.contexts
            )
            metrics["context_recall"] = self.recall.ascore(
                user_input=trace.input, retrieved_contexts=trace.contexts, reference=trace.reference
            )
        return metrics

    async def evaluate(self, trace: Trace) -> tuple[list[Score], dict[str, Any]]:
        """Scores (an error Score per failed metric) and the call row with tokens and cost."""
        counter = {"calls": 0, "input": 0, "output": 0}
        token = _usage.set(counter)
        started = time.perf_counter()
        results: dict[str, tuple[float | None, str | None]] = {}
        try:
            for name, pending in (await self._metrics(trace)).items():
                try:
                    result = await pending
                    results[name] = (float(result.value), None)
                except Exception as exc:
                    results[name] = (None, f"{type(exc).__name__}: {exc}"[:500])
        finally:
            _usage.reset(token)
        latency_ms = (time.perf_counter() - started) * 1000
        return self._scores(trace, results, counter, latency_ms), self._call(
            trace, counter, latency_ms, results
        )

    def _cost(self, counter: dict[str, int]) -> float | None:
        return self.settings.cost_usd(self.spec.model, counter["input"], counter["output"])

    def _scores(
        self,
        trace: Trace,
        results: dict[str, tuple[float | None, str | None]],
        counter: dict[str, int],
        latency_ms: float,
    ) -> list[Score]:
        details = {
            "judge": RAGAS,
            "judge_version": self.spec.version,
            "model": self.spec.model,
            "call_input_tokens": counter["input"],
            "call_output_tokens": counter["output"],
            "calls": counter["calls"],
            "call_cost_usd": self._cost(counter),
            "latency_ms": round(latency_ms, 1),
        }
        scores = []
        for name, (value, error) in results.items():
            threshold = self.spec.thresholds.get(name)
            scores.append(
                Score.for_trace(
                    trace.trace_id,
                    RAGAS,
                    self.spec.version,
                    name,
                    data_type=ScoreType.NUMERIC,
                    value=value,
                    status=ScoreStatus.ERROR if error else ScoreStatus.OK,
                    passed=None if value is None or threshold is None else value >= threshold,
                    severity=Severity.HIGH if threshold is not None else Severity.LOW,
                    reason=error or f"RAGAS {name}",
                    metadata=details,
                )
            )
        return scores

    def _call(
        self,
        trace: Trace,
        counter: dict[str, int],
        latency_ms: float,
        results: dict[str, tuple[float | None, str | None]],
    ) -> dict[str, Any]:
        errors = [e for _, e in results.values() if e]
        return {
            "id": stable_id(trace.trace_id, RAGAS, self.spec.version, "call"),
            "trace_id": trace.trace_id,
            "judge": RAGAS,
            "judge_version": self.spec.version,
            "model": self.spec.model,
            "input_tokens": counter["input"],
            "output_tokens": counter["output"],
            "cost_usd": self._cost(counter),
            "latency_ms": latency_ms,
            "attempts": counter["calls"],
            "mode": "json_object",
            "status": "error" if errors else "ok",
            "error": errors[0] if errors else None,
            "created_at": datetime.now(UTC),
        }
