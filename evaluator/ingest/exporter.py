"""``EvalfleetSpanExporter``: an OpenTelemetry SDK span exporter for apps without a Collector.
It assembles and publishes traces exactly like ``evalfleet otlp-receiver`` (same rules, same
Redis keys, so the two can be mixed).
"""

from __future__ import annotations

import threading
from typing import Any

from evaluator.ingest.assembly import SpanAssembler
from evaluator.ingest.spans import Span
from evaluator.settings import get_settings


def span_from_sdk(span: Any) -> Span | None:
    """Our Span from an SDK ``ReadableSpan`` (None when it has no valid context)."""
    context = span.context
    if context is None or not context.is_valid:
        return None
    status = span.status
    error = None
    if status is not None and status.status_code.name == "ERROR":
        error = status.description or "span status ERROR"
    return Span(
        trace_id=f"{context.trace_id:032x}",
        span_id=f"{context.span_id:016x}",
        parent_id=f"{span.parent.span_id:016x}" if span.parent is not None else None,
        name=span.name,
        start_ns=span.start_time or 0,
        end_ns=span.end_time or 0,
        attributes=dict(span.attributes or {}),
        resource=dict(span.resource.attributes) if span.resource is not None else {},
        events=[(e.name, dict(e.attributes or {})) for e in span.events],
        error=error,
    )


class EvalfleetSpanExporter:
    """An OpenTelemetry ``SpanExporter`` that publishes completed GenAI traces to Evalfleet.

    ``provider.add_span_processor(BatchSpanProcessor(EvalfleetSpanExporter(redis_client)))``.
    Spans are held in Redis until their trace completes (the same rules and keys as the OTLP
    receiver, so the two can be mixed); a background thread publishes completed traces. Traces
    still open at shutdown stay in Redis and are published by the next exporter or receiver.
    """

    def __init__(self, client: Any, settings: Any = None, flush_interval_s: float = 0.2) -> None:
        self.assembler = SpanAssembler(client, settings or get_settings())
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self.assembler.run_flusher,
            args=(self._stop, flush_interval_s),
            name="evalfleet-exporter",
            daemon=True,
        )
        self._flusher.start()

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        converted = [s for s in (span_from_sdk(span) for span in spans) if s is not None]
        try:
            self.assembler.add(converted)
        except Exception:  # Redis down: the SDK's processor logs and drops; we say so
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self.assembler.flush()
        return True

    def shutdown(self) -> None:
        self._stop.set()
        self._flusher.join(5)
        self.assembler.flush()
