"""RAGAS metrics as an evaluator (optional extra ``evalfleet[ragas]``, imported on first use).

Runs faithfulness and response relevancy, plus context precision and recall when the trace has
a reference, against the same OpenAI-compatible endpoint as the judges. Every HTTP request
RAGAS makes goes through the judges' transport (``JudgeClient.policed_http_client``): the same
limiter, breaker, error classifier and retries, an in-flight slot held only while a request is
out, and its token usage added to the evaluation's cost, so RAGAS is metered like any judge.
RAGAS telemetry is switched off before the import (it posts to its vendor on every call).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import httpx

from evaluator.judging.outcome import stopped_by_policy
from evaluator.models import Score, ScoreStatus, ScoreType, Severity, Trace

RAGAS = "ragas"


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


# Per metric: its value, or the reason it has none.
MetricResults = dict[str, tuple[float | None, str | None]]


class RagasRunner:
    """RAGAS metric objects for one event loop, sharing one OpenAI client whose HTTP client is
    the judges' policed one (``JudgeClient.policed_http_client``): every request RAGAS makes,
    chat or embeddings, meets the fleet-wide limiter, breaker and retry policy, and its usage
    is counted on the evaluation's outcome."""

    def __init__(
        self,
        spec: RagasSpec,
        base_url: str | None,
        api_key: str,
        http_client: httpx.AsyncClient,
        timeout_s: float,
    ) -> None:
        os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
        from openai import AsyncOpenAI
        from ragas.embeddings import OpenAIEmbeddings
        from ragas.llms import llm_factory
        from ragas.metrics.collections import (
            AnswerRelevancy,
            ContextPrecision,
            ContextRecall,
            Faithfulness,
        )

        self.spec = spec
        self.client = AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "unset",
            http_client=http_client,
            timeout=timeout_s,
            max_retries=0,  # the policy's retries, not the SDK's
        )
        llm = llm_factory(spec.model, client=self.client)
        embeddings = OpenAIEmbeddings(client=self.client, model=spec.embedding_model)
        self.faithfulness = Faithfulness(llm=llm)
        self.relevancy = AnswerRelevancy(llm=llm, embeddings=embeddings)
        self.precision = ContextPrecision(llm=llm)
        self.recall = ContextRecall(llm=llm)

    async def close(self) -> None:
        await self.client.close()

    def _metrics(self, trace: Trace) -> dict[str, Callable[[], Awaitable[Any]]]:
        """Metric name -> its scoring call, for the metrics this trace supports."""
        metrics: dict[str, Callable[[], Awaitable[Any]]] = {
            "faithfulness": lambda: self.faithfulness.ascore(
                user_input=trace.input, response=trace.output, retrieved_contexts=trace.contexts
            ),
            "answer_relevancy": lambda: self.relevancy.ascore(
                user_input=trace.input, response=trace.output
            ),
        }
        if trace.reference is not None:
            reference = trace.reference
            metrics["context_precision"] = lambda: self.precision.ascore(
                user_input=trace.input, reference=reference, retrieved_contexts=trace.contexts
            )
            metrics["context_recall"] = lambda: self.recall.ascore(
                user_input=trace.input, retrieved_contexts=trace.contexts, reference=reference
            )
        return metrics

    async def evaluate(self, trace: Trace) -> MetricResults:
        """Each metric's value, or its error; stops at the first request the retry policy
        deferred (the evaluation is then deferred as a whole, ``POLICED``'s outcome says so)."""
        results: MetricResults = {}
        for name, score in self._metrics(trace).items():
            try:
                results[name] = (float((await score()).value), None)
            except Exception as exc:
                stopped = stopped_by_policy(exc)
                if stopped is not None and stopped.outcome.deferred:
                    break
                reason = stopped.outcome.error if stopped is not None else None
                results[name] = (None, (reason or f"{type(exc).__name__}: {exc}")[:500])
        return results


def ragas_scores(
    spec: RagasSpec, trace: Trace, results: MetricResults, details: dict[str, Any]
) -> list[Score]:
    """One Score per metric (an error Score for a metric without a value)."""
    scores = []
    for name, (value, error) in results.items():
        threshold = spec.thresholds.get(name)
        scores.append(
            Score.for_trace(
                trace.trace_id,
                RAGAS,
                spec.version,
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
