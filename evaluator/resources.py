"""Data files shipped with the fleet (judge files, golden sets, sample traces): the repository's
copy in a source checkout, else the one packaged into the wheel (``evaluator/_data``, see
pyproject's force-include)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent


def resource(in_checkout: str, packaged: str) -> Path:
    """``CHECKOUT / in_checkout`` when it exists, else ``evaluator/_data / packaged``."""
    checkout = CHECKOUT / in_checkout
    return checkout if checkout.exists() else PACKAGE / "_data" / packaged
