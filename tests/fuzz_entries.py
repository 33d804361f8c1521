"""Hypothesis strategies for stream entries: valid traces, and anything else a client can XADD.

Shared by tests/test_fuzz_entries.py (a few hundred examples in CI) and bench/fuzz.py (a long
run). Each generated entry knows what it is meant to be: ``VALID`` entries must be scored,
``INVALID`` ones dead-lettered; ``ARBITRARY`` ones (random JSON for every field) may be either,
but must end in exactly one of the two.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from evaluator.constants import TRACE_FIELD
from evaluator.models import Trace

VALID, INVALID, ARBITRARY = "valid", "invalid", "arbitrary"
# Keeps generated payloads small enough that oversized ones are cheap to make.
MAX_TRACE_BYTES = 16 * 1024


@dataclass
class Entry:
    fields: dict[bytes, bytes]
    kind: str
    trace_id: str | None = None  # the id of a VALID entry's trace


# Text as apps send it: any Unicode but surrogates (they cannot be UTF-8) and NUL (no store
# keeps it; the sampler refuses it with a reason).
_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=60)
# Message texts as chats have them: up to a few paragraphs (a bound on texts was once missed
# because every generated text was shorter than it).
_prose = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=600)
_short = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=40
)
_finite = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_short, inner, max_size=4)
    ),
    max_leaves=12,
)
_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1))


@st.composite
def _messages(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A chat turn in OpenAI format: text or text parts, assistant tool calls answered by tool
    messages that name them."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append(
            {"role": draw(st.sampled_from(["system", "developer"])), "content": draw(_prose)}
        )
    for turn in range(draw(st.integers(1, 3))):
        content: Any = draw(_prose)
        if draw(st.booleans()):
            content = [{"type": "text", "text": draw(_prose)}]
        messages.append({"role": "user", "content": content})
        if draw(st.booleans()):
            call = f"call_{turn}"
            arguments = json.dumps(draw(st.dictionaries(_short, _json_leaf, max_size=2)))
            function = {"name": draw(_short), "arguments": arguments}
            tool_calls = [{"id": call, "type": "function", "function": function}]
            messages.append({"role": "assistant", "content": None, "tool_calls": tool_calls})
            messages.append({"role": "tool", "tool_call_id": call, "content": draw(_prose)})
        messages.append({"role": "assistant", "content": draw(_prose)})
    return messages


@st.composite
def _steps(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A trajectory: each step's parent (if any) an earlier step, any attempt number."""
    steps: list[dict[str, Any]] = []
    for index in range(draw(st.integers(1, 6))):
        step: dict[str, Any] = {
            "id": f"s{index}",
            "kind": draw(st.sampled_from(["llm", "tool", "retrieval", "agent", "chain", "other"])),
        }
        if index and draw(st.booleans()):
            step["parent_id"] = f"s{draw(st.integers(0, index - 1))}"
        extras = {
            "name": _short,
            "arguments": st.one_of(_text, st.dictionaries(_short, _json, max_size=3)),
            "result": _json,
            "error": _text,
            "attempt": st.integers(1, 5),
            "latency_ms": _finite,
            "model": _short,
            "tool_call_id": _short,
            "tokens": st.fixed_dictionaries({"input": st.integers(0, 10**6)}),
            "started_at": _times.map(lambda t: t.isoformat()),
        }
        for name in draw(st.lists(st.sampled_from(sorted(extras)), unique=True, max_size=4)):
            step[name] = draw(extras[name])
        steps.append(step)
    return steps


