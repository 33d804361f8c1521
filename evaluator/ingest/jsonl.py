"""JSONL files of traces: one JSON object per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evaluator.ingest.otel import traces_from_otlp
from evaluator.models import Trace


def read_lines(path: Path) -> Iterator[str]:
    """Non-blank lines of a JSONL file, unparsed (for raw replay)."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield line.rstrip("\n")


def read_traces(path: Path) -> Iterator[Trace]:
    """Validated traces of a JSONL file; the first invalid line raises with its line number."""
    for number, line in enumerate(read_lines(path), start=1):
        try:
            yield Trace.model_validate_json(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from exc


def read_otlp(path: Path) -> list[Trace]:
    """Traces from an OTLP/JSON export: one document, or JSONL with one export per line."""
    content = path.read_text(encoding="utf-8")
    try:
        documents: list[dict[str, Any]] = [json.loads(content)]
    except json.JSONDecodeError:
        documents = [json.loads(line) for line in content.splitlines() if line.strip()]
    return [trace for doc in documents for trace in traces_from_otlp(doc)]
