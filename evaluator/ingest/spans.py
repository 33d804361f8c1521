"""A span as the GenAI mapping sees it, whichever way it arrived (OTLP/JSON, OTLP/protobuf,
the OpenTelemetry SDK): ids as lowercase hex, attributes decoded, events attached."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_GENERATION_OPERATIONS = {"chat", "text_completion", "generate_content", "completion"}
_AGENT_OPERATIONS = {"invoke_agent", "create_agent", "invoke_workflow"}
# OpenInference span kinds as step kinds (a reranker reorders retrieved documents).
_OPENINFERENCE_KINDS = {
    "LLM": "llm",
    "TOOL": "tool",
    "RETRIEVER": "retrieval",
    "RERANKER": "retrieval",
    "EMBEDDING": "embedding",
    "AGENT": "agent",
    "CHAIN": "chain",
    "GUARDRAIL": "guardrail",
    "EVALUATOR": "other",
}


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None

    @property
    def operation(self) -> str:
        return str(self.attributes.get("gen_ai.operation.name", "")).lower()

    @property
    def is_generation(self) -> bool:
        a = self.attributes
        return (
            self.operation in _GENERATION_OPERATIONS
            or (
                self.operation == ""
                and ("gen_ai.request.model" in a or "gen_ai.response.model" in a)
            )
            or a.get("openinference.span.kind") == "LLM"
        )

    @property
    def is_retrieval(self) -> bool:
        kind = self.attributes.get("openinference.span.kind")
        return self.operation == "retrieval" or kind == "RETRIEVER"

    @property
    def step_kind(self) -> str | None:
        """The kind of agent step the span is (see ``evaluator.models.Step``), or None for a span
        that is no step (an HTTP call, a database query)."""
        kind = self.attributes.get("openinference.span.kind")
        if isinstance(kind, str) and kind.upper() in _OPENINFERENCE_KINDS:
            return _OPENINFERENCE_KINDS[kind.upper()]
        operation = self.operation
        if operation == "execute_tool":
            return "tool"
        if self.is_generation:
            return "llm"
        if operation == "retrieval":
            return "retrieval"
        if operation == "embeddings":
            return "embedding"
        if operation in _AGENT_OPERATIONS:
            return "agent"
        return None
