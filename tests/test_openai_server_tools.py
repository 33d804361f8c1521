"""Tool calling in the OpenAI-protocol test server, through the real ``openai`` client: scripted
tool calls and final answers, and the requests OpenAI refuses refused the same way (400,
``invalid_request_error``, the parameter named)."""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_server import OpenAIServer

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CURRENCY_TOOL: Any = {"type": "function", "function": {"name": "convert_currency"}}
# What OpenAI's API reference says a function name is, written independently of the server.
OPENAI_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def client(server: OpenAIServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def refusal(server: OpenAIServer, **request: Any) -> dict[str, Any]:
    """The error body of a request the server must refuse with 400."""
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(model="gpt-4o-mini", **request)
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    return body


def asks_weather(call_id: str = "call_1") -> list[dict[str, Any]]:
    call = {"id": call_id, "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    return [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]


def test_a_tool_call_then_an_answer_that_uses_its_result(server: OpenAIServer) -> None:
    messages: list[Any] = [{"role": "user", "content": "Convert 12.5 eur to usd, please"}]
    first = client(server).chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL, CURRENCY_TOOL]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.function.name == "convert_currency"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert arguments == {"amount": 12.5, "from": "EUR", "to": "USD"}
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"amount": 13.5}'},
    ]
    final = client(server).chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL, CURRENCY_TOOL]
    )
    assert final.choices[0].finish_reason == "stop"
    assert "13.5" in (final.choices[0].message.content or "")
    # The same conversation gets the same call id (a replay is deterministic); a later one not.
    again = client(server).chat.completions.create(
        model="gpt-4o-mini", messages=messages[:1], tools=[WEATHER_TOOL, CURRENCY_TOOL]
    )
    assert [c.id for c in again.choices[0].message.tool_calls or ()] == [call.id]


def test_a_failed_tool_is_owned_up_to_and_no_tool_no_call(server: OpenAIServer) -> None:
    messages = [*asks_weather(), {"role": "tool", "tool_call_id": "call_1",
                                  "content": '{"error": "station offline"}'}]  # fmt: skip
    final = client(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],
    )
    assert (final.choices[0].message.content or "").startswith("Sorry, I could not")
    # Weather asked, but only the converter offered: the model answers in text.
    plain = client(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[CURRENCY_TOOL],
    )
    assert plain.choices[0].finish_reason == "stop" and not plain.choices[0].message.tool_calls


def test_tool_messages_must_answer_the_calls_just_made(server: OpenAIServer) -> None:
    stray = [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_1",
                                                  "content": "18"}]  # fmt: skip
    body = refusal(server, messages=stray)
    assert body["param"] == "messages.[1].role"
    assert "must be a response to a preceeding message with 'tool_calls'" in body["message"]

    wrong_id = [*asks_weather(), {"role": "tool", "tool_call_id": "call_2", "content": "18"}]
    assert refusal(server, messages=wrong_id)["param"] == "messages.[2].tool_call_id"

    unanswered = [*asks_weather(), {"role": "user", "content": "well?"}]
    body = refusal(server, messages=unanswered)
    assert body["param"] == "messages.[1].role" and "call_1" in body["message"]
    assert refusal(server, messages=asks_weather())["param"] == "messages.[1].role"

    # A tool message after a user message that follows the call answers nothing.
    late = [*asks_weather(), {"role": "tool", "tool_call_id": "call_1", "content": "18"},
            {"role": "user", "content": "and?"},
            {"role": "tool", "tool_call_id": "call_1", "content": "18"}]  # fmt: skip
    assert refusal(server, messages=late)["param"] == "messages.[4].role"


def test_tools_are_validated(server: OpenAIServer) -> None:
    hello = [{"role": "user", "content": "hello"}]
    assert refusal(server, messages=hello, tools=[])["code"] == "empty_array"
    kind = refusal(server, messages=hello, tools=[{"type": "web", "function": {"name": "f"}}])
    assert kind["param"] == "tools[0].type"
    nameless = refusal(server, messages=hello, tools=[WEATHER_TOOL, {"type": "function",
                                                                    "function": {}}])  # fmt: skip
    assert (nameless["param"], nameless["code"]) == ("tools[1].function.name",
                                                     "missing_required_parameter")  # fmt: skip


# Any text; names OpenAI accepts; names of the right characters around the 64-character bound.
NAMES = (
    st.text(st.characters(codec="utf-8"), max_size=70)
    | st.from_regex(OPENAI_NAME, fullmatch=True)
    | st.text("abzAZ09_-", min_size=62, max_size=66)
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=NAMES)
def test_function_names_accepted_exactly_when_openai_accepts_them(
    server: OpenAIServer, name: str
) -> None:
    tools: Any = [{"type": "function", "function": {"name": name}}]
    messages: Any = [{"role": "user", "content": "hello"}]
    if OPENAI_NAME.fullmatch(name):
        reply = client(server).chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=tools
        )
        assert reply.choices[0].finish_reason == "stop"
    else:
        body = refusal(server, messages=messages, tools=tools)
        assert body["param"] == "tools[0].function.name"
        assert body["code"] in {"invalid_value", "string_above_max_length", "empty_string"}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(calls=st.integers(1, 4), answered=st.data())
def test_a_call_left_unanswered_is_refused(
    server: OpenAIServer, calls: int, answered: st.DataObject
) -> None:
    """Parallel tool calls: the request is accepted when every call has its tool message (in any
    order), refused naming the calls left out otherwise."""
    ids = [f"call_{n}" for n in range(calls)]
    answers = answered.draw(st.lists(st.sampled_from(ids), unique=True))
    asked = {"role": "assistant", "content": None, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        for i in ids
    ]}  # fmt: skip
    replies = [{"role": "tool", "tool_call_id": i, "content": "18"} for i in answers]
    messages: Any = [{"role": "user", "content": "weather?"}, asked, *replies]
    missing = [i for i in ids if i not in answers]
    if missing:
        body = refusal(server, messages=messages, tools=[WEATHER_TOOL])
        assert body["param"] == "messages.[1].role"
        assert body["message"].endswith(", ".join(missing))
    else:
        reply = client(server).chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL]
        )
        assert reply.choices[0].finish_reason == "stop"
