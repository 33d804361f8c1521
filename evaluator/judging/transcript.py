"""A trace's conversation and trajectory as compact text for a judge: ``{{ messages }}`` and
``{{ steps }}`` in a judge template (both printed through ``fence``, like every trace text).

One line per message: its index, role (and name), its text as a JSON string, its tool calls
(name and arguments, compact JSON) and, for a tool message, the call it answers. One line per
step: index, kind, name, id, parent, attempt, arguments, result and error, each as compact JSON.
Free text is always JSON-encoded, so a message cannot start a line of its own: a newline, a
quote or a forged "[… 3 messages omitted …]" inside it stays inside its quotes. Anything that
imitates a fence marker is neutralised by ``fence`` itself.

**Truncation rule** (a long session or agent run must fit the judge's context): each line is
first cut to ``MAX_LINE_CHARS``. When the lines still exceed the character budget
(``EVALFLEET_JUDGE_TRANSCRIPT_CHARS``), lines are dropped from the middle outwards, in this
order, until they fit (the very first and the very last line never are):

1. ordinary lines: everything not pinned below;
2. error lines that are not in the first or last turn;
3. the rest (pinned lines, when they alone are over the budget).

What still does not fit (a first and last line longer than the budget) is cut at the budget.

Pinned: for messages, every system/developer message, the first turn and the last turn (a turn
runs from a user message to the next one) and every message with an error (a tool message
whose call's step failed, or whose text starts with ``error``/``exception``/``traceback``);
for steps, the first and last step, the steps of the first and last turn of a session (their
ids start ``t<n>:``) and every step with an error. Each run of dropped lines becomes one
visible marker, ``[… N messages omitted …]`` / ``[… N steps omitted …]``, so the judge knows
the middle is missing. Dropping from the middle outwards keeps the lines closest to both ends:
the opening request and how it ended are what a session judge needs most.

PII redaction, when on, applies to each whole line that is kept (names, arguments and results
included), before the line is cut.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from evaluator.models import Message, Step, Trace

DEFAULT_TRANSCRIPT_CHARS = 24_000
MAX_LINE_CHARS = 2_000
_ERROR_TEXT = re.compile(r"^\s*[\"'{\[]*\s*(?:error|exception|traceback)\b", re.IGNORECASE)
_TURN_PREFIX = re.compile(r"^t(\d+):")


@dataclass(frozen=True)
class _Line:
    full: str  # the whole line; what is shown is cut to MAX_LINE_CHARS
    pinned: bool  # first/last turn, system message, first/last step
    error: bool

    @property
    def text(self) -> str:
        return _cut(self.full)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _arguments(raw: str) -> str:
    """Tool call arguments as compact JSON when they parse, else as a JSON string."""
    try:
        return _json(json.loads(raw))
    except ValueError:
        return _json(raw)


def _cut(text: str) -> str:
    if len(text) <= MAX_LINE_CHARS:
        return text
    return f"{text[:MAX_LINE_CHARS]}…[+{len(text) - MAX_LINE_CHARS} chars]"


def conversation_of(trace: Trace) -> list[Message]:
    """The trace's messages, ending with its answer; a trace without messages is its input and
    output as one user message and one assistant reply."""
    messages = list(trace.messages or ())
    if not messages and trace.input:
        messages.append(Message(role="user", content=trace.input))
    last = messages[-1] if messages else None
    answered = last is not None and last.role == "assistant" and last.text == trace.output
    if not answered and (trace.output or trace.error is None):
        messages.append(Message(role="assistant", content=trace.output))
    return messages


def _message_line(index: int, message: Message) -> str:
    who = message.role + (f"({_json(message.name)})" if message.name else "")
    parts = [f"[{index}] {who}: {_json(message.text)}"]
    if message.refusal:
        parts.append(f"refusal={_json(message.refusal)}")
    for call in message.tool_calls or ():
        arguments = _arguments(call.function.arguments)
        parts.append(f"tool_call id={_json(call.id)} {_json(call.function.name)} {arguments}")
    if message.tool_call_id is not None:
        parts.append(f"answers={_json(message.tool_call_id)}")
    return " ".join(parts)


def _turns_of_messages(messages: Sequence[Message]) -> list[int]:
    """Each message's turn: 0 before the first user message, then 1, 2, ... per user message."""
    turn, turns = 0, []
    for message in messages:
        if message.role == "user":
            turn += 1
        turns.append(turn)
    return turns


