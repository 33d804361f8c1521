"""``evalfleet review``: label review items from a terminal, one keystroke per decision.

Shows the trace (input, answer, contexts, reference), why it was routed, and the failing scores
with the judge's reasoning; then ``p`` pass, ``f`` fail (``P`` / ``F`` ask for a note first),
``s`` skip (not shown to you again), ``q`` quit (the item goes back to the queue). Claims and
labels go through the same ReviewQueue as the HTTP API, so leases and the one-label rule hold
across both.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from evaluator.models import ReviewItem, Verdict
from evaluator.review.queue import QueueFilter, ReviewError, ReviewQueue

KEYS = "[p]ass  [f]ail  (P/F: with a note)  [s]kip  [q]uit (releases the item)"


@contextlib.contextmanager
def keystrokes() -> Iterator[None]:
    """Keys arrive one by one, without Enter or echo, for the whole session (set before the
    first item is shown, so a key pressed early is not stuck in a line buffer)."""
    if not sys.stdin.isatty():
        yield
        return
    descriptor = sys.stdin.fileno()
    saved = termios.tcgetattr(descriptor)
    tty.setcbreak(descriptor)
    try:
        yield
    finally:
        termios.tcsetattr(descriptor, termios.TCSADRAIN, saved)


def read_key() -> str:
    """One keystroke from the terminal (one character from a pipe)."""
    if not sys.stdin.isatty():
        return sys.stdin.read(1)
    return os.read(sys.stdin.fileno(), 1).decode(errors="replace")


def read_line(prompt: str) -> str:
    """A line typed in keystroke mode, echoed as it is typed."""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    typed = ""
    while (key := read_key()) not in ("\n", "\r", ""):
        if key in ("\x7f", "\b"):
            typed = typed[:-1]
            sys.stdout.write("\b \b")
        else:
            typed += key
            sys.stdout.write(key)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return typed


def render_item(item: ReviewItem, scores: list[dict[str, object]]) -> Panel:
    trace = item.trace
    parts: list[object] = [
        Text(
            f"{item.evaluator} v{item.evaluator_version} · priority {item.priority} · "
            f"tenant {item.tenant or '-'} · {item.trace_id}",
            style="bold",
        ),
        Text("Why: " + "; ".join(item.reasons), style="red"),
        Text("Input", style="bold underline"),
        Text(trace.input or "-"),
        Text("Answer", style="bold underline"),
        Text(trace.output),
    ]
    for index, context in enumerate(trace.contexts, 1):
        parts += [Text(f"Context {index}", style="bold underline"), Text(context)]
    if trace.reference:
        parts += [Text("Reference", style="bold underline"), Text(trace.reference)]
    table = Table("score", "value", "passed", "reasoning", expand=True)
    for score in scores:
        table.add_row(
            str(score["name"]),
            str(score.get("label") or score.get("value")),
            str(score.get("passed")),
            str(score.get("reason", ""))[:400],
        )
    parts.append(table)
    # Text() renders trace content literally: no console markup from untrusted text.
    return Panel(Group(*parts), title="review", subtitle=Text(KEYS))  # type: ignore[arg-type]


@dataclass
class TerminalReview:
    queue: ReviewQueue
    reviewer: str
    scope: QueueFilter
    console: Console
    key: Callable[[], str] = read_key
    ask: Callable[[str], str] = read_line
    counts: dict[str, int] = field(default_factory=lambda: {"pass": 0, "fail": 0, "skipped": 0})

    def run(self) -> dict[str, int]:
        with keystrokes():
            return self._loop()

    def _loop(self) -> dict[str, int]:
        while True:
            claimed = self.queue.claim(self.reviewer, 1, self.scope)
            if not claimed:
                self.console.print("Queue empty — nothing left to review.")
                return self.counts
            item = claimed[0].item
            records = self.queue.store.scores_by_id(item.score_ids)
            self.console.print(render_item(item, [r.model_dump() for r in records]))
            if not self._decide(item):
                self.queue.release(item.id, self.reviewer)
                self.console.print("Released; bye.")
                return self.counts

    def _decide(self, item: ReviewItem) -> bool:
        """Handle keys until the item is dealt with; False to quit."""
        while True:
            key = self.key()
            if key in ("p", "f", "P", "F"):
                verdict = Verdict.PASS if key.lower() == "p" else Verdict.FAIL
                note = self.ask("note: ") if key.isupper() else ""
                try:
                    self.queue.label(item.id, self.reviewer, verdict, {}, note)
                except ReviewError as exc:
                    self.console.print(f"[red]not labelled:[/red] {exc}")
                    return True
                self.counts[verdict.value] += 1
                self.console.print(f"labelled [bold]{verdict.value}[/bold]")
                return True
            if key == "s":
                self.queue.skip(item.id, self.reviewer)
                self.counts["skipped"] += 1
                return True
            if key in ("q", ""):  # "" = end of input
                return False
            self.console.print(Text(KEYS))  # brackets are not markup here
