"""Writes the public starter golden sets beside the hand-written ones, from the human-labelled
public sets (see README.md here for each file's origin, licence and attribution):

    python datasets/golden/make_public_golden.py [--data ../shared/data]

- groundedness.halueval_qa.jsonl       HaluEval-QA, 100 supported + 100 hallucinated answers
- correctness.truthfulqa.jsonl         TruthfulQA judge data with a reference, 100 true + 100 false
- correctness.halueval_general.jsonl   HaluEval general (no reference), 100 + 100

Balanced by label, chosen by the sha1 of SEED + the row id, so a rebuild writes the same files.
The mapping is evaluator/trust/golden_public.py's, the one `evalfleet dataset import --format` uses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).resolve().parent
sys.path.insert(0, str(OUT.parent.parent))  # run from a checkout without installing

from evaluator.trust.golden import GoldenExample, write_examples  # noqa: E402
from evaluator.trust.golden_public import (  # noqa: E402
    HALUEVAL_GENERAL,
    HALUEVAL_QA,
    TRUTHFULQA_JUDGE,
    PublicFormat,
    balanced,
    read_labels,
    with_sibling_references,
)

SEED = "evalfleet-golden-2026-12"
PER_CLASS = 100

# (file written, public file read, its format, the judge, a filter on the mapped examples)
SETS: list[
    tuple[str, str, PublicFormat, str, Callable[[list[GoldenExample]], list[GoldenExample]]]
] = [
    ("groundedness.halueval_qa.jsonl", "halueval_qa.jsonl", HALUEVAL_QA, "groundedness", list),
    (
        "correctness.truthfulqa.jsonl",
        "truthfulqa_judge.jsonl",
        TRUTHFULQA_JUDGE,
        "correctness",
        with_sibling_references,  # the correctness judge compares with a reference
    ),
    (
        "correctness.halueval_general.jsonl",
        "halueval_general.jsonl",
        HALUEVAL_GENERAL,
        "correctness",
        list,
    ),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=OUT.parent.parent.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    for target, source, public, judge, prepare in SETS:
        path = args.data / source
        if not path.exists():
            print(f"error: {path} not found (pass --data DIR)", file=sys.stderr)
            return 2
        examples = balanced(prepare(read_labels(path, public.name, judge)), PER_CLASS, SEED)
        written = write_examples(args.out / target, examples)
        fails = sum(e.verdict.value == "fail" for e in examples)
        print(f"{target}: {written} examples ({written - fails} pass, {fails} fail)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