def message_lines(trace: Trace) -> list[_Line]:
    messages = conversation_of(trace)
    failed_calls = {s.tool_call_id for s in trace.steps or () if s.error and s.tool_call_id}
    turns = _turns_of_messages(messages)
    last = max(turns, default=0)
    lines = []
    for index, (message, turn) in enumerate(zip(messages, turns, strict=True), start=1):
        error = message.role == "tool" and (
            message.tool_call_id in failed_calls or bool(_ERROR_TEXT.match(message.text))
        )
        pinned = message.role in ("system", "developer") or turn in (1, last)
        lines.append(_Line(_message_line(index, message), pinned, error))
    return lines


def _step_line(index: int, step: Step) -> str:
    parts = [f"[{index}] {step.kind} {_json(step.name)} id={_json(step.id)}"]
    parts.append(f"parent={_json(step.parent_id) if step.parent_id else '-'}")
    parts.append(f"attempt={step.attempt}")
    parts.append(f"args={_json(step.arguments)}" + ("(cut)" if step.arguments_truncated else ""))
    parts.append(f"result={_json(step.result)}" + ("(cut)" if step.result_truncated else ""))
    parts.append(f"error={_json(step.error) if step.error else '-'}")
    return " ".join(parts)


def _step_turn(step: Step) -> int:
    found = _TURN_PREFIX.match(step.id)
    return int(found.group(1)) if found else 0


def step_lines(trace: Trace) -> list[_Line]:
    steps = list(trace.steps or ())
    turns = [_step_turn(step) for step in steps]
    several = len(set(turns)) > 1
    first, last = min(turns, default=0), max(turns, default=0)
    lines = []
    for index, (step, turn) in enumerate(zip(steps, turns, strict=True), start=1):
        pinned = index in (1, len(steps)) or (several and turn in (first, last))
        lines.append(_Line(_step_line(index, step), pinned, step.error is not None))
    return lines


def _middle_out(indices: list[int], centre: float) -> list[int]:
    """``indices`` ordered from the one closest to ``centre`` outwards (what is dropped first)."""
    return sorted(indices, key=lambda i: (abs(i - centre), i))


def fit(lines: Sequence[_Line], budget: int, noun: str, show: Callable[[str], str] = _cut) -> str:
    """The lines joined, within ``budget`` characters by the module's truncation rule; each
    kept line is printed as ``show(line.full)`` (redacted, then cut)."""
    sizes = [len(line.text) + 1 for line in lines]
    total = sum(sizes)
    if total <= budget:
        return _within("\n".join(show(line.full) for line in lines), budget)
    centre = (len(lines) - 1) / 2
    tiers: list[Callable[[_Line], bool]] = [
        lambda line: not line.pinned and not line.error,
        lambda line: not line.pinned,
        lambda line: True,
    ]
    ends = {0, len(lines) - 1}  # never dropped
    dropped: set[int] = set()
    runs = 0  # runs of dropped lines: each becomes one marker
    marker_room = 40  # what a marker costs, about
    for droppable in tiers:
        candidates = [i for i, line in enumerate(lines) if i not in ends and droppable(line)]
        for i in _middle_out(candidates, centre):
            if total + marker_room * runs <= budget:
                break
            if i not in dropped:
                dropped.add(i)
                total -= sizes[i]
                runs += 1 - (i - 1 in dropped) - (i + 1 in dropped)
    out: list[str] = []
    omitted = 0
    for i, line in enumerate(lines):
        if i in dropped:
            omitted += 1
            continue
        if omitted:
            out.append(f"[… {omitted} {noun} omitted …]")
            omitted = 0
        out.append(show(line.full))
    if omitted:
        out.append(f"[… {omitted} {noun} omitted …]")
    return _within("\n".join(out), budget)


def _within(text: str, budget: int) -> str:
    """The last resort: a first and last line that alone exceed the budget are cut."""
    return text if len(text) <= budget else f"{text[: max(0, budget - 20)]}…[cut to budget]"


def render_transcript(
    trace: Trace, budget: int, redact: Callable[[str], str] | None = None
) -> tuple[str, str]:
    """``(messages, steps)``: the conversation and the trajectory, each within ``budget``.
    ``redact`` runs on each whole line that is kept, before it is cut (so no value is cut
    in half and missed); lines left out are never scanned."""

    def show(full: str) -> str:
        return _cut(redact(full) if redact is not None else full)

    messages = fit(message_lines(trace), budget, "messages", show)
    steps = fit(step_lines(trace), budget, "steps", show) if trace.steps else "(no steps)"
    return messages, steps
