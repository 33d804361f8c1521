"""Pairwise examples (two answers to one question: A is the trace's ``output``, B its
``metadata.response_b``): both orders of a pair, and the position bias of a judge over them.

A pair is calibrated in both orders, A/B and B/A, the human verdict flipping with the answers;
a consistent judge prefers the same *answer* in both, a position-biased one the same *slot*.
Examples of one pair share ``metadata.pair``; the B/A order's trace id ends in ``~swapped``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evaluator.models import Trace, Verdict
from evaluator.trust.golden import GoldenExample
from evaluator.trust.golden_public import SWAPPED

PASS, FAIL = Verdict.PASS, Verdict.FAIL


def length_difference(trace: Trace) -> float:
    """A pairwise example: how much longer answer A is than answer B (verbosity bias)."""
    other = trace.metadata.get("response_b")
    return float(len(trace.output) - len(other if isinstance(other, str) else ""))


@dataclass
class PositionBias:
    """A pairwise judge over both orders of the same pairs (examples with metadata ``pair``)."""

    pairs: int  # judged in both orders
    consistent: int  # the same answer preferred whichever came first
    first_both: int  # the first-shown answer preferred in both orders
    second_both: int

    @property
    def consistency(self) -> float:
        return self.consistent / self.pairs if self.pairs else 0.0

    @property
    def follows_position(self) -> float:
        """Share of pairs where the verdict followed the position (the same slot won in both
        orders) rather than the answer."""
        return (self.first_both + self.second_both) / self.pairs if self.pairs else 0.0


def position_bias(
    judged: Sequence[tuple[GoldenExample, Verdict]],
) -> PositionBias | None:
    """Both orders of a pair: "pass" means the judge preferred the answer shown first
    (``output``); a consistent judge passes exactly one of the two orders."""
    by_pair: dict[str, list[Verdict]] = {}
    for example, verdict in judged:
        pair = example.trace.metadata.get("pair")
        if isinstance(pair, str):
            by_pair.setdefault(pair, []).append(verdict)
    both = [v for v in by_pair.values() if len(v) == 2]
    if not both:
        return None
    passes = [sum(v is PASS for v in verdicts) for verdicts in both]
    return PositionBias(len(both), passes.count(1), passes.count(2), passes.count(0))


def is_pairwise(example: GoldenExample) -> bool:
    return isinstance(example.trace.metadata.get("response_b"), str)


def pair_of(example: GoldenExample) -> str:
    pair = example.trace.metadata.get("pair")
    return pair if isinstance(pair, str) else example.trace.trace_id.removesuffix(SWAPPED)


def _other_order(example: GoldenExample) -> GoldenExample:
    """The same pair with answers A and B swapped: the human verdict flips with them."""
    trace, pair = example.trace, pair_of(example)
    first = trace.metadata.get("order") != "ba" and not trace.trace_id.endswith(SWAPPED)
    swapped = trace.model_copy(
        update={
            "trace_id": pair + SWAPPED if first else pair,
            "output": trace.metadata["response_b"],
            "metadata": {
                **trace.metadata,
                "response_b": trace.output,
                "pair": pair,
                "order": "ba" if first else "ab",
            },
        }
    )
    flipped = FAIL if example.verdict is PASS else PASS
    scores = {
        k: (not v) if isinstance(v, bool) else 1.0 - v if isinstance(v, float) else v
        for k, v in example.field_scores.items()
    }
    source = example.source and f"{example.source.partition('#')[0]}#{swapped.trace_id}"
    return example.model_copy(
        update={"trace": swapped, "verdict": flipped, "field_scores": scores, "source": source}
    )


def both_orders(examples: Sequence[GoldenExample]) -> list[GoldenExample]:
    """Every pairwise example in both orders (A/B and B/A), each tagged with its pair; others
    as they are. A set that holds one order of a pair gets the other added."""
    seen = {e.trace.trace_id for e in examples}
    completed: list[GoldenExample] = []
    for example in examples:
        if not is_pairwise(example):
            completed.append(example)
            continue
        pair = pair_of(example)
        if example.trace.metadata.get("pair") != pair:
            metadata = {**example.trace.metadata, "pair": pair}
            example = example.model_copy(
                update={"trace": example.trace.model_copy(update={"metadata": metadata})}
            )
        completed.append(example)
        other = _other_order(example)
        if other.trace.trace_id not in seen:
            seen.add(other.trace.trace_id)
            completed.append(other)
    return completed