@st.composite
def valid_traces(draw: st.DrawFn, index: int, tag: str = "") -> Entry:
    """A trace the sampler must accept: every field of the right type, times naive or not."""
    trace_id = f"ok-{tag}{index}"
    fields: dict[str, Any] = {"trace_id": trace_id, "output": draw(_text)}
    optional = {
        "input": _text,
        "contexts": st.lists(_text, max_size=3),
        "retrieval": st.booleans(),
        "model": _short,
        "prompt_version": _short,
        "tenant": _short,
        "feature": _short,
        "latency_ms": _finite,
        "cost_usd": _finite,
        "finish_reason": st.sampled_from(["stop", "length", "content_filter", "tool_calls"]),
        "error": _text,
        "user_feedback": st.sampled_from(["positive", "negative"]),
        "tokens": st.fixed_dictionaries(
            {"input": st.integers(0, 10**6), "output": st.integers(0, 10**6)}
        ),
        "metadata": st.dictionaries(_short, _json, max_size=4),
        "session_id": _short,
        "messages": _messages(),
        "steps": _steps(),
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        fields[name] = draw(optional[name])
    if draw(st.booleans()):
        start = draw(_times)
        end = start + timedelta(milliseconds=draw(st.integers(0, 10**7)))
        # Either side may carry a zone or not: naive means UTC.
        fields["started_at"] = _iso(start, draw(st.booleans()))
        fields["ended_at"] = _iso(end, draw(st.booleans()))
    payload = json.dumps(fields, ensure_ascii=draw(st.booleans())).encode()
    if len(payload) > MAX_TRACE_BYTES:  # rare: keep it valid by dropping the big fields
        payload = json.dumps({"trace_id": trace_id, "output": "short"}).encode()
    Trace.model_validate_json(payload, strict=True)  # the generator itself must be right
    return Entry({TRACE_FIELD.encode(): payload}, VALID, trace_id)


def _iso(moment: datetime, with_zone: bool) -> str:
    return moment.replace(tzinfo=UTC).isoformat() if with_zone else moment.isoformat()


def _dumps(value: Any) -> bytes:
    """JSON as a careless client writes it: NaN and Infinity included."""
    return json.dumps(value, allow_nan=True).encode()


_any_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),  # NaN and infinities included
        st.text(max_size=30),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_TRACE_FIELDS = sorted(Trace.model_fields)


@st.composite
def arbitrary_json_traces(draw: st.DrawFn) -> Entry:
    """An object with arbitrary JSON values for a random set of Trace fields (and maybe others)."""
    names = draw(st.lists(st.sampled_from([*_TRACE_FIELDS, "extra"]), unique=True, max_size=8))
    document = {name: draw(_any_json) for name in names}
    trace_id = document.get("trace_id")
    if isinstance(trace_id, str) and trace_id.startswith("ok-"):
        document["trace_id"] = "x" + trace_id  # never collide with a VALID entry's id
    return Entry({TRACE_FIELD.encode(): _dumps(document)}, ARBITRARY)


