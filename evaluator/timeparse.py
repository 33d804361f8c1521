"""Time windows given on the command line: ``--since 7d``, ``--since 2026-11-01T00:00Z``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """A duration back from now (``90m``, ``24h``, ``7d``, ``2w``) or an ISO date/time (UTC when
    no offset is given)."""
    text = value.strip()
    if match := _DURATION.match(text):
        amount, unit = float(match.group(1)), match.group(2)
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"cannot read {value!r} as a time: use a duration like 24h or 7d, "
            "or an ISO date such as 2026-11-01 or 2026-11-01T08:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
