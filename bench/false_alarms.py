"""How often each heuristic fires on real, human-labelled answers: the false-alarm rate.

Every heuristic (`heuristic_evaluators`) runs over the public labelled sets in ``../shared/data``
(see its README: label 1 = a good answer, 0 = a bad one) and the script prints, per file and
pooled, each check's firing rate (failed / applied) on good answers and on bad answers, and the
share of good answers that review routing would send to humans. A check that fires on good
answers wastes reviewers' time; a high-severity one routes each of those answers to a person.

    python bench/false_alarms.py                      # the table
    python bench/false_alarms.py --show pii_leak      # the answers a check fired on
    python bench/false_alarms.py --check              # exit 1 when a high-severity check fires
                                                      # on >= 0.5 % of good answers
    python bench/false_alarms.py --write-sample tests/data/false_alarm_sample.jsonl
                                                      # the tests' corpus (see tests/data/README.md)

In ``llmbar_pairwise.jsonl`` both outputs of a pair count: ``response`` with its label and
``meta.response_b`` with the other one (the preferred output is the good one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from evaluator.evaluators import heuristic_evaluators, run_evaluator
from evaluator.evaluators.pii import find_pii, redact_pii
from evaluator.models import Severity, Trace
from evaluator.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
TARGET = 0.005  # a high-severity check must fire on fewer good answers than this


@dataclass
class Tally:
    applied: int = 0
    fired: int = 0

    @property
    def rate(self) -> float:
        return self.fired / self.applied if self.applied else 0.0

    def cell(self) -> str:
        if not self.applied:
            return "-"
        return f"{100 * self.rate:.2f} % ({self.fired}/{self.applied})"


@dataclass
class Counts:
    # (file, label, check) -> tally; label 1 good, 0 bad
    tallies: dict[tuple[str, int, str], Tally] = field(default_factory=lambda: defaultdict(Tally))
    answers: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    routed: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    shown: dict[str, list[tuple[str, str, str]]] = field(default_factory=lambda: defaultdict(list))


def answers(path: Path) -> Iterator[tuple[Trace, int]]:
    """(trace, label) for every answer of one labelled file."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        contexts = [c for c in row.get("contexts") or [] if c]
        outputs = [(row["response"], int(row["label"]), "")]
        response_b = (row.get("meta") or {}).get("response_b")
        if isinstance(response_b, str):
            outputs.append((response_b, 1 - int(row["label"]), "-b"))
        for output, label, suffix in outputs:
            trace = Trace(
                trace_id=f"{path.stem}-{number}{suffix}",
                input=row.get("question") or "",
                output=output,
                contexts=contexts,
                retrieval=bool(contexts),
            )
            yield trace, label


# What makes a good answer a hard case for the heuristics: digit runs, addresses, URLs,
# self-reference phrases; and contexts with year ranges ("Audioslave (2001-2007)").
_HARD = re.compile(r"\d(?:[ ./()-]{0,3}\d){6,}|@|https?://|as an AI|language model", re.I)
_YEAR_RANGE = re.compile(r"\(\d{4}[-\u2013]\d{2,4}")


def write_sample(files: list[Path], target: Path) -> int:
    """The tests' corpus: every good answer that is a hard case (or holds 8+ digits) and every
    row whose contexts hold a year range, with its source and licence kept per row."""
    rows = []
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            outputs = [(row["response"], int(row["label"]), "")]
            response_b = (row.get("meta") or {}).get("response_b")
            if isinstance(response_b, str):
                outputs.append((response_b, 1 - int(row["label"]), "-b"))
            contexts = [c for c in row.get("contexts") or [] if c]
            year_ranges = any(_YEAR_RANGE.search(c) for c in contexts)
            for output, label, suffix in outputs:
                hard = _HARD.search(output) or sum(c.isdigit() for c in output) >= 8
                if (label == 1 and hard) or (year_ranges and not suffix):
                    rows.append(
                        {
                            "id": f"{row['id']}{suffix}",
                            "question": row.get("question") or "",
                            "contexts": contexts,
                            "response": output,
                            "label": label,
                            "source": row["source"],
                            "file": path.name,
                        }
                    )
    rows.sort(key=lambda r: hashlib.sha1(r["id"].encode()).hexdigest())
    target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return len(rows)


def run(files: list[Path], show: str | None) -> tuple[Counts, list[str], dict[str, str], float]:
    evaluators = heuristic_evaluators(Settings())
    severities = {e.name: str(getattr(e, "severity", Severity.LOW)) for e in evaluators}
    counts = Counts()
    seconds = 0.0
    for path in files:
        for trace, label in answers(path):
            counts.answers[(path.name, label)] += 1
            routed = False
            for evaluator in evaluators:
                start = time.perf_counter()
                scores = run_evaluator(evaluator, trace)
                seconds += time.perf_counter() - start
                for score in scores:
                    tally = counts.tallies[(path.name, label, score.name)]
                    tally.applied += 1
                    if score.passed is False:
                        tally.fired += 1
                        if score.severity in (Severity.HIGH, Severity.CRITICAL):
                            routed = True
                        if score.name == show:
                            counts.shown[score.name].append(
                                (
                                    f"{trace.trace_id} (label {label})",
                                    score.reason or "",
                                    trace.output,
                                )
                            )
            counts.routed[(path.name, label)] += routed
    return counts, [e.name for e in evaluators], severities, seconds


