"""Golden datasets: human-labelled traces per judge, in ``datasets/golden/<judge>.jsonl``.

One line per trace (deduplicated by trace id, the newest label winning), sorted by trace id with
sorted keys, so a diff shows exactly which labels changed. ``export`` merges the labels in SQL
into the file; ``import`` loads labels made elsewhere (JSONL in this format, or CSV; the public
formats are mapped in ``golden_public.py``). Starter sets from other sources sit beside it as
``<judge>.<source>.jsonl`` (one licence per file); ``read_golden`` reads all of a judge's files.

A label on a session review item becomes an example whose trace is the whole session as one
Trace (``trace_id`` ``session:<digest>``, the conversation in ``messages``, every turn's steps;
``sessions.conversation.session_trace``): calibration runs a session judge on exactly what the
reviewer saw. Its few-shot text shows the conversation rather than one question and answer.
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from evaluator.models import (
    ReviewLabel,
    Trace,
    Verdict,
    describe_validation_error,
    is_session_subject,
    stable_id,
)
from evaluator.resources import resource

GOLDEN_DIR = Path("datasets/golden")


def default_golden_dir() -> Path:
    """The repository's datasets/golden in a source checkout, else the copy in the wheel."""
    return resource("datasets/golden", "golden")


class GoldenExample(BaseModel):
    trace: Trace
    verdict: Verdict
    field_scores: dict[str, float | str | bool] = Field(default_factory=dict)
    reviewer: str
    labelled_at: datetime
    note: str = ""
    prompt_version: str | None = None
    judge_version: str | None = Field(
        default=None, description="The judge version that flagged the trace for review."
    )
    inclusion_probability: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="P(the sampler sent the trace to this judge), from the ledger at export; "
        "calibration weights the example by its inverse. None (hand-written): 1.",
    )
    source: str | None = Field(
        default=None,
        max_length=256,
        description="Where the label comes from, '<dataset>#<row id>' (e.g. halueval_qa#"
        "halueval-qa-183); None: the review queue. The licence of public rows is in "
        "trace.metadata['licence'].",
    )

    @property
    def is_session(self) -> bool:
        """The example is a whole session (labelled on a session review item)."""
        return is_session_subject(self.trace.trace_id) or (
            self.trace.metadata.get("level") == "session"
        )

    @property
    def dataset(self) -> str:
        """The source without the row: what calibration breaks agreement down by."""
        return self.source.partition("#")[0] if self.source else "review"

    @classmethod
    def from_label(cls, label: ReviewLabel, inclusion: float | None = None) -> GoldenExample:
        return cls(
            inclusion_probability=inclusion,
            trace=label.trace,
            verdict=label.verdict,
            field_scores=label.field_scores,
            reviewer=label.reviewer,
            labelled_at=label.labelled_at,
            note=label.note,
            prompt_version=label.trace.prompt_version,
            judge_version=label.evaluator_version,
            # Labels from the review queue need no provenance; imported ones keep theirs.
            source=None if label.source == "review" else label.source,
        )

    def to_label(self, judge: str, source: str) -> ReviewLabel:
        """The label for the store; ``source`` is used when the example carries none."""
        return ReviewLabel(
            id=stable_id(self.trace.trace_id, judge, "golden"),
            trace_id=self.trace.trace_id,
            evaluator=judge,
            evaluator_version=self.judge_version,
            reviewer=self.reviewer,
            verdict=self.verdict,
            field_scores=self.field_scores,
            note=self.note,
            labelled_at=self.labelled_at,
            source=self.source or source,
            trace=self.trace,
        )


class DatasetError(ValueError):
    """A dataset file that cannot be read; the message names the file and line."""


def golden_path(judge: str, directory: Path = GOLDEN_DIR) -> Path:
    return directory / f"{judge}.jsonl"


def golden_files(judge: str, directory: Path = GOLDEN_DIR) -> list[Path]:
    """The judge's own file (``<judge>.jsonl``, where ``export`` writes) and every starter set
    beside it (``<judge>.<source>.jsonl``): what ``calibrate`` and ``gate`` read by default."""
    own = golden_path(judge, directory)
    others = sorted(directory.glob(f"{judge}.*.jsonl")) if directory.is_dir() else []
    return ([own] if own.exists() else []) + others


def read_golden(judge: str, directory: Path = GOLDEN_DIR) -> list[GoldenExample]:
    """Every example of every golden file of the judge, one per trace id."""
    return merge(*(read_examples(path) for path in golden_files(judge, directory)))


def read_examples(path: Path) -> list[GoldenExample]:
    if not path.exists():
        return []
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            examples.append(GoldenExample.model_validate_json(line))
        except ValidationError as exc:
            raise DatasetError(f"{path}:{number}: {describe_validation_error(exc)}") from None
    return examples


def merge(*sources: Iterable[GoldenExample]) -> list[GoldenExample]:
    """One example per trace id, the newest label winning; sorted by trace id."""
    by_trace: dict[str, GoldenExample] = {}
    for example in (e for source in sources for e in source):
        kept = by_trace.get(example.trace.trace_id)
        if kept is None or example.labelled_at >= kept.labelled_at:
            by_trace[example.trace.trace_id] = example
    return [by_trace[k] for k in sorted(by_trace)]


