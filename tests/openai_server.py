"""A real HTTP server speaking the OpenAI chat-completions protocol, for judge tests.

Answers are deterministic: every number in the requested JSON schema gets the value of a
``[[score=X]]`` directive found in the user prompt (default 0.9), booleans are ``X >= 0.5``,
enums take their first value (or the one named by ``[[label=Y]]``). Behaviour can be injected:
``latency_s``, ``reject_json_schema`` (a 400 like servers without structured output), and a
``script`` of per-request actions consumed in order: ``429`` (with Retry-After), ``500``,
``timeout`` (no answer before the client gives up), ``malformed`` (not JSON), ``violating``
(JSON that breaks the schema) and ``ok``. Every request is recorded with its arrival time.

Provider trouble for the resilience tests and bench/judge_errors.py: ``error_rate`` answers that
share of chat requests (once the script is used up) with one of ``error_actions`` at random
(seeded: ``seed``), ``error_latency_s`` is how long an error takes (real providers refuse fast;
default ``latency_s``), ``retry_after_s=None`` sends 429s without Retry-After, and ``down``
answers every request 503 (an outage). ``statuses`` is every answer's (arrival time, status).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_SCORE = re.compile(r"\[\[score=([0-9.]+)\]\]")
_LABEL = re.compile(r"\[\[label=([a-z_]+)\]\]")


@dataclass
class Recorded:
    at: float
    body: dict[str, Any]


# Decides a judge's score from the request (e.g. to simulate a better or worse judge version).
Scorer = Callable[[dict[str, Any]], float | None]


@dataclass
class FakeOpenAI:
    scorer: Scorer | None = None
    latency_s: float = 0.0
    timeout_sleep_s: float = 3.0
    retry_after_s: float | None = 0.2
    reject_json_schema: bool = False
    # A server that validates response_format as OpenAI does: JSON mode takes no "schema" key
    # (without it, an extra key is ignored, as many OpenAI-compatible servers do).
    reject_object_schema: bool = False
    # Requests whose messages contain this text are answered with malformed JSON, the repair
    # request included (one evaluation failing its schema, whatever the order of the requests).
    malformed_for: str | None = None
    script: deque[str] = field(default_factory=deque)
    error_rate: float = 0.0
    error_actions: tuple[str, ...] = ("429", "500")
    error_latency_s: float | None = None
    down: bool = False
    seed: int = 16
    requests: list[Recorded] = field(default_factory=list)
    statuses: list[tuple[float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def next_action(self) -> str:
        with self.lock:
            if self.down:
                return "503"
            if self.script:
                return self.script.popleft()
            if self.error_rate and self._rng.random() < self.error_rate:
                return self._rng.choice(self.error_actions)
            return "ok"

    def answered(self, at: float, status: int) -> None:
        with self.lock:
            self.statuses.append((at, status))

    def reset(self) -> None:
        """Forget the requests and answers so far (between runs against one server)."""
        with self.lock:
            self.requests.clear()
            self.statuses.clear()
            self.max_in_flight = 0

    def record(self, body: dict[str, Any]) -> None:
        with self.lock:
            self.requests.append(Recorded(time.time(), body))


# Integer fields where a low number is the good outcome.
_BAD_COUNTS = {"unsupported_claims", "noncommittal"}


def _value(
    schema: dict[str, Any], score: float, label: str | None, defs: dict[str, Any], name: str = ""
) -> Any:
    if "$ref" in schema:
        return _value(defs[schema["$ref"].split("/")[-1]], score, label, defs, name)
    if "enum" in schema:
        return label if label in schema["enum"] else schema["enum"][0]
    kind = schema.get("type")
    good = score >= 0.5
    if kind == "number":
        return score
    if kind == "integer":
        return (
            int(not good) * (2 if name == "unsupported_claims" else 1)
            if name in _BAD_COUNTS
            else int(good)
        )
    if kind == "boolean":
        return good
    if kind == "array":
        return [_value(schema.get("items", {}), score, label, defs, name) for _ in range(2)]
    if kind == "object" or "properties" in schema:
        return {
            k: _value(v, score, label, defs, k) for k, v in schema.get("properties", {}).items()
        }
    return f"fake judge reasoning (score {score})"


def _schema_in(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The first JSON Schema object written into the prompt (json_object mode)."""
    decoder = json.JSONDecoder()
    for message in messages:
        content = str(message["content"])
        for start in (i for i, c in enumerate(content) if c == "{"):
            try:
                candidate, _ = decoder.raw_decode(content[start:])
            except json.JSONDecodeError:
                continue
            if isinstance(candidate, dict) and "properties" in candidate:
                return candidate
    return {"properties": {}}


