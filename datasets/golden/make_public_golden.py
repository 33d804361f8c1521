"""Writes the public starter golden sets beside the hand-written ones, from the human-labelled
public sets (see README.md here for each file's origin, licence and attribution):

    python datasets/golden/make_public_golden.py [--data ../shared/data]

- groundedness.halueval_qa.jsonl       HaluEval-QA, 100 supported + 100 hallucinated answers
- correctness.truthfulqa.jsonl         TruthfulQA judge data with a reference, 100 true + 100 false
- correctness.halueval_general.jsonl   HaluEval general (no reference), 100 + 100
- pairwise.llmbar.jsonl                LLMBar pairs (with the MT-Bench, FairEval and LLMEval²
                                       expert pairs): 50 where the first output is preferred,
                                       50 where the second is, each pair in both orders (A/B
                                       and B/A): 100 pass + 100 fail

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
    LLMBAR_PAIRWISE,
    SWAPPED,
    TRUTHFULQA_JUDGE,
    PublicFormat,
    balanced,
    read_labels,
    with_sibling_references,
)

SEED = "evalfleet-golden-2026-12"
PER_CLASS = 100
PAIRS_PER_CLASS = 50  # pairs whose first output wins, and as many whose second does


def pairwise_both_orders(examples: list[GoldenExample]) -> list[GoldenExample]:
    """``PAIRS_PER_CLASS`` pairs of each gold preference (chosen on their first order), each in
    both orders: calibration then shows whether a verdict follows the answer or the position."""
    first_orders = [e for e in examples if not e.trace.trace_id.endswith(SWAPPED)]
    chosen = {e.trace.metadata["pair"] for e in balanced(first_orders, PAIRS_PER_CLASS, SEED)}
    return sorted(
        (e for e in examples if e.trace.metadata["pair"] in chosen), key=lambda e: e.trace.trace_id
    )


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
# (file written, public file read, its format, the judge, the selection of whole pairs)
PAIR_SETS: list[
    tuple[str, str, PublicFormat, str, Callable[[list[GoldenExample]], list[GoldenExample]]]
] = [
    ("pairwise.llmbar.jsonl", "llmbar_pairwise.jsonl", LLMBAR_PAIRWISE, "pairwise",
     pairwise_both_orders),
]  # fmt: skip


_PAIRED = {(target, source) for target, source, *_ in PAIR_SETS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=OUT.parent.parent.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    for target, source, public, judge, prepare in SETS + PAIR_SETS:
        path = args.data / source
        if not path.exists():
            print(f"error: {path} not found (pass --data DIR)", file=sys.stderr)
            return 2
        mapped = prepare(read_labels(path, public.name, judge))
        examples = mapped if (target, source) in _PAIRED else balanced(mapped, PER_CLASS, SEED)
        written = write_examples(args.out / target, examples)
        fails = sum(e.verdict.value == "fail" for e in examples)
        print(f"{target}: {written} examples ({written - fails} pass, {fails} fail)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
