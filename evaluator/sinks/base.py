"""What a sink is: the protocol the relay delivers through, and its one retryable error.
Sinks (langfuse, otel) and the outbox import this; nothing here imports them."""

from __future__ import annotations

from typing import Any, Protocol

from evaluator.models import Score, Trace


class SinkUnavailable(Exception):
    """The sink could not take the batch now (down, 5xx, 429, timeout): retry later."""


class Sink(Protocol):
    """An external destination for scores. ``payload`` runs in the workers (no I/O);
    ``deliver`` runs in the relay."""

    name: str

    def payload(self, score: Score, trace: Trace) -> dict[str, Any] | str:
        """What to send for this score (JSON-ready, without the time), or a short reason why
        this sink does not take it."""

    def deliver(self, payloads: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Send the payloads (keyed by outbox row id; the relay adds ``timestamp``, the score's
        ISO time). Returns the rows the sink rejected for good, with the reason; every other row
        counts as delivered. Raises SinkUnavailable."""

    def close(self) -> None:
        """Release connections (the relay calls it when it stops)."""
