"""What one judge evaluation came to on the wire: its outcome (output or error, deferral,
tokens, attempts), shared by the transport (``client``) and the evaluators that make their
own requests (RAGAS), which read it back through ``POLICED``."""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass

from pydantic import BaseModel

from evaluator.judging.providers import JSON_SCHEMA


@dataclass
class CallOutcome:
    output: BaseModel | None = None
    error: str | None = None
    deferred: bool = False  # transient: worth trying again later
    defer_s: float = 0.0  # how long to wait first; 0 with DEFER_ATTEMPTS_USED_UP: caller's pick
    defer_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # of input_tokens, read from the provider's prompt cache
    latency_ms: float = 0.0
    attempts: int = 0
    mode: str = JSON_SCHEMA


@dataclass
class Policed:
    """The evaluation that requests made through ``policed_http_client`` belong to."""

    outcome: CallOutcome
    slot: asyncio.Semaphore | None


POLICED: ContextVar[Policed | None] = ContextVar("policed", default=None)


class PolicyStopped(Exception):
    """A request the retry policy gave up on: ``outcome`` says whether deferred, or why it
    failed."""

    def __init__(self, outcome: CallOutcome) -> None:
        super().__init__(outcome.error or outcome.defer_reason or "judge request stopped")
        self.outcome = outcome


def stopped_by_policy(exc: BaseException) -> PolicyStopped | None:
    """The ``PolicyStopped`` behind an SDK's exception, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PolicyStopped):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
