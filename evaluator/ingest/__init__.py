"""Getting traces onto the stream: ``publish`` for apps, adapters for OTel spans and JSONL."""

from evaluator.ingest.jsonl import read_lines, read_otlp, read_traces
from evaluator.ingest.otel import traces_from_otlp
from evaluator.ingest.publish import publish, publish_many

__all__ = ["publish", "publish_many", "read_lines", "read_otlp", "read_traces", "traces_from_otlp"]