@st.composite
def hostile_entries(draw: st.DrawFn) -> Entry:
    """Entries that must be dead-lettered: each breaks one rule in a way real clients do."""
    base = {"trace_id": f"bad-{draw(st.integers(0, 10**9))}", "output": "fine"}
    kind = draw(
        st.sampled_from(
            [
                "bytes_fields",
                "no_trace_field",
                "non_utf8_payload",
                "non_finite",
                "deep",
                "huge",
                "loose_types",
                "lone_surrogate",
                "nul",
                "times_reversed",
                "not_json",
                "bad_message",
                "bad_step",
            ]
        )
    )
    if kind == "bytes_fields":  # arbitrary bytes as field names and values, no trace field
        fields = draw(
            st.dictionaries(
                st.binary(min_size=1, max_size=12).filter(lambda b: b != TRACE_FIELD.encode()),
                st.binary(max_size=64),
                min_size=1,
                max_size=4,
            )
        )
        return Entry(fields, INVALID)
    if kind == "no_trace_field":
        return Entry({b"\xff\xfe": draw(st.binary(max_size=32))}, INVALID)
    if kind == "non_utf8_payload":
        junk = draw(st.sampled_from([b"\xff", b"\xfe\xfe", b"\xc3\x28", b"\xed\xa0\x80"]))
        payload = f'{{"trace_id": "{base["trace_id"]}", "output": "'.encode() + junk + b'"}'
        return Entry({TRACE_FIELD.encode(): payload}, INVALID)
    if kind == "non_finite":
        name = draw(st.sampled_from(["cost_usd", "latency_ms", "metadata"]))
        bad = draw(st.sampled_from([math.inf, -math.inf, math.nan]))
        value: Any = {"x": [1, bad]} if name == "metadata" else bad
        if draw(st.booleans()) and name != "metadata":
            return Entry(
                {TRACE_FIELD.encode(): _dumps(base)[:-1] + f', "{name}": 1e400}}'.encode()}, INVALID
            )
        return Entry({TRACE_FIELD.encode(): _dumps({**base, name: value})}, INVALID)
    if kind == "deep":
        depth = draw(st.integers(300, 20_000))
        payload = _dumps(base)[:-1] + b', "metadata": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
        return Entry({TRACE_FIELD.encode(): payload}, INVALID)
    if kind == "huge":
        size = draw(st.integers(MAX_TRACE_BYTES + 1, 4 * MAX_TRACE_BYTES))
        char = draw(st.sampled_from(["a", "é", "😀", " "]))
        return Entry({TRACE_FIELD.encode(): _dumps({**base, "output": char * size})}, INVALID)
    if kind == "loose_types":
        name, value = draw(
            st.sampled_from(
                [("retrieval", "yes"), ("latency_ms", "812"), ("tokens", {"input": 3.0}),
                 ("cost_usd", "0.1"), ("contexts", "one"), ("started_at", 1700000000)]
            )
        )  # fmt: skip
        return Entry({TRACE_FIELD.encode(): _dumps({**base, name: value})}, INVALID)
    if kind == "lone_surrogate":
        escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d x"]))
        payload = (
            b'{"trace_id": "'
            + base["trace_id"].encode()
            + b'", "output": "'
            + escape.encode()
            + b'"}'
        )
        return Entry({TRACE_FIELD.encode(): payload}, INVALID)
    if kind == "nul":
        name = draw(st.sampled_from(["output", "input", "tenant", "metadata"]))
        value = {"k": "a\x00b"} if name == "metadata" else "a\x00b"
        return Entry({TRACE_FIELD.encode(): _dumps({**base, name: value})}, INVALID)
    if kind == "bad_message":  # each breaks one rule of the chat format
        message = draw(
            st.sampled_from(
                [{"role": "tool", "tool_call_id": "never-made", "content": "x"},
                 {"role": "tool", "content": "no call id"}, {"role": "user"},
                 {"role": "robot", "content": "x"}, {"role": "user", "content": "a\x00"},
                 {"role": "user", "content": "x", "tool_calls": []},
                 {"role": "user", "content": [{"type": "image_url", "text": "x"}]}]
            )
        )  # fmt: skip
        return Entry({TRACE_FIELD.encode(): _dumps({**base, "messages": [message]})}, INVALID)
    if kind == "bad_step":  # one broken step after a valid one
        step = draw(
            st.sampled_from(
                [{"id": "b", "kind": "tool", "parent_id": "later"}, {"id": "a", "kind": "tool"},
                 {"id": "b", "kind": "robot"}, {"id": "b", "kind": "tool", "attempt": 0},
                 {"id": "b", "kind": "tool", "attempt": "2"},
                 {"id": "b", "kind": "tool", "error": "\x00"},
                 {"id": "b", "kind": "tool", "result": {"x": math.nan}},
                 {"id": "b", "kind": "llm", "latency_ms": math.inf}, {"kind": "tool"},
                 {"id": "b", "kind": "tool", "started_at": "2026-01-02T00:00:00",
                  "ended_at": "2026-01-01T00:00:00Z"}]
            )
        )  # fmt: skip
        steps = [{"id": "a", "kind": "agent"}, step]
        return Entry({TRACE_FIELD.encode(): _dumps({**base, "steps": steps})}, INVALID)
    if kind == "times_reversed":
        doc = {**base, "started_at": "2026-01-01T00:00:02", "ended_at": "2026-01-01T00:00:01Z"}
        return Entry({TRACE_FIELD.encode(): _dumps(doc)}, INVALID)
    return Entry({TRACE_FIELD.encode(): draw(st.binary(max_size=64)).replace(b"{", b"")}, INVALID)


@st.composite
def entry_batches(draw: st.DrawFn, max_size: int = 30) -> list[Entry]:
    """Valid traces interleaved with hostile and arbitrary entries, in random order."""
    count = draw(st.integers(1, max_size))
    tag = f"{draw(st.integers(0, 2**32)):x}-"  # ids stay unique across examples of one run
    entries = []
    for index in range(count):
        maker = draw(st.sampled_from(["valid", "valid", "hostile", "arbitrary"]))
        if maker == "valid":
            entries.append(draw(valid_traces(index, tag)))
        elif maker == "hostile":
            entries.append(draw(hostile_entries()))
        else:
            entries.append(draw(arbitrary_json_traces()))
    return entries
