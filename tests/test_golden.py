"""Golden datasets: export from the label store, import JSONL/CSV, dedup, stable files."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import fleet_env, make_trace

from evaluator.ledger import LedgerState, inclusion_probabilities, ledger_row, write_rows
from evaluator.models import ReviewLabel, Verdict
from evaluator.sinks.sql import SQLStore
from evaluator.trust.golden import DatasetError, GoldenExample, export, read_any, read_examples

T0 = datetime(2026, 11, 20, 9, tzinfo=UTC)


def label(
    index: int, verdict: Verdict, at: datetime, reviewer: str = "ana", item: str = ""
) -> ReviewLabel:
    trace = make_trace(index)
    return ReviewLabel(
        id=item or f"item-{index}-{reviewer}",
        trace_id=trace.trace_id,
        evaluator="groundedness",
        evaluator_version="1.0.0",
        reviewer=reviewer,
        verdict=verdict,
        field_scores={"groundedness": 0.2 if verdict is Verdict.FAIL else 1.0},
        note="checked",
        labelled_at=at,
        trace=trace,
    )


def test_export_dedups_by_trace_newest_wins_and_is_stable(sqlite_url: str, tmp_path: Path) -> None:
    store = SQLStore(sqlite_url)
    store.add_labels(
        [
            label(2, Verdict.PASS, T0),
            label(1, Verdict.FAIL, T0),
            label(2, Verdict.FAIL, T0 + timedelta(hours=1), reviewer="ben"),  # relabelled later
        ]
    )
    path = tmp_path / "groundedness.jsonl"
    old = GoldenExample.from_label(label(9, Verdict.PASS, T0 - timedelta(days=30)))
    path.write_text(old.model_dump_json() + "\n")  # the file already holds an older example
    total, merged = export(store.labels("groundedness"), path)
    assert (total, merged) == (3, 3)
    examples = read_examples(path)
    assert [e.trace.trace_id for e in examples] == ["t-000001", "t-000002", "t-000009"]
    second = examples[1]
    assert (second.verdict, second.reviewer, second.judge_version) == (Verdict.FAIL, "ben", "1.0.0")
    before = path.read_bytes()
    export(store.labels("groundedness"), path)
    assert path.read_bytes() == before  # stable: a re-export changes nothing
    # The ledger knows how likely the sampler was to send t-000001 to the judge: kept with it.
    now = datetime.now(UTC)
    write_rows(
        store,
        [ledger_row("t-000001", "groundedness", "1.0.0", LedgerState.DONE, now, inclusion=0.25)],
    )
    labels = store.labels("groundedness")
    inclusion = inclusion_probabilities(store, "groundedness", [lb.trace_id for lb in labels])
    assert inclusion == {"t-000001": 0.25}
    export(labels, path, inclusion)
    weights = {e.trace.trace_id: e.inclusion_probability for e in read_examples(path)}
    assert weights == {"t-000001": 0.25, "t-000002": None, "t-000009": None}
    assert b'"verdict": "fail"' in before.splitlines()[0]  # sorted keys, readable diffs
    store.close()


def test_csv_import_round_trip(sqlite_url: str, redis_url: str, tmp_path: Path) -> None:
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(
        "trace_id,input,output,contexts,verdict,note,score:groundedness,score:safe\n"
        't-1,How?,Click Rotate.,"[""Rotate under Settings.""]",pass,ok,0.9,true\n'
        "t-2,How?,Email us.,,FAIL,invented,0.1,true\n"
    )
    [first, second] = read_any(csv_file)
    assert first.trace.contexts == ["Rotate under Settings."] and first.field_scores == {
        "groundedness": 0.9,
        "safe": True,
    }
    assert second.verdict is Verdict.FAIL and second.reviewer == "import:labels.csv"

    env = {**fleet_env(redis_url, sqlite_url), "COLUMNS": "250"}  # rich wraps at 80 otherwise
    cli = [sys.executable, "-m", "evaluator.cli", "dataset"]
    done = subprocess.run(
        [*cli, "import", str(csv_file), "--judge", "groundedness"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "golden.jsonl"
    done = subprocess.run(
        [*cli, "export", "--judge", "groundedness", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "2 examples" in done.stdout, done.stdout + done.stderr
    assert [e.trace.trace_id for e in read_examples(out)] == ["t-1", "t-2"]
    # Importing the exported file again changes nothing (same ids, replaced in place).
    subprocess.run(
        [*cli, "import", str(out), "--judge", "groundedness"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    store = SQLStore(sqlite_url)
    assert len(store.labels("groundedness")) == 2
    store.close()


def test_bad_rows_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("trace_id,output,verdict\nt-1,fine,pass\nt-2,hmm,maybe\n")
    with pytest.raises(DatasetError, match=r"bad.csv:3: 'maybe' is not a valid Verdict"):
        read_any(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"verdict": "pass"}\n')
    with pytest.raises(DatasetError, match=r"broken.jsonl:1: .*trace"):
        read_examples(broken)


def test_few_shot_examples_come_fenced_disagreements_first(tmp_path: Path) -> None:
    from evaluator.judging.files import (
        default_judges_dir,
        load_judge,
        render_messages,
        validate_judge,
    )
    from evaluator.trust.golden import record_disagreements, write_examples

    golden = tmp_path / "golden"
    examples = [
        GoldenExample.from_label(label(i, Verdict.FAIL if i % 2 else Verdict.PASS, T0))
        for i in range(1, 7)
    ]
    for i, example in enumerate(examples, 1):
        example.trace.output = f"answer number {i}"
    write_examples(golden / "grounded_fs.jsonl", examples)
    record_disagreements("grounded_fs", "1.0.0", ["t-000004"], golden)

    judges = tmp_path / "judges"
    judges.mkdir()
    text = (default_judges_dir() / "groundedness.yaml").read_text()
    few_shot = text.replace("name: groundedness", "name: grounded_fs").replace(
        "review_thresholds:", "few_shot: 3\nreview_thresholds:"
    )
    without = judges / "grounded_fs.yaml"
    without.write_text(few_shot)
    assert "never prints {{ examples" in " ".join(validate_judge(load_judge(without)))

    with_examples = few_shot.replace(
        "  {{ contexts | fence_each('context') }}",
        "  Labelled examples:\n  {{ examples | fence_each('example') }}\n"
        "  {{ contexts | fence_each('context') }}",
    )
    without.write_text(with_examples)
    spec = load_judge(without)
    assert validate_judge(spec) == []
    user = render_messages(spec, examples[0].trace, golden_dir=golden)[1]["content"]
    assert user.count('<untrusted-data name="example') == 3
    shown = [line for line in user.splitlines() if line.startswith("Answer: ")]
    # the recorded disagreement first, then alternating fail / pass; never the judged trace
    assert shown == [
        "Answer: answer number 4",
        "Answer: answer number 3",
        "Answer: answer number 2",
    ]
    assert "Human verdict: pass (checked)" in user
    assert user.index("answer number 4") < user.index("</untrusted-data>")


def test_an_examples_source_follows_it_through_the_store() -> None:
    reviewed = GoldenExample.from_label(label(1, Verdict.PASS, T0))
    assert reviewed.source is None and reviewed.dataset == "review"  # the review queue
    imported = reviewed.model_copy(update={"source": "halueval_qa#halueval-qa-7"})
    stored = imported.to_label("groundedness", "import:file.jsonl")
    assert stored.source == "halueval_qa#halueval-qa-7"  # its own provenance wins
    assert GoldenExample.from_label(stored).source == "halueval_qa#halueval-qa-7"
    assert reviewed.to_label("groundedness", "import:file.jsonl").source == "import:file.jsonl"
    assert imported.dataset == "halueval_qa"


def test_golden_files_are_the_judges_own_and_the_sets_beside_it(tmp_path: Path) -> None:
    from evaluator.trust.golden import golden_files, read_golden, write_examples

    first = GoldenExample.from_label(label(1, Verdict.PASS, T0))
    newer = GoldenExample.from_label(label(1, Verdict.FAIL, T0 + timedelta(days=1)))
    write_examples(tmp_path / "groundedness.public.jsonl", [newer])
    assert golden_files("groundedness", tmp_path) == [tmp_path / "groundedness.public.jsonl"]
    write_examples(tmp_path / "groundedness.jsonl", [first])
    write_examples(tmp_path / "groundedness_v2.jsonl", [first])  # another judge's file
    assert [p.name for p in golden_files("groundedness", tmp_path)] == [
        "groundedness.jsonl",
        "groundedness.public.jsonl",
    ]
    [merged] = read_golden("groundedness", tmp_path)  # one per trace, the newest label
    assert merged.verdict is Verdict.FAIL
    assert golden_files("groundedness", tmp_path / "absent") == []
