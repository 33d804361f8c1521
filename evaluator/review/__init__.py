"""Human review: routing failing traces (``routing``), the claim/lease/label queue (``queue``),
the reviewers' HTTP API and web page (``api``) and terminal (``terminal``)."""

from evaluator.review.routing import (
    CRITICAL_PRIORITY,
    HIGH_SEVERITY_PRIORITY,
    THRESHOLD_PRIORITY,
    ReviewRouter,
)

__all__ = ["CRITICAL_PRIORITY", "HIGH_SEVERITY_PRIORITY", "THRESHOLD_PRIORITY", "ReviewRouter"]
