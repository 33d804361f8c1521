"""JSONL files of traces: one JSON object per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evaluator.ingest.otel import traces_from_otlp
from evaluator.models import Trace, oversized, parse_published_trace


def read_lines(path: Path, max_bytes: int | None = None) -> Iterator[bytes]:
    """Non-blank lines of a JSONL file as bytes, unparsed (for raw replay; the sampler judges
    them). A line over ``max_bytes``, or one that is not UTF-8 (a binary file, a wrong encoding),
    raises ValueError with its line number and the reason: it would only be dead-lettered, after
    sitting whole in Redis twice, and the dead letter could not say which file and line."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            if max_bytes is not None and len(line) > max_bytes:
                raise ValueError(f"{path}:{number}: {oversized(len(line), max_bytes)}")
            _check_utf8(path, number, line)
            yield line


def read_traces(path: Path, max_bytes: int) -> Iterator[Trace]:
    """Validated traces of a JSONL file, by the sampler's rules; the first invalid line raises
    ValueError with its line number and the reason the sampler would give."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            _check_utf8(path, number, line)
            outcome = parse_published_trace(line, max_bytes)
            if isinstance(outcome, str):
                raise ValueError(f"{path}:{number}: {outcome}")
            yield outcome


def read_otlp(path: Path) -> list[Trace]:
    """Traces from an OTLP/JSON export: one document, or JSONL with one export per line. Bytes
    that are not UTF-8, or text that is not JSON, raise ValueError naming the file and line."""
    content = path.read_bytes()
    _check_utf8(path, 1, content)
    text = content.decode("utf-8")
    try:
        documents: list[dict[str, Any]] = [json.loads(text)]
    except json.JSONDecodeError as whole:
        documents = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                documents.append(json.loads(line))
            except json.JSONDecodeError as exc:
                # The first line not JSON either: one document with an error (say where in it).
                failed = exc if documents else whole
                at = number if documents else whole.lineno
                raise ValueError(
                    f"{path}:{at}: not JSON ({failed.msg} at column {failed.colno})"
                ) from None
    return [trace for doc in documents for trace in traces_from_otlp(doc)]


def _check_utf8(path: Path, first_line: int, content: bytes) -> None:
    """ValueError ``path:line: not valid UTF-8 (byte 0xNN at column C)`` for the first byte that
    is not UTF-8 in ``content`` (which starts at line ``first_line``); columns count bytes."""
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + content.count(b"\n", 0, exc.start)
        column = exc.start - (content.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = content[exc.start : exc.start + 1].hex()
        raise ValueError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{byte} at column {column})"
        ) from None