def write_examples(path: Path, examples: Iterable[GoldenExample]) -> int:
    lines = [
        json.dumps(e.model_dump(mode="json", exclude_none=True), sort_keys=True, ensure_ascii=False)
        for e in examples
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def export(
    labels: Iterable[ReviewLabel], path: Path, inclusion: Mapping[str, float] | None = None
) -> tuple[int, int]:
    """Merge labels into the dataset file; returns (examples in the file, labels merged).
    ``inclusion``: trace id -> the trace's inclusion probability for this judge."""
    inclusion = inclusion or {}
    new = [GoldenExample.from_label(label, inclusion.get(label.trace_id)) for label in labels]
    return write_examples(path, merge(read_examples(path), new)), len(new)


def _csv_value(raw: str) -> float | str | bool:
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return float(raw)
    except ValueError:
        return raw


def read_csv(path: Path) -> list[GoldenExample]:
    """CSV with columns trace_id, input, output, verdict and optionally contexts (a JSON list),
    reference, reviewer, note, labelled_at, and ``score:<field>`` columns for field scores."""
    examples = []
    with path.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle), 2):
            try:
                trace: dict[str, Any] = {
                    "trace_id": row["trace_id"],
                    "input": row.get("input", ""),
                    "output": row["output"],
                    "contexts": json.loads(row["contexts"]) if row.get("contexts") else [],
                }
                if row.get("reference"):
                    trace["reference"] = row["reference"]
                examples.append(
                    GoldenExample(
                        trace=Trace.model_validate(trace),
                        verdict=Verdict(row["verdict"].strip().lower()),
                        field_scores={
                            k.removeprefix("score:"): _csv_value(v)
                            for k, v in row.items()
                            if k.startswith("score:") and v not in (None, "")
                        },
                        reviewer=row.get("reviewer") or f"import:{path.name}",
                        labelled_at=row.get("labelled_at") or datetime.now(UTC),
                        note=row.get("note", ""),
                    )
                )
            except (KeyError, ValueError, ValidationError) as exc:
                reason = describe_validation_error(exc) if isinstance(exc, ValidationError) else exc
                raise DatasetError(f"{path}:{number}: {reason}") from None
    return examples


def read_any(path: Path) -> list[GoldenExample]:
    if path.suffix.lower() == ".csv":
        return read_csv(path)
    return read_examples(path)


# -- few-shot examples for judges ----------------------------------------------------------------


def disagreements_path(judge: str, directory: Path) -> Path:
    return directory / f"{judge}.disagreements.json"


def record_disagreements(judge: str, version: str, trace_ids: list[str], directory: Path) -> Path:
    """Remember where the judge disagreed with the humans (``calibrate`` writes this)."""
    path = disagreements_path(judge, directory)
    path.write_text(
        json.dumps({"judge_version": version, "trace_ids": sorted(trace_ids)}, indent=2)
    )
    return path


@functools.lru_cache(maxsize=64)
def _cached_examples(path: Path, mtime_ns: int) -> tuple[GoldenExample, ...]:
    return tuple(read_examples(path))


def few_shot_examples(judge: str, k: int, exclude_trace: str, directory: Path) -> list[str]:
    """``k`` labelled examples for a judge's prompt: the recorded disagreements first, then the
    rest alternating human pass and fail; never the trace being judged."""
    path = golden_path(judge, directory)
    if k <= 0 or not path.exists():
        return []
    examples = [
        e
        for e in _cached_examples(path, path.stat().st_mtime_ns)
        if e.trace.trace_id != exclude_trace
    ]
    recorded = disagreements_path(judge, directory)
    wanted = set(json.loads(recorded.read_text())["trace_ids"]) if recorded.exists() else set()
    first = [e for e in examples if e.trace.trace_id in wanted]
    passes = [e for e in examples if e.trace.trace_id not in wanted and e.verdict is Verdict.PASS]
    fails = [e for e in examples if e.trace.trace_id not in wanted and e.verdict is Verdict.FAIL]
    alternating = [e for pair in zip(fails, passes, strict=False) for e in pair]
    alternating += fails[len(passes) :] + passes[len(fails) :]
    return [_example_text(e) for e in (first + alternating)[:k]]


# A few-shot session example shows at most this many messages (its first and last ones) and
# this many characters of each: an example must not crowd out the conversation being judged.
FEW_SHOT_MESSAGES = 12
FEW_SHOT_MESSAGE_CHARS = 500


def _conversation_lines(trace: Trace) -> list[str]:
    messages = trace.messages or []
    head = FEW_SHOT_MESSAGES // 2
    kept = list(enumerate(messages))
    if len(kept) > FEW_SHOT_MESSAGES:
        kept = kept[:head] + kept[len(kept) - (FEW_SHOT_MESSAGES - head) :]
    lines, previous = ["Conversation:"], -1
    for index, message in kept:
        if index != previous + 1:
            lines.append(f"  ... {index - previous - 1} messages left out ...")
        previous = index
        text = message.text[:FEW_SHOT_MESSAGE_CHARS]
        calls = ", ".join(call.function.name for call in message.tool_calls or ())
        lines.append(f"  {message.role}: {text}" + (f" [calls {calls}]" if calls else ""))
    return lines


def _example_text(example: GoldenExample) -> str:
    trace = example.trace
    if example.is_session and trace.messages:
        lines = _conversation_lines(trace)
    else:
        lines = [f"Question: {trace.input}", f"Answer: {trace.output}"]
    lines += [f"Context: {context}" for context in trace.contexts]
    if trace.reference:
        lines.append(f"Reference: {trace.reference}")
    note = f" ({example.note})" if example.note else ""
    lines.append(f"Human verdict: {example.verdict.value}{note}")
    return "\n".join(lines)
