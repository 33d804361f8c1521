"""What a reviewer is shown of a review item besides its answer: the conversation in order, the
agent's trajectory as a tree, and what the failing scores are about, highlighted. One layout
for the web page, the API's JSON (``ItemView.conversation`` / ``trajectory``) and the terminal.

Pure functions of the item (its trace and ``focus``); no I/O, nothing rendered here. Positions
(``index``) point into ``item.trace.messages`` / ``item.trace.steps``, so the JSON does not
repeat the trace's text.

- **Steps** are listed depth-first by ``parent_id`` (children in the order they started), each
  with its depth; a step the failing scores name (``focus.step_ids``) is ``highlighted``, the
  steps it ran inside are ``on_path``.
- **Turns** of a session: a step's turn is its id's ``t<n>:`` prefix (``session_trace``); a
  message's turn is told by counting user messages (turn ``n`` starts at the ``n``-th user
  message) when there are exactly as many user messages as turns, else it is not told
  (``None``). A turn is highlighted when a score names it (``focus.turn_ids``) or one of its
  steps; its messages are then highlighted.
- **Tool calls**: the assistant message that asked for a highlighted tool step's call and the
  tool message that carried its result are highlighted with it.
- **Long conversations** (over ``COLLAPSE_OVER`` messages): the first ``KEEP_HEAD`` and last
  ``KEEP_TAIL`` messages are shown, and every highlighted message with one neighbour either
  side; the rest are ``collapsed`` (the page folds each run of them behind a control that
  expands it, the terminal prints how many it left out).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass

from pydantic import BaseModel, Field

from evaluator.models import Message, ReviewItem, Step, Trace

COLLAPSE_OVER = 12
KEEP_HEAD = 4
KEEP_TAIL = 4

_TURN_PREFIX = re.compile(r"^t(\d+):")


class MessageView(BaseModel):
    """One message of ``item.trace.messages``, in conversation order."""

    index: int = Field(description="Its position in item.trace.messages.")
    turn: int | None = Field(
        description="A session's turn (1-based) the message belongs to; null when the trace is "
        "not a session or its messages cannot be told apart by turn."
    )
    highlighted: bool = Field(
        description="Part of what the failing scores are about (their turn, or the call or "
        "result of a step they name)."
    )
    collapsed: bool = Field(
        description="In the middle of a long conversation: folded away until expanded."
    )


class StepView(BaseModel):
    """One step of ``item.trace.steps``, in tree order (depth-first by parent_id)."""

    index: int = Field(description="Its position in item.trace.steps.")
    id: str
    depth: int = Field(description="0 for a step without a parent, parent's depth + 1 else.")
    turn: int | None = Field(description="A session's turn (1-based) the step ran in.")
    highlighted: bool = Field(description="A step the failing scores name (focus.step_ids).")
    on_path: bool = Field(description="A step a highlighted step ran inside (an ancestor).")


@dataclass(frozen=True)
class Layout:
    conversation: list[MessageView]
    trajectory: list[StepView]
    highlighted_turns: list[int]
    # Named by a score but not in the trace (cut from a long session's middle, or a wrong id).
    unmatched_steps: list[str]


def step_turn(step_id: str) -> int | None:
    """The turn of a session step (``t3:call_1`` -> 3)."""
    found = _TURN_PREFIX.match(step_id)
    return int(found.group(1)) if found else None


def step_tree(steps: list[Step]) -> list[tuple[int, int]]:
    """(index, depth) of every step, depth-first by parent_id, children in their listed order.
    Iterative: a 1,000-step chain is as cheap as a flat list."""
    known = {step.id for step in steps}
    children: dict[str | None, list[int]] = defaultdict(list)
    for index, step in enumerate(steps):
        parent = step.parent_id if step.parent_id in known else None
        children[parent].append(index)
    ordered: list[tuple[int, int]] = []
    stack = [(index, 0) for index in reversed(children[None])]
    while stack:
        index, depth = stack.pop()
        ordered.append((index, depth))
        stack += [(child, depth + 1) for child in reversed(children[steps[index].id])]
    return ordered


def _message_turns(trace: Trace, messages: list[Message]) -> list[int | None]:
    turn_ids = trace.metadata.get("turn_ids")
    users = sum(1 for message in messages if message.role == "user")
    if not isinstance(turn_ids, list) or not turn_ids or users != len(turn_ids):
        return [None] * len(messages)
    turns: list[int | None] = []
    current: int | None = None
    for message in messages:
        if message.role == "user":
            current = (current or 0) + 1
        turns.append(current if current is not None else 1)  # a system prompt opens turn 1
    return turns


def unfolded(count: int, highlighted: set[int]) -> set[int]:
    """Which of ``count`` messages stay unfolded (see the module docstring)."""
    if count <= COLLAPSE_OVER:
        return set(range(count))
    shown = set(range(KEEP_HEAD)) | set(range(count - KEEP_TAIL, count))
    for index in highlighted:
        shown |= {index - 1, index, index + 1}
    return {index for index in shown if 0 <= index < count}


def layout(item: ReviewItem) -> Layout:
    trace = item.trace
    steps = trace.steps or []
    messages = trace.messages or []
    session = isinstance(trace.metadata.get("turn_ids"), list)
    focus_steps = set(item.focus.step_ids)
    by_id = {step.id: index for index, step in enumerate(steps)}
    # Ancestors of the highlighted steps.
    on_path: set[str] = set()
    for step_id in focus_steps & by_id.keys():
        parent = steps[by_id[step_id]].parent_id
        while parent is not None and parent in by_id and parent not in on_path:
            on_path.add(parent)
            parent = steps[by_id[parent]].parent_id
    trajectory = [
        StepView(
            index=index,
            id=steps[index].id,
            depth=depth,
            turn=step_turn(steps[index].id) if session else None,
            highlighted=steps[index].id in focus_steps,
            on_path=steps[index].id in on_path,
        )
        for index, depth in step_tree(steps)
    ]
    turn_ids = trace.metadata.get("turn_ids") if session else None
    turns = {
        position
        for position, turn_id in enumerate(turn_ids or [], 1)
        if turn_id in item.focus.turn_ids
    }
    turns |= {view.turn for view in trajectory if view.highlighted and view.turn is not None}
    # The calls and results of highlighted tool steps, by (turn, tool call id).
    calls = {
        (view.turn, steps[view.index].tool_call_id)
        for view in trajectory
        if view.highlighted and steps[view.index].tool_call_id
    }
    message_turns = _message_turns(trace, messages)

    def highlighted(index: int) -> bool:
        message, turn = messages[index], message_turns[index]
        if turn is not None and turn in turns:
            return True
        ids = [call.id for call in message.tool_calls or ()] + [message.tool_call_id or ""]
        # A message whose turn is unknown matches a call of any turn.
        return any((turn, i) in calls or (turn is None and _any_turn(calls, i)) for i in ids if i)

    marked = {index for index in range(len(messages)) if highlighted(index)}
    shown = unfolded(len(messages), marked)
    conversation = [
        MessageView(
            index=index,
            turn=message_turns[index],
            highlighted=index in marked,
            collapsed=index not in shown,
        )
        for index in range(len(messages))
    ]
    return Layout(
        conversation=conversation,
        trajectory=trajectory,
        highlighted_turns=sorted(turns),
        unmatched_steps=[step_id for step_id in item.focus.step_ids if step_id not in by_id],
    )


def _any_turn(calls: set[tuple[int | None, str | None]], call_id: str) -> bool:
    return any(known == call_id for _, known in calls)


def message_blocks(conversation: list[MessageView]) -> list[tuple[bool, list[MessageView]]]:
    """The conversation as runs of shown and of collapsed messages: (collapsed, messages)."""
    blocks: list[tuple[bool, list[MessageView]]] = []
    for view in conversation:
        if blocks and blocks[-1][0] == view.collapsed:
            blocks[-1][1].append(view)
        else:
            blocks.append((view.collapsed, [view]))
    return blocks


def display_value(value: object) -> str:
    """A step's arguments or result as text for people: a string as it is, JSON indented."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def display_arguments(arguments: str) -> str:
    """A tool call's arguments (JSON text as the model wrote them), indented when they parse."""
    try:
        return display_value(json.loads(arguments)) if arguments.strip() else ""
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return arguments
