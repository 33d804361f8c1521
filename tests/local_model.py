"""A real model server for the judge tests: llama.cpp's OpenAI-compatible server
(``llama-cpp-python[server]``, the ``local-model`` extra) serving a tiny GGUF model generated
here with the official ``gguf`` package — random weights, a character vocabulary, nothing
downloaded.

The model is a protocol peer, not a judge. Its weights are random except for one fixed token
preference (the residual stream carries a constant component that the output layer reads as
``_PREFERRED``), so with greedy decoding it is deterministic: under a grammar (llama.cpp's
constrained decoding for ``response_format``) it fills a JSON schema with the shortest valid
values (``""``, ``0``, ``true``, the enum value it prefers), and without one it writes noise.
Scores it gives are not judgements of anything.

``RecordingProxy`` sits on the wire between the fleet and the server and records each exchange
(request, status, response, how long the server took), so tests compare what the fleet stored
with what the server really answered, token counts included.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from evaluator.ops.embedded import free_port

# What the extra brings: llama_cpp with its server's dependencies, and gguf for the model file.
_EXTRA_MODULES = ("llama_cpp", "sse_starlette", "starlette_context", "gguf", "numpy")
INSTALL_HINT = "pip install -e '.[local-model]' (builds llama.cpp: about 4 minutes on 2 cores)"

# Token texts the model prefers, most preferred first; every other printable character comes
# after them, whitespace and raw bytes last. "</s>" (end of sequence) is second: wherever a
# grammar allows the output to end, it ends. In a JSON string the closing quote wins, at a
# number "0", at a boolean "true", at an enum its value starting with the earliest letter here.
_PREFERRED = ['"', "</s>", "}", "0", ",", ":", "n", "p", "t"]
SPACE = "\u2581"  # SentencePiece's space marker
N_EMBD, N_HEAD, N_LAYER, N_FF = 64, 4, 2, 128
CONTEXT_LENGTH = 16_384  # character tokens: a judge prompt is about one token per character
API_KEY = "sk-local-model"


def local_model_missing() -> str | None:
    """Why the local-model tests cannot run here (the extra is not installed), or None."""
    missing = [name for name in _EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        return f"the local-model extra is not installed (no {', '.join(missing)}): {INSTALL_HINT}"
    return None


def vocabulary() -> list[tuple[str, int]]:
    """(token text, token type) of the tiny model: control tokens, the 256 byte-fallback tokens
    that spell any text, SentencePiece's space, and every printable ASCII character."""
    from gguf import TokenType

    tokens = [("<unk>", TokenType.UNKNOWN), ("<s>", TokenType.CONTROL)]
    tokens.append(("</s>", TokenType.CONTROL))
    tokens += [(f"<0x{b:02X}>", TokenType.BYTE) for b in range(256)]
    tokens.append((SPACE, TokenType.NORMAL))
    tokens += [(chr(c), TokenType.NORMAL) for c in range(0x21, 0x7F)]
    return [(text, int(kind)) for text, kind in tokens]


