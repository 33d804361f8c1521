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

Usage is billed as characters / 4 of the messages, and reports
``prompt_tokens_details.cached_tokens`` by OpenAI's prompt-caching rule: a prompt of at least
1,024 tokens is served from the cache up to the longest prefix an earlier request to the same
model began with, counted at 1,024 tokens and then in whole 128-token blocks
(``cached_prefix_tokens``; ``cached_tokens`` is the total so far).

Tool calling (``tool_request_problem``, ``tool_reply``): a request is first validated as the
real API validates it — ``tools[].type`` is ``function``, ``tools[].function.name`` matches
``^[a-zA-Z0-9_-]+$`` and has at most 64 characters, a ``tool`` message answers a tool call of
the assistant message just before it (or of the tool messages after that one), and every
tool call of an assistant message is answered before the next other message — and refused with
OpenAI's 400 otherwise. A request offering ``tools`` whose last message is the user's is
answered with a scripted ``tool_calls`` reply (``finish_reason: tool_calls``): the tool is
picked by a keyword of the last user message (``weather`` → a tool named ``get_weather`` with
the city after "in", an amount and two currency codes → ``convert_currency``), with call ids
derived from the request (so a replay gets the same ids). After ``tool`` messages the reply is
a final text that uses their results, and owns up to a result that reports an error.
"""

from __future__ import annotations

import hashlib
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

# OpenAI's prompt caching: prompts from 1,024 tokens, cache hits in 128-token increments.
CACHE_MIN_TOKENS, CACHE_BLOCK_TOKENS = 1024, 128
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
    # Digests of every cacheable prompt prefix seen (see cached_prefix_tokens); a provider's
    # cache outlives a reset(), so this does too.
    prompt_cache: set[str] = field(default_factory=set)
    cached_tokens: int = 0

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

    def cached_prefix_tokens(self, body: dict[str, Any]) -> int:
        """The prompt tokens of ``body`` OpenAI would read from its prompt cache (see the module
        docstring), remembering this prompt's prefixes for the requests after it."""
        text = "".join(f"\x1e{m['role']}\x1f{m.get('content') or ''}" for m in body["messages"])
        tokens = sum(len(str(m.get("content") or "")) for m in body["messages"]) // 4
        cuts = range(CACHE_MIN_TOKENS, tokens + 1, CACHE_BLOCK_TOKENS)
        keys = [
            hashlib.sha256(f"{body['model']}\x00{text[: 4 * cut]}".encode()).hexdigest()
            for cut in cuts
        ]
        with self.lock:
            hits = [cut for cut, key in zip(cuts, keys, strict=True) if key in self.prompt_cache]
            self.prompt_cache.update(keys)
            cached = max(hits, default=0)
            self.cached_tokens += cached
        return cached


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
        if _answer_tool_calling(self, body):
            return
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
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_chars // 4,
            "completion_tokens": len(content) // 4,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        usage["prompt_tokens_details"] = {"cached_tokens": fake.cached_prefix_tokens(body)}
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


# Tool calling: validation as the real API does it, and a scripted agent-facing model.

_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]+")
_MAX_TOOL_NAME = 64
_CITY = re.compile(r"\bin\s+([A-Z][\w-]*(?:\s+[A-Z][\w-]*)*)")
_CONVERSION = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]{3})\s+(?:to|in|into)\s+([A-Za-z]{3})\b")


def _invalid(message: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"message": message, "type": "invalid_request_error", "param": param, "code": code}


def _name_problem(name: Any, where: str) -> dict[str, Any] | None:
    """OpenAI's refusal of a function name (in ``tools`` or in a message's tool calls)."""
    if not isinstance(name, str):
        return _invalid(
            f"Missing required parameter: '{where}'.", where, "missing_required_parameter"
        )
    if not name:
        message = (
            f"Invalid '{where}': empty string. Expected a string with minimum length 1, "
            "but got an empty string instead."
        )
        return _invalid(message, where, "empty_string")
    if len(name) > _MAX_TOOL_NAME:
        message = (
            f"Invalid '{where}': string too long. Expected a string with maximum length "
            f"{_MAX_TOOL_NAME}, but got a string with length {len(name)} instead."
        )
        return _invalid(message, where, "string_above_max_length")
    if not _TOOL_NAME.fullmatch(name):
        message = (
            f"Invalid '{where}': string does not match pattern. Expected a string that "
            "matches the pattern '^[a-zA-Z0-9_-]+$'."
        )
        return _invalid(message, where, "invalid_value")
    return None


def _tools_problem(tools: Any) -> dict[str, Any] | None:
    if not isinstance(tools, list):
        message = "Invalid type for 'tools': expected an array of objects."
        return _invalid(message, "tools", "invalid_type")
    if not tools:
        message = (
            "Invalid 'tools': empty array. Expected an array with minimum length 1, but "
            "got an empty array instead."
        )
        return _invalid(message, "tools", "empty_array")
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            message = f"Invalid value: '{kind}'. Supported values are: 'function' and 'custom'."
            return _invalid(message, f"tools[{index}].type", "invalid_value")
        function = tool.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        problem = _name_problem(name, f"tools[{index}].function.name")
        if problem:
            return problem
    return None


