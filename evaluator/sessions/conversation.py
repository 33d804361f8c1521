"""A completed session as one Trace: the whole conversation, for judges and for reviewers.

Apps send the model the history again on every turn, so turn ``n``'s ``messages`` usually start
with turn ``n-1``'s; the conversation is every turn's messages with what an earlier turn already
said left out (the longest common prefix), and each turn's answer (``output``) appended when its
messages do not end with it. A turn without messages contributes its ``input`` as a user message
and its ``output`` as the reply. Steps of every turn are kept in order, their ids prefixed with
the turn's index (``t3:call_1``) so that they stay unique within the session.

The result is an ordinary, valid Trace whose ``trace_id`` is the session's subject
(``session:<digest>``): every judge, sink and review path that takes a Trace takes a session too.
Over ``MAX_MESSAGES`` / ``MAX_STEPS`` the middle is dropped (first and last kept) and
``metadata.dropped_messages`` / ``dropped_steps`` say how many; judges apply their own, tighter
rendering rule (``judging.files``).
"""

from __future__ import annotations

from typing import Any

from evaluator.models import MAX_MESSAGES, MAX_STEPS, Message, Step, TokenUsage, Trace
from evaluator.sessions.heuristics import Session


def conversation(turns: tuple[Trace, ...]) -> list[Message]:
    """The session's messages in order, each said once (see the module docstring)."""
    said: list[Message] = []
    for turn in turns:
        sent = list(turn.messages or [Message(role="user", content=turn.input)])
        shared = 0
        while shared < min(len(said), len(sent)) and said[shared] == sent[shared]:
            shared += 1
        if shared < len(said) and shared < len(sent):
            shared = _overlap(said, sent)
        said.extend(sent[shared:])
        last = said[-1] if said else None
        answered = last is not None and last.role == "assistant" and last.text == turn.output
        if not answered and (turn.output or turn.error is None):
            said.append(Message(role="assistant", content=turn.output))
    return said


def _overlap(said: list[Message], sent: list[Message]) -> int:
    """How many leading messages of ``sent`` end ``said`` (an app that trims its history)."""
    for start in range(max(0, len(said) - len(sent)), len(said)):
        tail = said[start:]
        if sent[: len(tail)] == tail:
            return len(tail)
    return 0


def _prefixed(turn_index: int, step: Step) -> Step:
    prefix = f"t{turn_index}:"
    return step.model_copy(
        update={
            "id": (prefix + step.id)[:256],
            "parent_id": None if step.parent_id is None else (prefix + step.parent_id)[:256],
        }
    )


def _keep_ends(items: list[Any], limit: int) -> tuple[list[Any], int]:
    if len(items) <= limit:
        return items, 0
    head = limit // 2
    return items[:head] + items[len(items) - (limit - head) :], len(items) - limit


def answered_tool_calls(messages: list[Message]) -> list[Message]:
    """Drop tool messages whose call was cut out with the middle (a Trace requires the call)."""
    called: set[str] = set()
    kept = []
    for message in messages:
        if message.role == "tool" and message.tool_call_id not in called:
            continue
        called.update(call.id for call in message.tool_calls or ())
        kept.append(message)
    return kept


def without_dangling_parents(steps: list[Step]) -> list[Step]:
    """Steps whose parent was cut out with the middle become roots (a Trace requires a step's
    parent to be an earlier step of it)."""
    kept = {step.id for step in steps}
    return [
        step if step.parent_id is None or step.parent_id in kept
        else step.model_copy(update={"parent_id": None})
        for step in steps
    ]  # fmt: skip


def session_trace(session: Session) -> Trace:
    """The session as one Trace (see the module docstring)."""
    turns = session.turns
    messages, dropped_messages = _keep_ends(conversation(turns), MAX_MESSAGES)
    steps = [_prefixed(i, step) for i, turn in enumerate(turns, 1) for step in turn.steps or ()]
    steps, dropped_steps = _keep_ends(steps, MAX_STEPS)
    steps = without_dangling_parents(steps)
    tokens = [turn.tokens for turn in turns if turn.tokens is not None]
    costs = [turn.cost_usd for turn in turns if turn.cost_usd is not None]
    first, last = turns[0], turns[-1]
    metadata: dict[str, Any] = {
        "level": "session",
        "session_version": session.version,
        "turn_ids": [turn.trace_id for turn in turns],
    }
    for key in ("environment", "langfuse_environment"):  # where the app's scores belong
        if key in last.metadata:
            metadata[key] = last.metadata[key]
    if session.missing:
        metadata["missing_turns"] = len(session.missing)
    if dropped_messages:
        metadata["dropped_messages"] = dropped_messages
    if dropped_steps:
        metadata["dropped_steps"] = dropped_steps
    return Trace(
        trace_id=session.subject,
        input=first.input,
        output=last.output,
        model=last.model,
        prompt_version=last.prompt_version,
        app_version=last.app_version,
        tenant=session.tenant,
        feature=last.feature,
        error=next((t.error for t in reversed(turns) if t.error), None),
        tokens=TokenUsage(input=sum(t.input for t in tokens), output=sum(t.output for t in tokens))
        if tokens
        else None,
        cost_usd=sum(costs) if costs else None,
        user_feedback="negative"
        if any(t.user_feedback == "negative" for t in turns)
        else last.user_feedback,
        metadata=metadata,
        started_at=first.started_at,
        ended_at=last.ended_at,
        session_id=session.session_id,
        messages=answered_tool_calls(messages),
        steps=steps or None,
    )