def detector_on_all_text(files: list[Path]) -> dict[str, tuple[int, int, int]]:
    """Per kind of text (question, context, answer): texts, texts where ``find_pii`` finds
    personal data, texts ``redact_pii`` changes. These public sets hold no real personal data,
    so every hit is a false alarm or a made-up address in an answer, and every change of a
    text without an ``@`` is redaction corrupting it."""
    result: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            texts = [("question", row.get("question") or "")]
            texts += [("context", c) for c in row.get("contexts") or []]
            texts.append(("answer", row["response"]))
            response_b = (row.get("meta") or {}).get("response_b")
            if isinstance(response_b, str):
                texts.append(("answer", response_b))
            for kind, text in texts:
                tally = result[kind]
                tally[0] += 1
                tally[1] += bool(find_pii(text))
                tally[2] += "@" not in text and redact_pii(text) != text
    return {kind: (t[0], t[1], t[2]) for kind, t in result.items()}


def pooled(counts: Counts, label: int, check: str) -> Tally:
    total = Tally()
    for (_, lab, name), tally in counts.tallies.items():
        if lab == label and name == check:
            total.applied += tally.applied
            total.fired += tally.fired
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, action="append", help=f"default {DEFAULT_DATA}")
    parser.add_argument("--show", metavar="CHECK", help="print the answers CHECK fired on")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument(
        "--write-sample", type=Path, metavar="JSONL", help="write the tests' corpus"
    )
    args = parser.parse_args(argv)
    directories = args.data or [DEFAULT_DATA]
    files = sorted(p for d in directories for p in (d.glob("*.jsonl") if d.is_dir() else [d]))
    if not files:
        print(f"no labelled *.jsonl files under {', '.join(map(str, directories))}")
        return 2
    if args.write_sample:
        print(f"{write_sample(files, args.write_sample)} rows written to {args.write_sample}")
        return 0
    counts, checks, severities, seconds = run(files, args.show)
    used = [
        c for c in checks if any(t.applied for (_, _, n), t in counts.tallies.items() if n == c)
    ]

    n_answers = sum(counts.answers.values())
    print(f"{n_answers} answers in {len(files)} files; heuristics took {seconds:.2f} s")
    print("\nFiring rate per file (failed / applied), good answers (label 1) | bad answers (0):\n")
    print("| check | severity | " + " | ".join(f"{p.stem} good | bad" for p in files) + " |")
    print("|---|---|" + "---:|---:|" * len(files))
    for check in used:
        cells = []
        for path in files:
            cells.append(counts.tallies[(path.name, 1, check)].cell())
            cells.append(counts.tallies[(path.name, 0, check)].cell())
        print(f"| `{check}` | {severities[check]} | " + " | ".join(cells) + " |")
    routed_cells = []
    for path in files:
        for label in (1, 0):
            n = counts.answers[(path.name, label)]
            routed_cells.append(f"{100 * counts.routed[(path.name, label)] / max(n, 1):.2f} %")
    print("| routed to review (any high) | | " + " | ".join(routed_cells) + " |")

    print("\nPooled over all files:\n")
    print("| check | severity | good answers | bad answers | target |")
    print("|---|---|---:|---:|---|")
    missed = []
    for check in used:
        good, bad = pooled(counts, 1, check), pooled(counts, 0, check)
        high = severities[check] in (Severity.HIGH, Severity.CRITICAL)
        verdict = ""
        if high:
            verdict = "ok" if good.rate < TARGET else f"MISSED (>= {100 * TARGET:.1f} %)"
            if good.rate >= TARGET:
                missed.append(check)
        print(f"| `{check}` | {severities[check]} | {good.cell()} | {bad.cell()} | {verdict} |")
    good_n = sum(n for (_, lab), n in counts.answers.items() if lab == 1)
    good_routed = sum(n for (_, lab), n in counts.routed.items() if lab == 1)
    print(
        f"\nGood answers routed to human review by a heuristic: {good_routed}/{good_n} "
        f"({100 * good_routed / max(good_n, 1):.2f} %)"
    )
    print("\nThe PII detector on every text of the sets (no real personal data in them):\n")
    print("| text | texts | personal data found | changed by redact_pii (no @ in it) |")
    print("|---|---:|---:|---:|")
    for kind, (n, found, changed) in detector_on_all_text(files).items():
        print(f"| {kind} | {n} | {found} | {changed} |")
    for check, rows in counts.shown.items():
        print(f"\nAnswers `{check}` fired on ({len(rows)}):")
        for trace_id, reason, output in rows:
            print(f"- {trace_id}: {reason}\n    {output[:300]!r}")
    if args.check and missed:
        print(f"\ntarget missed by: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