def _messages_problem(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Every tool message answers a call of the assistant message right before its run of tool
    messages; every call is answered before the conversation goes on (or ends)."""
    calls: set[str] = set()  # the ids the current run of tool messages may answer
    unanswered: dict[str, None] = {}
    asked_at = -1
    for index, message in enumerate(messages):
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if asked_at < 0:
                text = (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'."
                )
                return _invalid(text, f"messages.[{index}].role", None)
            if call_id not in calls:
                text = (
                    f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                    "'tool_calls' of previous message."
                )
                return _invalid(text, f"messages.[{index}].tool_call_id", None)
            unanswered.pop(call_id, None)
            continue
        if unanswered:
            break
        asked_at, calls = -1, set()
        if role == "assistant" and message.get("tool_calls"):
            for number, call in enumerate(message["tool_calls"]):
                function = call.get("function") if isinstance(call, dict) else None
                name = function.get("name") if isinstance(function, dict) else None
                problem = _name_problem(
                    name, f"messages[{index}].tool_calls[{number}].function.name"
                )
                if problem:
                    return problem
                calls.add(call.get("id"))
            unanswered = dict.fromkeys(c.get("id") for c in message["tool_calls"])
            asked_at = index
    if unanswered:
        text = (
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            "response messages: " + ", ".join(str(c) for c in unanswered)
        )
        return _invalid(text, f"messages.[{asked_at}].role", None)
    return None


def tool_request_problem(body: dict[str, Any]) -> dict[str, Any] | None:
    """The ``error`` object OpenAI answers 400 with for this request's tools or tool-calling
    messages, or None when it would accept them."""
    if "tools" in body:
        problem = _tools_problem(body["tools"])
        if problem:
            return problem
    return _messages_problem(body.get("messages", []))


def _picked_call(text: str, offered: set[str]) -> tuple[str, dict[str, Any]] | None:
    """The tool call a model would make for this user text, among the offered tools."""
    conversion = _CONVERSION.search(text)
    if conversion and "convert_currency" in offered:
        amount, source, target = conversion.groups()
        number = float(amount)
        arguments = {
            "amount": int(number) if number.is_integer() else number,
            "from": source.upper(),
            "to": target.upper(),
        }
        return "convert_currency", arguments
    city = _CITY.search(text)
    if "weather" in text.lower() and "get_weather" in offered and city:
        return "get_weather", {"city": city.group(1)}
    return None


def _call_id(body: dict[str, Any]) -> str:
    """A call id derived from the conversation so far: deterministic, and new each step."""
    digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()
    return f"call_{digest[:24]}"


def _final_text(messages: list[dict[str, Any]]) -> str:
    """The answer after tool results: each result used, an error owned up to."""
    asked = next(m for m in reversed(messages) if m.get("role") == "assistant")
    names = {c["id"]: c["function"]["name"] for c in asked.get("tool_calls") or ()}
    said = []
    for message in messages[messages.index(asked) + 1 :]:
        name = names.get(message.get("tool_call_id"), "the tool")
        content = str(message.get("content") or "")
        try:
            parsed = json.loads(content)
        except ValueError:
            parsed = content
        if isinstance(parsed, dict) and "error" in parsed:
            said.append(f"Sorry, I could not get that: {name} failed ({parsed['error']}).")
        else:
            said.append(f"According to {name}: {content}.")
    return " ".join(said)


def tool_reply(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The assistant message (and finish reason) for a valid tool-calling request."""
    messages = body["messages"]
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return {"role": "assistant", "content": _final_text(messages)}, "stop"
    offered = {
        t["function"]["name"] for t in body.get("tools") or () if body.get("tool_choice") != "none"
    }
    text = str(last.get("content") or "")
    picked = _picked_call(text, offered) if last.get("role") == "user" else None
    if picked is None:
        return {"role": "assistant", "content": f"Here is what I know about: {text}"}, "stop"
    name, arguments = picked
    call = {
        "id": _call_id(body),
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }
    return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"


def _uses_tools(body: dict[str, Any]) -> bool:
    return "tools" in body or any(
        m.get("role") == "tool" or m.get("tool_calls") for m in body.get("messages", [])
    )


def _answer_tool_calling(handler: _Handler, body: dict[str, Any]) -> bool:
    """Answer a request that offers tools or carries tool calls (True), else leave it (False)."""
    if not _uses_tools(body):
        return False
    problem = tool_request_problem(body)
    if problem:
        handler._send(400, {"error": problem})
        return True
    message, finish_reason = tool_reply(body)
    prompt_chars = sum(len(str(m.get("content") or "")) for m in body["messages"])
    completion_chars = len(json.dumps(message))
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_chars // 4,
        "completion_tokens": completion_chars // 4,
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    cached = handler.server.fake.cached_prefix_tokens(body)  # as for any chat request
    usage["prompt_tokens_details"] = {"cached_tokens": cached}
    choice = {"index": 0, "finish_reason": finish_reason, "message": message}
    handler._send(
        200,
        {
            "id": f"chatcmpl-{len(handler.server.fake.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [choice],
            "usage": usage,
        },
    )
    return True


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
