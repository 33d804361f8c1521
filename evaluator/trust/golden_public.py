"""Human-labelled public datasets as golden examples: the mapping behind ``evalfleet dataset
import --format`` and ``datasets/golden/make_public_golden.py``.

Each public format maps a record to a :class:`GoldenExample` for the judge it is imported for,
keeping its provenance (``source``: ``<dataset>#<row id>``; ``trace.metadata``: the row's origin
and licence). Two shapes are read per format: the normalised one of the shared public sets
(``{"id", "question", "contexts", "response", "label", "source", "meta"}``, label 1 = faithful /
correct / preferred) and, where it is unambiguous, the upstream file's own rows.

- ``halueval-qa`` (groundedness): question → input, knowledge → contexts, answer → output; the
  HotpotQA right answer passes, the generated hallucinated one fails (an upstream row gives both).
- ``halueval-general`` (correctness): Alpaca query → input, ChatGPT answer → output; the
  annotators' "no hallucination" passes. No reference.
- ``truthfulqa-judge`` (correctness): question → input, answer → output; the human "true" passes.
  No reference (``with_sibling_references`` adds one for the starter set).
- ``llmbar-pairwise`` (a pairwise judge): instruction → input, output 1 → output, output 2 →
  ``metadata.response_b``; pass when ``output`` is the preferred one; both orders.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from evaluator.models import Trace, Verdict, describe_validation_error
from evaluator.trust.golden import DatasetError, GoldenExample, read_csv


@dataclass(frozen=True)
class PublicFormat:
    name: str  # the --format value
    dataset: str  # the source prefix: "<dataset>#<row id>"
    judge: str  # the shipped judge whose question the label answers
    licence: str
    attribution: str
    # When the labels were published (the rows carry no labelling time): stable files.
    published: datetime


HALUEVAL_QA = PublicFormat(
    "halueval-qa",
    "halueval_qa",
    "groundedness",
    "HaluEval: MIT; HotpotQA text (question, knowledge, right answer): CC BY-SA 4.0",
    "HaluEval (Li et al., EMNLP 2023), RUCAIBox/HaluEval data/qa_data.json; HotpotQA (Yang et "
    "al., 2018), Wikipedia",
    datetime(2023, 5, 1, tzinfo=UTC),
)
HALUEVAL_GENERAL = PublicFormat(
    "halueval-general",
    "halueval_general",
    "correctness",
    "MIT",
    "HaluEval (Li et al., EMNLP 2023), RUCAIBox/HaluEval data/general_data.json",
    datetime(2023, 5, 1, tzinfo=UTC),
)
TRUTHFULQA_JUDGE = PublicFormat(
    "truthfulqa-judge",
    "truthfulqa_judge",
    "correctness",
    "Apache-2.0",
    "TruthfulQA (Lin, Hilton and Evans, ACL 2022), sylinrl/TruthfulQA data/finetune_truth.jsonl",
    datetime(2021, 9, 1, tzinfo=UTC),
)
LLMBAR_PAIRWISE = PublicFormat(
    "llmbar-pairwise",
    "llmbar",
    "pairwise",
    "LLMBar: MIT; MT-Bench human judgments: CC BY 4.0",
    "LLMBar (Zeng et al., ICLR 2024), princeton-nlp/LLMBar Dataset/ (with the processed MT-Bench, "
    "FairEval and LLMEval² pairs)",
    datetime(2023, 10, 1, tzinfo=UTC),
)
PUBLIC_FORMATS = {
    f.name: f for f in (HALUEVAL_QA, HALUEVAL_GENERAL, TRUTHFULQA_JUDGE, LLMBAR_PAIRWISE)
}
FORMATS = ("golden", "csv", *PUBLIC_FORMATS)

# Upstream TruthfulQA fine-tuning rows: {"prompt": "Q: ...\nA: ...\nTrue:", "completion": " yes"}
_TRUTHFULQA_PROMPT = re.compile(r"\AQ: (?P<question>.*?)\nA: ?(?P<answer>.*)\nTrue:\s*\Z", re.S)
_NORMALISED = {"id", "question", "response", "label"}
SWAPPED = "~swapped"  # trace id suffix of a pair shown in the other order


class RecordError(ValueError):
    """One record that does not fit its format (the caller adds file and line)."""


# -- reading -------------------------------------------------------------------------------------


def read_labels(
    path: Path, fmt: str | None = None, judge: str | None = None
) -> list[GoldenExample]:
    """The golden examples in ``path`` read as ``fmt`` (None: detected from the file: CSV by its
    suffix, otherwise from the first record's shape). ``judge`` names the field score the
    public labels fill (default: the format's own judge)."""
    if fmt is not None and fmt not in FORMATS:
        raise DatasetError(f"{path}: unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if fmt == "csv" or (fmt is None and path.suffix.lower() == ".csv"):
        return read_csv(path)
    records = list(_records(path))
    if fmt is None:
        if not records:
            return []
        where, first = records[0]
        try:
            fmt = detect_format(first)
        except RecordError as exc:
            raise DatasetError(f"{path}:{where}: {exc}") from None
    if fmt == "golden":
        return _golden(path, records)
    public = PUBLIC_FORMATS[fmt]
    examples = []
    for where, record in records:
        try:
            examples.extend(map_record(public, record, judge or public.judge, where))
        except RecordError as exc:
            raise DatasetError(f"{path}:{where}: {public.name} record: {exc}") from None
        except ValidationError as exc:
            reason = describe_validation_error(exc)
            raise DatasetError(f"{path}:{where}: {public.name} record: {reason}") from None
    return examples


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) per record: JSON lines, or one JSON array (LLMBar's dataset.json)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise DatasetError(f"{path}: item {index}: expected a JSON object")
            yield f"item {index}", item
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{number}: not valid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object per line")
        yield str(number), record


def _golden(path: Path, records: list[tuple[str, dict[str, Any]]]) -> list[GoldenExample]:
    examples = []
    for where, record in records:
        try:
            examples.append(GoldenExample.model_validate(record))
        except ValidationError as exc:
            raise DatasetError(f"{path}:{where}: {describe_validation_error(exc)}") from None
    return examples


def detect_format(record: dict[str, Any]) -> str:
    """The format of one record, from its keys (and, for the normalised shape, its id and meta)."""
    keys = set(record)
    if {"trace", "verdict"} <= keys:
        return "golden"
    if keys >= _NORMALISED:
        raw_meta = record.get("meta")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        identifier = str(record["id"])
        if "response_b" in meta or identifier.startswith("llmbar-"):
            return LLMBAR_PAIRWISE.name
        if "right_answer" in meta or identifier.startswith("halueval-qa-"):
            return HALUEVAL_QA.name
        if "hallucination_spans" in meta or identifier.startswith("halueval-general-"):
            return HALUEVAL_GENERAL.name
        if identifier.startswith("truthfulqa-") or "truthfulqa" in str(record.get("source", "")):
            return TRUTHFULQA_JUDGE.name
    if {"knowledge", "question", "right_answer", "hallucinated_answer"} <= keys:
        return HALUEVAL_QA.name
    if {"prompt", "completion"} <= keys:
        return TRUTHFULQA_JUDGE.name
    if {"input", "output_1", "output_2", "label"} <= keys:
        return LLMBAR_PAIRWISE.name
    raise RecordError(
        f"cannot tell the format from the keys {sorted(keys)}; pass --format ({', '.join(FORMATS)})"
    )


# -- mapping -------------------------------------------------------------------------------------


def map_record(
    public: PublicFormat, record: dict[str, Any], judge: str, where: str = "?"
) -> list[GoldenExample]:
    """The examples one record gives (two for an upstream HaluEval-QA row or an LLMBar pair)."""
    mapper: Callable[[PublicFormat, dict[str, Any], str, str], list[GoldenExample]] = {
        HALUEVAL_QA.name: _halueval_qa,
        HALUEVAL_GENERAL.name: _halueval_general,
        TRUTHFULQA_JUDGE.name: _truthfulqa,
        LLMBAR_PAIRWISE.name: _llmbar,
    }[public.name]
    return mapper(public, record, judge, where)


def _text(record: dict[str, Any], key: str, empty_ok: bool = False) -> str:
    if key not in record:
        raise RecordError(f"missing {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise RecordError(f"{key!r} must be a string, got {type(value).__name__}")
    if not empty_ok and not value.strip():
        raise RecordError(f"{key!r} is empty")
    return value


def _binary_label(record: dict[str, Any]) -> Verdict:
    label = record.get("label")
    if label not in (0, 1) or isinstance(label, bool):
        raise RecordError(f"'label' must be 0 or 1, got {label!r}")
    return Verdict.PASS if label == 1 else Verdict.FAIL


def _contexts(record: dict[str, Any]) -> list[str]:
    contexts = record.get("contexts", [])
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise RecordError("'contexts' must be a list of strings")
    return contexts


def _meta(record: dict[str, Any]) -> dict[str, Any]:
    meta = record.get("meta", {})
    if not isinstance(meta, dict):
        raise RecordError("'meta' must be an object")
    return meta


def _row_id(public: PublicFormat, record: dict[str, Any], where: str) -> str:
    """The record's id, else one from the row's content (upstream files have no stable ids)."""
    identifier = record.get("id")
    if isinstance(identifier, str | int) and str(identifier).strip():
        return re.sub(r"\s+", "_", str(identifier).strip())
    digest = hashlib.sha1(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    return f"{public.dataset}-{digest}"


def _example(
    public: PublicFormat,
    row_id: str,
    judge: str,
    *,
    question: str,
    answer: str,
    verdict: Verdict,
    origin: str,
    contexts: Sequence[str] = (),
    reference: str | None = None,
    note: str = "",
    extra: dict[str, Any] | None = None,
) -> GoldenExample:
    metadata = {"dataset": public.dataset, "origin": origin, "licence": public.licence}
    trace = Trace(
        trace_id=row_id,
        input=question,
        output=answer,
        contexts=list(contexts),
        retrieval=bool(contexts),
        reference=reference,
        metadata={**metadata, **(extra or {})},
    )
    return GoldenExample(
        trace=trace,
        verdict=verdict,
        # The humans' numeric view in the judge's own score name: Spearman and the judge's AUC.
        field_scores={judge: 1.0 if verdict is Verdict.PASS else 0.0},
        reviewer=f"public:{public.dataset}",
        labelled_at=public.published,
        note=note,
        source=f"{public.dataset}#{row_id}",
    )


def _origin(record: dict[str, Any], public: PublicFormat) -> str:
    source = record.get("source")
    return source if isinstance(source, str) and source else public.attribution


def _halueval_qa(
    public: PublicFormat, record: dict[str, Any], judge: str, where: str
) -> list[GoldenExample]:
    if "knowledge" in record:  # upstream: one row holds the right and the hallucinated answer
        row_id = _row_id(public, record, where)
        question, knowledge = _text(record, "question"), _text(record, "knowledge")
        origin = _origin(record, public)
        return [
            _example(
                public, f"{row_id}-{suffix}", judge, question=question, contexts=[knowledge],
                answer=_text(record, key), verdict=verdict, origin=origin, note=note,
            )
            for suffix, key, verdict, note in (
                ("right", "right_answer", Verdict.PASS, "HotpotQA right answer"),
                ("hallucinated", "hallucinated_answer", Verdict.FAIL,
                 "generated hallucinated answer"),
            )
        ]  # fmt: skip
    verdict = _binary_label(record)
    contexts = _contexts(record)
    if not contexts:
        raise RecordError("'contexts' is empty: groundedness needs the knowledge")
    return [
        _example(
            public,
            _row_id(public, record, where),
            judge,
            question=_text(record, "question"),
            answer=_text(record, "response"),
            contexts=contexts,
            verdict=verdict,
            origin=_origin(record, public),
            note="HotpotQA right answer"
            if verdict is Verdict.PASS
            else "generated hallucinated answer",
        )
    ]


def _halueval_general(
    public: PublicFormat, record: dict[str, Any], judge: str, where: str
) -> list[GoldenExample]:
    verdict = _binary_label(record)
    spans = _meta(record).get("hallucination_spans") or []
    shown = "; ".join(str(s) for s in spans)
    note = (
        "annotators: no hallucination" if verdict is Verdict.PASS else "annotators: hallucination"
    )
    if shown:
        note += f" ({shown[:200]}{'…' if len(shown) > 200 else ''})"
    return [
        _example(
            public,
            _row_id(public, record, where),
            judge,
            question=_text(record, "question"),
            answer=_text(record, "response"),
            contexts=_contexts(record),
            verdict=verdict,
            origin=_origin(record, public),
            note=note,
        )
    ]


def _truthfulqa(
    public: PublicFormat, record: dict[str, Any], judge: str, where: str
) -> list[GoldenExample]:
    if "prompt" in record:  # upstream GPT-judge fine-tuning row
        match = _TRUTHFULQA_PROMPT.match(_text(record, "prompt"))
        completion = _text(record, "completion").strip().lower()
        if match is None:
            raise RecordError("'prompt' is not 'Q: ...\\nA: ...\\nTrue:'")
        if completion not in ("yes", "no"):
            raise RecordError(f"'completion' must be yes or no, got {completion!r}")
        question, answer = match["question"], match["answer"]
        verdict = Verdict.PASS if completion == "yes" else Verdict.FAIL
    else:
        question, verdict = _text(record, "question"), _binary_label(record)
        answer = _text(record, "response", empty_ok=True)  # 3 source rows are empty: kept
    return [
        _example(
            public,
            _row_id(public, record, where),
            judge,
            question=question,
            answer=answer,
            verdict=verdict,
            origin=_origin(record, public),
            note="human label: true" if verdict is Verdict.PASS else "human label: false",
        )
    ]


def _llmbar(
    public: PublicFormat, record: dict[str, Any], judge: str, where: str
) -> list[GoldenExample]:
    """Both orders of a pair: position bias shows as a judge preferring the first answer."""
    if "output_1" in record:  # upstream dataset.json item
        question = _text(record, "input")
        first, second = _text(record, "output_1", True), _text(record, "output_2", True)
        preferred = record.get("label")
        subset = ""
    else:
        meta = _meta(record)
        question = _text(record, "question")
        first, second = _text(record, "response", True), _text(meta, "response_b", True)
        preferred = meta.get("gold_preferred")
        subset = str(meta.get("subset", ""))
        if (preferred == 1) != (_binary_label(record) is Verdict.PASS):
            raise RecordError(f"'label' {record['label']} contradicts gold_preferred {preferred}")
    if preferred not in (1, 2) or isinstance(preferred, bool):
        raise RecordError(f"the preferred output must be 1 or 2, got {preferred!r}")
    row_id = _row_id(public, record, where)
    origin = _origin(record, public)
    examples = []
    for order, (shown, other, wins) in enumerate(
        ((first, second, preferred == 1), (second, first, preferred == 2))
    ):
        trace_id = row_id if order == 0 else row_id + SWAPPED
        examples.append(
            _example(
                public,
                trace_id,
                judge,
                question=question,
                answer=shown,
                verdict=Verdict.PASS if wins else Verdict.FAIL,
                origin=origin,
                note=f"{subset + ': ' if subset else ''}"
                f"{'output' if wins else 'response_b'} is the preferred one",
                extra={"response_b": other, "pair": row_id, "order": "ba" if order else "ab"},
            )
        )
    return examples


# -- starter sets --------------------------------------------------------------------------------


def _non_answer(text: str) -> bool:
    return not text.strip() or "no comment" in text.lower()


def with_sibling_references(examples: Sequence[GoldenExample]) -> list[GoldenExample]:
    """TruthfulQA examples given a reference: another answer to the same question that the humans
    labelled true and that says something (not "I have no comment"). Examples without such a
    sibling, and non-answers themselves (truthful, but never *correct* against a reference), are
    dropped: the correctness judge needs a reference and compares facts."""
    true_answers: dict[str, list[GoldenExample]] = {}
    for e in examples:
        if e.verdict is Verdict.PASS and not _non_answer(e.trace.output):
            true_answers.setdefault(e.trace.input, []).append(e)
    kept = []
    for e in examples:
        siblings = sorted(
            (
                s
                for s in true_answers.get(e.trace.input, [])
                if s.trace.trace_id != e.trace.trace_id
            ),
            key=lambda s: s.trace.trace_id,
        )
        if _non_answer(e.trace.output) or not siblings:
            continue
        trace = e.trace.model_copy(
            update={
                "reference": siblings[0].trace.output,
                "metadata": {**e.trace.metadata, "reference_from": siblings[0].source},
            }
        )
        kept.append(e.model_copy(update={"trace": trace}))
    return kept


def balanced(examples: Sequence[GoldenExample], per_class: int, seed: str) -> list[GoldenExample]:
    """``per_class`` pass and ``per_class`` fail examples, chosen by the sha1 of seed + trace id
    (stable across Python versions and machines), sorted by trace id."""

    def order(e: GoldenExample) -> str:
        return hashlib.sha1(f"{seed}\x1f{e.trace.trace_id}".encode()).hexdigest()

    chosen = []
    for verdict in (Verdict.PASS, Verdict.FAIL):
        pool = sorted((e for e in examples if e.verdict is verdict), key=order)
        if len(pool) < per_class:
            raise ValueError(f"only {len(pool)} {verdict.value} examples, {per_class} wanted")
        chosen += pool[:per_class]
    return sorted(chosen, key=lambda e: e.trace.trace_id)
