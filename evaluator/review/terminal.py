"""``evalfleet review``: label review items from a terminal, one keystroke per decision.

Shows the trace (input, answer, contexts, reference), why it was routed, and the failing scores
with the judge's reasoning; for a chat or a session the conversation (role by role, tool calls
and results; at most ``MAX_MESSAGES`` messages, the first and last ones and the highlighted ones
with their neighbours, saying how many it left out; each cut at ``MAX_TEXT`` characters) and for
an agent the trajectory as an indented tree (at most ``MAX_STEPS`` steps, the flagged ones and
their ancestors always), the failing step marked ``▶`` in red; then ``p`` pass, ``f`` fail
(``P`` / ``F`` ask for a note first), ``s`` skip (not shown to you again), ``q`` quit (the item
goes back to the queue). Claims and labels go through the same ReviewQueue as the HTTP API, so
leases and the one-label rule hold across both.
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

from evaluator.models import Level, Message, ReviewItem, Step, Verdict
from evaluator.review.queue import QueueFilter, ReviewError, ReviewQueue
from evaluator.review.view import (
    KEEP_HEAD,
    KEEP_TAIL,
    MessageView,
    StepView,
    display_arguments,
    display_value,
    layout,
)

KEYS = "[p]ass  [f]ail  (P/F: with a note)  [s]kip  [q]uit (releases the item)"
MAX_MESSAGES = 16  # shown of a long conversation: its ends and what is highlighted
MAX_STEPS = 40
MAX_TEXT = 600  # characters of one message, argument or result
_FLAG = "bold red"


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


def _cut(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


def _terminal_shown(views: list[MessageView]) -> set[int]:
    """Which messages fit the terminal's cap: the ends, then the highlighted ones (and their
    neighbours) as long as there is room."""
    if len(views) <= MAX_MESSAGES:
        return {view.index for view in views}
    shown = {view.index for view in views[:KEEP_HEAD] + views[-KEEP_TAIL:]}
    for view in views:
        if view.highlighted and len(shown) < MAX_MESSAGES:
            shown |= {view.index - 1, view.index, view.index + 1}
    return shown


def _message_lines(message: Message, view: MessageView) -> list[Text]:
    style = _FLAG if view.highlighted else "bold"
    mark = "▶ " if view.highlighted else "  "
    turn = f" (turn {view.turn})" if view.turn else ""
    head = Text(f"{mark}{message.role}{turn}", style=style)
    if message.name:
        head.append(f" · {message.name}")
    if message.tool_call_id:
        head.append(f" · result of {message.tool_call_id}")
    lines = [head]
    if message.text:
        lines.append(Text("    " + _cut(message.text).replace("\n", "\n    ")))
    if message.refusal:
        lines.append(Text("    refusal: " + _cut(message.refusal)))
    for call in message.tool_calls or ():
        arguments = " ".join(display_arguments(call.function.arguments).split())
        lines.append(Text(f"    calls {call.function.name} [{call.id}] {_cut(arguments)}"))
    return lines


def render_conversation(item: ReviewItem, views: list[MessageView]) -> list[Text]:
    messages = item.trace.messages or []
    shown = _terminal_shown(views)
    lines = [Text(f"Conversation ({len(messages)} messages)", style="bold underline")]
    left_out = 0
    for view in views:
        if view.index not in shown:
            left_out += 1
            continue
        if left_out:
            lines.append(Text(f"    … {left_out} messages not shown …", style="dim"))
            left_out = 0
        lines += _message_lines(messages[view.index], view)
    if left_out:
        lines.append(Text(f"    … {left_out} messages not shown …", style="dim"))
    return lines


def _step_lines(step: Step, view: StepView) -> list[Text]:
    indent = "  " * view.depth
    mark = "▶ " if view.highlighted else "· "
    facts = [step.kind, step.name or "-", step.id]
    if step.attempt > 1:
        facts.append(f"attempt {step.attempt}")
    if step.latency_ms is not None:
        facts.append(f"{step.latency_ms:.0f} ms")
    if view.turn:
        facts.append(f"turn {view.turn}")
    style = _FLAG if view.highlighted else ("yellow" if step.error else "")
    lines = [Text(f"{indent}{mark}" + " · ".join(facts), style=style)]
    detail = indent + "    "
    if step.arguments is not None:
        arguments = " ".join(display_value(step.arguments).split())
        lines.append(Text(f"{detail}arguments: {_cut(arguments, MAX_TEXT // 2)}"))
    if step.result is not None:
        lines.append(Text(f"{detail}result: {_cut(' '.join(display_value(step.result).split()))}"))
    if step.error:
        lines.append(Text(f"{detail}error: {_cut(step.error)}", style=style or "yellow"))
    return lines


def render_trajectory(item: ReviewItem, views: list[StepView]) -> list[Text]:
    steps = item.trace.steps or []
    keep = {view.index for view in views if view.highlighted or view.on_path}
    for view in views:
        if len(keep) >= MAX_STEPS:
            break
        keep.add(view.index)
    lines = [Text(f"Trajectory ({len(steps)} steps)", style="bold underline")]
    for view in views:
        if view.index in keep:
            lines += _step_lines(steps[view.index], view)
    if len(keep) < len(views):
        lines.append(Text(f"    … {len(views) - len(keep)} steps not shown …", style="dim"))
    return lines


def render_item(item: ReviewItem, scores: list[dict[str, object]]) -> Panel:
    trace = item.trace
    session = f" · session {item.session_id}" if item.session_id else ""
    shown = layout(item)
    parts: list[object] = [
        Text(
            f"{item.evaluator} v{item.evaluator_version} · {item.level.value} · "
            f"priority {item.priority} · tenant {item.tenant or '-'}{session} · {item.trace_id}",
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
    if shown.highlighted_turns:
        turns = ", ".join(str(turn) for turn in shown.highlighted_turns)
        parts.append(Text(f"About turn {turns} (marked ▶)", style=_FLAG))
    if trace.messages and (item.level is Level.SESSION or len(trace.messages) > 1):
        parts += render_conversation(item, shown.conversation)
    if trace.steps:
        parts += render_trajectory(item, shown.trajectory)
    if shown.unmatched_steps:
        parts.append(Text("Named steps not in this trace: " + ", ".join(shown.unmatched_steps)))
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
