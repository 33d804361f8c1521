"""Evalfleet: an asynchronous evaluation worker fleet for LLM traces."""

from evaluator.ingest import publish, publish_many
from evaluator.models import ReviewItem, SampleDecision, Score, Trace

__all__ = ["ReviewItem", "SampleDecision", "Score", "Trace", "publish", "publish_many"]
__version__ = "0.1.0"