def answer_for(body: dict[str, Any], scorer: Scorer | None = None) -> dict[str, Any]:
    """The JSON object a perfectly obedient judge would return for this request (``scorer``,
    when given and not None for this request, decides the score instead of the directive)."""
    messages = body["messages"]
    text = "\n".join(str(m["content"]) for m in messages if m["role"] == "user")
    fmt = body.get("response_format") or {}
    schema = (
        fmt["json_schema"]["schema"] if fmt.get("type") == "json_schema" else _schema_in(messages)
    )
    score_match, label_match = _SCORE.search(text), _LABEL.search(text)
    score = float(score_match.group(1)) if score_match else 0.9
    chosen = scorer(body) if scorer is not None else None
    score = chosen if chosen is not None else score
    label = label_match.group(1) if label_match else None
    defs = schema.get("$defs", {})
    return {
        name: _value(prop, score, label, defs, name) for name, prop in schema["properties"].items()
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real providers
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.server.fake.answered(time.time(), status)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.server.fake.enter()
        try:
            self._answer()
        finally:
            self.server.fake.leave()

    def _answer(self) -> None:
        fake = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fake.record(body)
        action = "ok" if self.path.endswith("/embeddings") else fake.next_action()
        if fake.malformed_for and any(
            fake.malformed_for in str(m.get("content")) for m in body.get("messages", [])
        ):
            action = "malformed"
        delay = fake.latency_s
        if action in ("429", "500", "503") and fake.error_latency_s is not None:
            delay = fake.error_latency_s
        if delay:
            time.sleep(delay)
        if self.path.endswith("/embeddings"):
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [
                {"object": "embedding", "index": i, "embedding": _embed(str(t))}
                for i, t in enumerate(inputs)
            ]
            self._send(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": body["model"],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1},
                },
            )
            return
        if action == "429":
            refusal = {"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}}
            wait = {} if fake.retry_after_s is None else {"Retry-After": str(fake.retry_after_s)}
            self._send(429, refusal, wait)
            return
        if action in ("500", "503"):
            failure = {"error": {"message": "internal error", "type": "server_error"}}
            self._send(int(action), failure)
            return
        if action == "timeout":
            time.sleep(fake.timeout_sleep_s)
        if (
            fake.reject_json_schema
            and (body.get("response_format") or {}).get("type") == "json_schema"
        ):
            message = "Invalid parameter: response_format of type 'json_schema' is not supported"
            self._send(400, {"error": {"message": message, "type": "invalid_request_error"}})
            return
        response_format = body.get("response_format") or {}
        if fake.reject_object_schema and "schema" in response_format:
            message = "Unknown parameter: 'response_format.schema'."
            error = {
                "message": message,
                "type": "invalid_request_error",
                "code": "unknown_parameter",
            }
            self._send(400, {"error": error})
            return
        answer = answer_for(body, fake.scorer)
        if not body.get("response_format") and not answer:  # a plain chat request, not a judge
            last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
            content = f"Here is what the documents say about: {last}"
        elif action == "malformed":
            content = '{"reasoning": "cut off'
        elif action == "violating":
            content = json.dumps(
                {k: (7.5 if isinstance(v, float) else v) for k, v in answer.items()}
            )
        else:
            content = json.dumps(answer)
        prompt_chars = sum(len(m["content"]) for m in body["messages"])
        usage = {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(content) // 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        self._send(
            200,
            {
                "id": f"chatcmpl-{len(fake.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ],
                "usage": usage,
            },
        )


def _embed(text: str) -> list[float]:
    """A deterministic 16-dim bag-of-letters embedding (enough for similarity-based metrics)."""
    vector = [0.0] * 16
    for char in text.lower():
        vector[ord(char) % 16] += 1.0
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return [v / norm for v in vector]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default listen backlog of 5 refuses bursts of connections
    fake: FakeOpenAI


class OpenAIServer:
    """Runs FakeOpenAI on a free loopback port in a background thread."""

    def __init__(self) -> None:
        self.fake = FakeOpenAI()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self.fake
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
