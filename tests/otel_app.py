"""A small RAG app instrumented with OpenTelemetry, as a user would write it: the official
OpenAI instrumentation (opentelemetry-instrumentation-openai-v2) for the LLM call, a hand-made
retrieval span, and the SDK's OTLP/HTTP exporter pointed at Evalfleet's receiver.

    python tests/otel_app.py OPENAI_BASE_URL OTLP_TRACES_ENDPOINT N [spans|events]

``spans`` (default): message content on the spans, in the current GenAI conventions.
``events``: the instrumentation's default conventions, message content as log-based events
(``gen_ai.user.message``, ``gen_ai.choice``) exported by the SDK's OTLP/HTTP log exporter to the
same receiver's ``/v1/logs``.

Prints one JSON line per request: the trace id and what the app sent and received.
"""

from __future__ import annotations

import json
import os
import sys

# Before the instrumentation is imported: it reads these once.
os.environ.update(
    {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
    if sys.argv[4:5] == ["events"]
    else {
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY",
    }
)

import openai
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

DOCUMENTS = {
    "rotate": "API keys are rotated under Settings > Security > API keys.",
    "invoice": "Invoices are available under Billing > Invoices as PDF.",
}


def main() -> None:
    base_url, endpoint, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    resource = Resource.create({"service.name": "support-bot", "service.version": "2.1.0"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    logs = LoggerProvider(resource=resource)
    logs_endpoint = endpoint.removesuffix("/v1/traces") + "/v1/logs"
    logs.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=logs_endpoint)))
    OpenAIInstrumentor().instrument(tracer_provider=provider, logger_provider=logs)
    tracer = provider.get_tracer("support-bot")
    client = openai.OpenAI(base_url=base_url, api_key="sk-test")
    for index in range(count):
        topic = "rotate" if index % 2 == 0 else "invoice"
        question = f"Question {index}: how does {topic} work?"
        with tracer.start_as_current_span("answer_question") as root:
            root.set_attribute("evalfleet.tenant", "acme")
            root.set_attribute("evalfleet.prompt_version", "support-v7")
            with tracer.start_as_current_span("retrieve") as retrieval:
                retrieval.set_attribute("gen_ai.operation.name", "retrieval")
                retrieval.set_attribute(
                    "gen_ai.retrieval.documents",
                    json.dumps([{"id": topic, "content": DOCUMENTS[topic]}]),
                )
            completion = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[
                    {"role": "system", "content": "Answer from the documents: " + DOCUMENTS[topic]},
                    {"role": "user", "content": question},
                ],
            )
            trace_id = f"{root.get_span_context().trace_id:032x}"
        print(
            json.dumps(
                {
                    "trace_id": trace_id,
                    "question": question,
                    "answer": completion.choices[0].message.content,
                    "context": DOCUMENTS[topic],
                }
            ),
            flush=True,
        )
    logs.shutdown()  # flushes the batch processors
    provider.shutdown()


if __name__ == "__main__":
    main()
