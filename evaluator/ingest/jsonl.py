"""JSONL files of traces: one JSON object per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evaluator.ingest.otel import traces_from_otlp
from evaluator.models import Trace, oversized, parse_trace


def read_lines(path: Path, max_bytes: int | None = None) -> Iterator[bytes]:
    """Non-blank lines of a JSONL file as bytes, unparsed (for raw replay; the sampler judges
    them). A line over ``max_bytes`` raises ValueError with its line number and the sampler's
    reason: it would only be dead-lettered, after sitting whole in Redis twice."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            if max_bytes is not None and len(line) > max_bytes:
                raise ValueError(f"{path}:{number}: {oversized(len(line), max_bytes)}")
            yield line


def read_traces(path: Path, max_bytes: int) -> Iterator[Trace]:
    """Validated traces of a JSONL file, by the sampler's rules; the first invalid line raises
    ValueError with its line number and the reason the sampler would give."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            outcome = parse_trace(line, max_bytes)
            if isinstance(outcome, str):
                raise ValueError(f"{path}:{number}: {outcome}")
            yield outcome


def read_otlp(path: Path) -> list[Trace]:
    """Traces from an OTLP/JSON export: one document, or JSONL with one export per line."""
    content = path.read_text(encoding="utf-8")
    try:
        documents: list[dict[str, Any]] = [json.loads(content)]
    except json.JSONDecodeError:
        documents = [json.loads(line) for line in content.splitlines() if line.strip()]
    return [trace for doc in documents for trace in traces_from_otlp(doc)]
