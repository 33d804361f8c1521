"""A small tool-using agent instrumented with OpenTelemetry, as a user would write it: the
``openai`` client with tool calling, the official OpenAI instrumentation
(opentelemetry-instrumentation-openai-v2) for every chat call, hand-made ``execute_tool`` spans
for the tools and an ``invoke_agent`` span around each turn (GenAI semantic conventions), and
the SDK's OTLP/HTTP exporter pointed at Evalfleet's receiver.

    python tests/agent_app.py OPENAI_BASE_URL OTLP_TRACES_ENDPOINT [SESSIONS]

Runs the first SESSIONS scripted conversations (default: all of ``CONVERSATIONS``), each several
user turns; every turn resends the whole history (with the tool calls and their results) and is
one trace, whose spans carry ``session.id`` and ``gen_ai.conversation.id``.

Two tools: ``get_weather(city)`` and ``convert_currency(amount, from, to)``. The converter
fails on some inputs: an unknown currency raises every time (the agent retries once, then
reports the failure to the model as the tool's result), and an amount over 10,000 times out on
the first attempt only (the retry succeeds). A failed attempt is an ``execute_tool`` span with
status ERROR, ``error.type`` and the exception recorded; its retry is a new span for the same
tool call id.

Prints one JSON line per turn: session, trace id, the user's text, the answer, and each tool
attempt (name, arguments, error).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

# Before the instrumentation is imported: it reads these once.
os.environ.update(
    {
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY",
    }
)

import openai
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

MODEL = "gpt-4o-mini"
AGENT = "travel-helper"
TENANT = "acme"
MAX_MODEL_CALLS = 4  # per turn: an agent that keeps asking for tools is stopped
SYSTEM = "You help travellers with the weather and currency conversion. Use the tools."

# (session id, the user's turns). Session 3 re-asks after a failure and complains.
CONVERSATIONS: list[tuple[str, list[str]]] = [
    ("trip-paris", ["What is the weather in Paris?", "Convert 120 EUR to USD", "Thanks!"]),
    ("trip-oslo", ["Convert 15000 NOK to EUR", "And what is the weather in Oslo?"]),
    (
        "trip-mars",
        [
            "Convert 250 USD to XYZ",
            "That's not what I asked, convert 250 USD to XYZ please",
            "What is the weather in Lisbon?",
        ],
    ),
]

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount between two ISO 4217 currencies.",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "from": {"type": "string"},
                    "to": {"type": "string"},
                },
                "required": ["amount", "from", "to"],
            },
        },
    },
]

WEATHER = {"Paris": (18, "sunny"), "Oslo": (4, "snow"), "Lisbon": (22, "clear")}
USD_PER_UNIT = {"USD": 1.0, "EUR": 1.08, "NOK": 0.093, "GBP": 1.27}


class RateServiceTimeout(TimeoutError):
    """The (imaginary) exchange-rate service did not answer in time."""


def get_weather(arguments: dict[str, Any]) -> dict[str, Any]:
    city = str(arguments["city"])
    if city not in WEATHER:
        raise LookupError(f"no weather station for {city}")
    temperature, conditions = WEATHER[city]
    return {"city": city, "temperature_c": temperature, "conditions": conditions}


class CurrencyConverter:
    """Fails on an unknown currency; a large amount times out once (the rate service is slow
    for big conversions), then works."""

    def __init__(self) -> None:
        self.timed_out: set[str] = set()

    def __call__(self, arguments: dict[str, Any]) -> dict[str, Any]:
        amount, source, target = float(arguments["amount"]), arguments["from"], arguments["to"]
        for code in (source, target):
            if code not in USD_PER_UNIT:
                raise ValueError(f"unknown currency {code}")
        key = json.dumps(arguments, sort_keys=True)
        if amount > 10_000 and key not in self.timed_out:
            self.timed_out.add(key)
            raise RateServiceTimeout("exchange-rate service timed out after 2s")
        converted = round(amount * USD_PER_UNIT[source] / USD_PER_UNIT[target], 2)
        return {"amount": converted, "currency": target}


class Agent:
    def __init__(self, client: openai.OpenAI, tracer: Tracer) -> None:
        self.client = client
        self.tracer = tracer
        self.tools: dict[str, Any] = {
            "get_weather": get_weather,
            "convert_currency": CurrencyConverter(),
        }

    def run_tool(
        self, call: Any, session_id: str, attempts: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Run one tool call, retrying once after a failure; the tool message for the model
        (the result, or the error when both attempts failed)."""
        name, raw_arguments = call.function.name, call.function.arguments
        arguments = json.loads(raw_arguments)
        error = ""
        for _ in range(2):
            with self.tracer.start_as_current_span(
                f"execute_tool {name}", kind=SpanKind.INTERNAL, record_exception=False,
                set_status_on_exception=False,
            ) as span:  # fmt: skip
                span.set_attributes(
                    {
                        "gen_ai.operation.name": "execute_tool",
                        "gen_ai.tool.name": name,
                        "gen_ai.tool.type": "function",
                        "gen_ai.tool.call.id": call.id,
                        "gen_ai.tool.call.arguments": raw_arguments,
                        "session.id": session_id,
                        "gen_ai.conversation.id": session_id,
                    }
                )
                try:
                    result = self.tools[name](arguments)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, str(exc)))
                    span.set_attribute("error.type", type(exc).__qualname__)
                    attempts.append({"name": name, "arguments": arguments, "error": error})
                    continue
                content = json.dumps(result)
                span.set_attribute("gen_ai.tool.call.result", content)
                attempts.append({"name": name, "arguments": arguments, "error": None})
                return {"role": "tool", "tool_call_id": call.id, "content": content}
        failure = json.dumps({"error": error})
        return {"role": "tool", "tool_call_id": call.id, "content": failure}

    def turn(self, session_id: str, history: list[dict[str, Any]], text: str) -> dict[str, Any]:
        """One user turn: the model is called with the whole history and the tools until it
        answers; the history grows by the turn's messages."""
        attempts: list[dict[str, Any]] = []
        with self.tracer.start_as_current_span(
            f"invoke_agent {AGENT}", kind=SpanKind.INTERNAL
        ) as root:
            root.set_attributes(
                {
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": AGENT,
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": MODEL,
                    "gen_ai.conversation.id": session_id,
                    "session.id": session_id,
                    "evalfleet.tenant": TENANT,
                    "evalfleet.prompt_version": "travel-v3",
                }
            )
            history.append({"role": "user", "content": text})
            answer = ""
            for _ in range(MAX_MODEL_CALLS):
                completion = self.client.chat.completions.create(
                    model=MODEL,
                    messages=history,  # type: ignore[arg-type]
                    tools=TOOLS,  # type: ignore[arg-type]
                )
                message = completion.choices[0].message
                history.append(message.model_dump(exclude_none=True, exclude_unset=True))
                if not message.tool_calls:
                    answer = message.content or ""
                    break
                for call in message.tool_calls:
                    history.append(self.run_tool(call, session_id, attempts))
            trace_id = f"{root.get_span_context().trace_id:032x}"
        return {
            "session_id": session_id,
            "trace_id": trace_id,
            "user": text,
            "answer": answer,
            "tools": attempts,
        }


def main() -> None:
    base_url, endpoint = sys.argv[1], sys.argv[2]
    sessions = int(sys.argv[3]) if len(sys.argv) > 3 else len(CONVERSATIONS)
    resource = Resource.create({"service.name": AGENT, "service.version": "0.3.1"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    agent = Agent(openai.OpenAI(base_url=base_url, api_key="sk-test"), provider.get_tracer(AGENT))
    for session_id, turns in CONVERSATIONS[:sessions]:
        history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
        for text in turns:
            print(json.dumps(agent.turn(session_id, history, text)), flush=True)
    provider.shutdown()  # flushes the batch processor


if __name__ == "__main__":
    main()
