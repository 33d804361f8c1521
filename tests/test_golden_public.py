"""The public human-labelled formats as golden examples (real rows copied into
tests/data/public_samples, see its README), and the balanced starter sets built from them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import fleet_env

from evaluator.models import Verdict
from evaluator.sinks.sql import SQLStore
from evaluator.trust.golden import (
    DatasetError,
    export,
    golden_files,
    read_examples,
    read_golden,
)
from evaluator.trust.golden_public import (
    HALUEVAL_QA,
    SWAPPED,
    balanced,
    detect_format,
    read_labels,
    with_sibling_references,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = Path(__file__).resolve().parent / "data" / "public_samples"
GOLDEN = ROOT / "datasets" / "golden"
SHARED = ROOT.parent / "shared" / "data"


def rows(name: str) -> list[dict[str, object]]:
    lines = (SAMPLES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_halueval_qa_maps_to_groundedness_with_provenance() -> None:
    examples = read_labels(SAMPLES / "halueval_qa.jsonl")  # detected from the record shape
    source_rows = rows("halueval_qa")
    assert [e.verdict for e in examples] == [Verdict.PASS, Verdict.PASS, Verdict.FAIL, Verdict.FAIL]
    for example, row in zip(examples, source_rows, strict=True):
        trace = example.trace
        assert (trace.trace_id, trace.input, trace.output) == (
            row["id"],
            row["question"],
            row["response"],
        )
        assert trace.contexts == row["contexts"] and trace.contexts and trace.retrieval
        assert example.source == f"halueval_qa#{row['id']}"
        assert trace.metadata["origin"] == row["source"]
        assert "CC BY-SA 4.0" in trace.metadata["licence"] and "MIT" in trace.metadata["licence"]
        assert example.field_scores == {"groundedness": 1.0 if row["label"] == 1 else 0.0}
        assert example.reviewer == "public:halueval_qa" and example.dataset == "halueval_qa"
    assert examples[2].note == "generated hallucinated answer"


def test_halueval_general_and_truthfulqa_map_to_correctness() -> None:
    general = read_labels(SAMPLES / "halueval_general.jsonl", "halueval-general", "correctness")
    assert [e.verdict.value for e in general] == ["pass", "pass", "fail", "fail"]
    assert all(e.trace.reference is None and not e.trace.contexts for e in general)
    assert general[2].note.startswith("annotators: hallucination (")  # the annotated spans
    assert general[0].trace.metadata["licence"] == "MIT"

    truthful = read_labels(SAMPLES / "truthfulqa_judge.jsonl")
    labels = [r["label"] for r in rows("truthfulqa_judge")]
    assert [e.verdict is Verdict.PASS for e in truthful] == [label == 1 for label in labels]
    assert any(e.trace.output == "" for e in truthful)  # empty answers are kept as in the source
    assert {e.trace.metadata["licence"] for e in truthful} == {"Apache-2.0"}
    assert all(e.source and e.source.startswith("truthfulqa_judge#") for e in truthful)


def test_truthfulqa_gets_a_sibling_true_answer_as_reference() -> None:
    truthful = read_labels(SAMPLES / "truthfulqa_judge.jsonl")
    with_reference = with_sibling_references(truthful)
    # the empty answer and "I have no comment" are dropped (never correct against a reference),
    # so is the only row of its question; the four rows of the two-true-answer question remain
    assert len(with_reference) == 4
    by_id = {e.trace.trace_id: e for e in truthful}
    for example in with_reference:
        assert example.trace.reference
        sibling = by_id[str(example.trace.metadata["reference_from"]).partition("#")[2]]
        assert sibling.verdict is Verdict.PASS and sibling.trace.trace_id != example.trace.trace_id
        assert sibling.trace.output == example.trace.reference
        assert sibling.trace.input == example.trace.input


def test_llmbar_pairs_come_in_both_orders() -> None:
    examples = read_labels(SAMPLES / "llmbar_pairwise.jsonl", judge="pairwise")
    source_rows = rows("llmbar_pairwise")
    assert len(examples) == 2 * len(source_rows)
    by_id = {e.trace.trace_id: e for e in examples}
    for row in source_rows:
        first, swapped = by_id[str(row["id"])], by_id[f"{row['id']}{SWAPPED}"]
        meta = row["meta"]
        assert isinstance(meta, dict)
        assert first.trace.output == row["response"]
        assert first.trace.metadata["response_b"] == meta["response_b"]
        assert swapped.trace.output == meta["response_b"]
        assert swapped.trace.metadata["response_b"] == row["response"]
        assert (first.verdict is Verdict.PASS) == (meta["gold_preferred"] == 1)
        assert first.verdict is not swapped.verdict  # the same answer wins in both orders
        assert first.trace.metadata["pair"] == swapped.trace.metadata["pair"] == row["id"]
        assert "MIT" in first.trace.metadata["licence"]


def test_upstream_shapes(tmp_path: Path) -> None:
    """The upstream files' own rows, rebuilt from the samples' fields."""
    qa = rows("halueval_qa")[0]
    meta = qa["meta"]
    assert isinstance(meta, dict) and isinstance(qa["contexts"], list)
    upstream_qa = {
        "knowledge": qa["contexts"][0],
        "question": qa["question"],
        "right_answer": meta["right_answer"],
        "hallucinated_answer": meta["hallucinated_answer"],
    }
    path = tmp_path / "qa_data.json"
    path.write_text(json.dumps(upstream_qa) + "\n")
    right, hallucinated = read_labels(path)
    assert (right.verdict, hallucinated.verdict) == (Verdict.PASS, Verdict.FAIL)
    assert right.trace.output == meta["right_answer"] and right.trace.contexts == qa["contexts"]
    assert right.trace.trace_id.endswith("-right") and right.source
    assert right.source.startswith("halueval_qa#halueval_qa-")  # an id from the content

    truth = tmp_path / "finetune_truth.jsonl"
    truth.write_text(
        json.dumps(
            {"prompt": "Q: Is the sky green?\nA: No, it is blue.\nTrue:", "completion": " yes"}
        )
        + "\n"
        + json.dumps({"prompt": "Q: Is the sky green?\nA: Yes.\nTrue:", "completion": " no"})
        + "\n"
    )
    yes, no = read_labels(truth)
    assert (yes.trace.input, yes.trace.output, yes.verdict) == (
        "Is the sky green?",
        "No, it is blue.",
        Verdict.PASS,
    )
    assert no.verdict is Verdict.FAIL

    pair = rows("llmbar_pairwise")[2]
    pair_meta = pair["meta"]
    assert isinstance(pair_meta, dict)
    llmbar = tmp_path / "dataset.json"  # LLMBar ships one JSON array per subset
    llmbar.write_text(
        json.dumps(
            [
                {
                    "input": pair["question"],
                    "output_1": pair["response"],
                    "output_2": pair_meta["response_b"],
                    "label": pair_meta["gold_preferred"],
                }
            ]
        )
    )
    first, second = read_labels(llmbar)
    assert first.verdict is Verdict.FAIL and second.verdict is Verdict.PASS  # output 2 preferred


def test_format_detection_and_errors_name_file_and_line(tmp_path: Path) -> None:
    for name, fmt in (
        ("halueval_qa", "halueval-qa"),
        ("halueval_general", "halueval-general"),
        ("truthfulqa_judge", "truthfulqa-judge"),
        ("llmbar_pairwise", "llmbar-pairwise"),
    ):
        assert detect_format(rows(name)[0]) == fmt
    golden_line = (GOLDEN / "groundedness.jsonl").read_text().splitlines()[0]
    assert detect_format(json.loads(golden_line)) == "golden"

    bad = tmp_path / "bad.jsonl"
    good = (SAMPLES / "halueval_qa.jsonl").read_text().splitlines()[0]
    bad.write_text(good + "\n" + good.replace('"label": 1', '"label": 2') + "\n")
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: halueval-qa record: 'label' must be 0"):
        read_labels(bad)
    bad.write_text(good + "\n{not json\n")
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: not valid JSON"):
        read_labels(bad)
    bad.write_text('{"what": 1}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:1: cannot tell the format .*--format"):
        read_labels(bad)
    missing = json.loads(good)
    del missing["response"]
    bad.write_text(json.dumps(missing) + "\n")
    with pytest.raises(DatasetError, match=r"bad.jsonl:1: halueval-qa record: missing 'response'"):
        read_labels(bad, "halueval-qa")
    with pytest.raises(DatasetError, match=r"unknown format 'halu'"):
        read_labels(bad, "halu")


def test_balanced_is_deterministic_and_refuses_too_few() -> None:
    examples = read_labels(SAMPLES / "halueval_qa.jsonl")
    chosen = balanced(examples, 1, "seed-a")
    assert Counter(e.verdict for e in chosen) == {Verdict.PASS: 1, Verdict.FAIL: 1}
    assert chosen == balanced(list(reversed(examples)), 1, "seed-a")  # order does not matter
    with pytest.raises(ValueError, match="only 2 pass examples, 3 wanted"):
        balanced(examples, 3, "seed-a")


# -- the shipped starter sets --------------------------------------------------------------------

STARTER = {
    "groundedness.halueval_qa.jsonl": ("halueval_qa", "CC BY-SA 4.0"),
    "correctness.truthfulqa.jsonl": ("truthfulqa_judge", "Apache-2.0"),
    "correctness.halueval_general.jsonl": ("halueval_general", "MIT"),
    "pairwise.llmbar.jsonl": ("llmbar", "CC BY 4.0"),
}


@pytest.mark.parametrize("name", sorted(STARTER))
def test_starter_sets_are_balanced_and_attributed(name: str) -> None:
    dataset, licence = STARTER[name]
    examples = read_examples(GOLDEN / name)
    assert Counter(e.verdict for e in examples) == {Verdict.PASS: 100, Verdict.FAIL: 100}
    assert len({e.trace.trace_id for e in examples}) == 200
    for example in examples:
        assert (
            example.dataset == dataset and example.source == f"{dataset}#{example.trace.trace_id}"
        )
        assert licence in example.trace.metadata["licence"]
        assert str(example.trace.metadata["origin"]).startswith("github:")
    if name.startswith("correctness.truthfulqa"):
        assert all(e.trace.reference for e in examples)  # the correctness judge needs one
    readme = (GOLDEN / "README.md").read_text()
    assert name in readme and licence in readme


def test_calibrate_reads_the_judges_own_file_and_the_sets_beside_it() -> None:
    names = [p.name for p in golden_files("groundedness", GOLDEN)]
    assert names == ["groundedness.jsonl", "groundedness.halueval_qa.jsonl"]
    examples = read_golden("groundedness", GOLDEN)
    assert Counter(e.dataset for e in examples) == {"support_desk": 50, "halueval_qa": 200}
    assert Counter(e.verdict for e in examples) == {Verdict.PASS: 125, Verdict.FAIL: 125}
    # the hand-written sets are unchanged but for their source
    assert {e.dataset for e in read_examples(GOLDEN / "safety.jsonl")} == {"support_desk"}


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} absent")
def test_starter_sets_rebuild_byte_for_byte(tmp_path: Path) -> None:
    script = GOLDEN / "make_public_golden.py"
    done = subprocess.run(
        [sys.executable, str(script), "--data", str(SHARED), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for name in STARTER:
        assert (tmp_path / name).read_bytes() == (GOLDEN / name).read_bytes(), name


# -- through the store and the command -----------------------------------------------------------


def test_provenance_survives_the_store(database_url: str, tmp_path: Path) -> None:
    from evaluator.settings import Settings

    store = SQLStore(Settings(database_url=database_url).sqlalchemy_url)
    examples = read_labels(SAMPLES / "halueval_qa.jsonl")
    store.add_labels([e.to_label("groundedness", "import:x") for e in examples], replace=True)
    out = tmp_path / "groundedness.jsonl"
    export(store.labels("groundedness"), out)
    store.close()
    back = {e.trace.trace_id: e for e in read_examples(out)}
    for example in examples:
        kept = back[example.trace.trace_id]
        assert kept.source == example.source and kept.trace.metadata == example.trace.metadata
        assert kept.verdict is example.verdict


def test_dataset_import_command_maps_a_public_file(
    sqlite_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = {**fleet_env(redis_url, sqlite_url), "COLUMNS": "250"}
    cli = [sys.executable, "-m", "evaluator.cli", "dataset", "import"]
    sample = str(SAMPLES / "llmbar_pairwise.jsonl")
    done = subprocess.run(
        [*cli, sample, "--judge", "pairwise", "--format", "llmbar-pairwise"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported 6 labels for pairwise (3 pass, 3 fail)" in done.stdout
    store = SQLStore(sqlite_url)
    labels = store.labels("pairwise")
    store.close()
    assert {label.source.partition("#")[0] for label in labels} == {"llmbar"}

    wrong = subprocess.run(
        [*cli, sample, "--judge", "pairwise", "--format", "halueval-qa"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 1
    assert "llmbar_pairwise.jsonl:1: halueval-qa record: 'contexts' is empty" in wrong.stdout
    unknown = subprocess.run(
        [*cli, sample, "--judge", "pairwise", "--format", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "one of golden, csv, halueval-qa" in unknown.stdout + (
        unknown.stderr
    )


def test_halueval_qa_format_constant_names_the_judge() -> None:
    assert HALUEVAL_QA.judge == "groundedness" and HALUEVAL_QA.dataset == "halueval_qa"