def write_tiny_model(path: Path, seed: int = 7) -> Path:
    """Write the tiny llama-architecture model (F32, about 0.5 MB) to ``path``."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = vocabulary()
    n_vocab = len(vocab)

    def random(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    # The constant first component of every embedding survives the (small) layers; after the
    # final RMS norm it dominates the hidden state, and column 0 of the output layer turns it
    # into a fixed ranking of the tokens.
    embeddings = random(n_vocab, N_EMBD)
    embeddings[:, 0] = 1.0
    output = random(n_vocab, N_EMBD)
    rank = {text: len(_PREFERRED) - i for i, text in enumerate(_PREFERRED)}
    for index, (text, kind) in enumerate(vocab):
        if text in rank:
            output[index, 0] = 4.0 + rank[text]
        elif kind == gguf.TokenType.NORMAL and text != SPACE:
            output[index, 0] = rng.uniform(0.0, 2.0)
        else:
            output[index, 0] = -5.0

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("evalfleet tiny random model (not a judge)")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([text for text, _ in vocab])
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_types([kind for _, kind in vocab])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_tensor("token_embd.weight", embeddings)
    for layer in range(N_LAYER):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{block}.{name}.weight", random(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", random(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_up.weight", random(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_down.weight", random(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    writer.add_tensor("output.weight", output)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class LlamaServer:
    """``python -m llama_cpp.server`` on a free loopback port, serving ``model_path`` (ChatML
    prompts, one request at a time as llama-cpp-python's server does, bearer key ``API_KEY``)."""

    def __init__(self, model_path: Path, log_path: Path, n_ctx: int = CONTEXT_LENGTH) -> None:
        self.model_path = model_path
        self.log_path = log_path
        self.n_ctx = n_ctx
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 60.0) -> LlamaServer:
        args = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path)]
        args += ["--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx)]
        args += ["--chat_format", "chatml", "--n_threads", "1", "--api_key", API_KEY]
        # Its settings are also read from the environment (MODEL, PORT, API_KEY, ...): pass
        # only what a process needs, so a developer's variables cannot change the server.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"llama_cpp.server did not start:\n{self.log()}")
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.process = None


@dataclass
class Exchange:
    """One request through the proxy and the server's answer to it."""

    body: dict[str, Any]
    status: int
    response: dict[str, Any]
    started: float
    server_s: float  # how long the server took to answer

    @property
    def mode(self) -> str | None:
        return (self.body.get("response_format") or {}).get("type")

    @property
    def usage(self) -> tuple[int, int]:
        usage = self.response.get("usage") or {}
        return int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))

    @property
    def content(self) -> str | None:
        choices = self.response.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else None

    @property
    def finish_reason(self) -> str | None:
        reason = (self.response.get("choices") or [{}])[0].get("finish_reason")
        return reason if isinstance(reason, str) else None


@dataclass
class Recorder:
    upstream_port: int
    exchanges: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self, exchange: Exchange | None) -> None:
        with self.lock:
            self.in_flight -= 1
            if exchange is not None:
                self.exchanges.append(exchange)

    def completions(self) -> list[Exchange]:
        with self.lock:
            return [e for e in self.exchanges if "messages" in e.body]

    def reset(self) -> None:
        with self.lock:
            self.exchanges.clear()
            self.max_in_flight = self.in_flight


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _forward(self, method: str) -> None:
        recorder = self.server.recorder
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {
            k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")
        }
        recorder.enter()
        exchange = None
        try:
            started = time.time()
            upstream = http.client.HTTPConnection("127.0.0.1", recorder.upstream_port, timeout=600)
            try:
                upstream.request(method, self.path, body=raw or None, headers=headers)
                reply = upstream.getresponse()
                data = reply.read()
                status, content_type = reply.status, reply.getheader("Content-Type", "")
            finally:
                upstream.close()
            try:
                response = json.loads(data) if data else {}
            except ValueError:
                response = {"raw": data.decode(errors="replace")}
            exchange = Exchange(
                body=json.loads(raw) if raw else {},
                status=status,
                response=response if isinstance(response, dict) else {"raw": response},
                started=started,
                server_s=time.time() - started,
            )
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type or "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client timed out and closed the connection
                self.close_connection = True
        finally:
            recorder.leave(exchange)

    def do_GET(self) -> None:
        self._forward("GET")

    def do_POST(self) -> None:
        self._forward("POST")


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    recorder: Recorder

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up mid-request (a time-out, a fleet being stopped) is expected."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class RecordingProxy:
    """A transparent HTTP proxy on a free loopback port in front of ``upstream_port``: every
    request and the server's answer pass unchanged, and each is recorded in ``recorder``."""

    def __init__(self, upstream_port: int) -> None:
        self.recorder = Recorder(upstream_port)
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.recorder = self.recorder
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def wait_idle(self, timeout_s: float = 60.0) -> None:
        """Until no request is waiting on the server (timed-out calls still run there)."""
        deadline = time.monotonic() + timeout_s
        while self.recorder.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(Exception):
            self.wait_idle(30)
        self._server.shutdown()
        self._server.server_close()
