"""Judge prompts are laid out for providers' prefix caching, and the test server reports cached
tokens the way OpenAI does.

Every shipped judge's static part — the system prompt and the user template's instructions —
comes first and is byte-identical whatever the trace; the trace's data comes last, fenced, with
no instruction after it. In JSON mode (servers without ``json_schema``) the schema still reaches
the model, in the static system prompt. The test server's ``cached_tokens`` follows OpenAI's
rule: prompts from 1,024 tokens, the longest prefix seen before, in whole 128-token blocks.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
import redis
from helpers import make_trace
from hypothesis import given, settings
from hypothesis import strategies as st
from openai_server import CACHE_BLOCK_TOKENS, CACHE_MIN_TOKENS, FakeOpenAI, OpenAIServer
from pydantic import SecretStr

from evaluator.judging.files import JudgeSpec, default_judges_dir, load_judges, render_messages
from evaluator.judging.runtime import run_judgements
from evaluator.models import Trace
from evaluator.settings import Settings

JUDGES = load_judges(default_judges_dir())
_FENCED = re.compile(r'<untrusted-data name="[^"]*">\n.*?\n</untrusted-data>', re.DOTALL)
# What a template may print between fenced blocks: fixed placeholders, never instructions.
_PLACEHOLDERS = ("(no contexts were retrieved)", "(no reference answer)")


def two_traces() -> tuple[Trace, Trace]:
    """Two traces that differ in every field a judge reads (and share nothing but a shape)."""
    first = make_trace(
        1,
        reference="Rotate keys under Settings > Security.",
        metadata={"response_b": "Ask support to rotate it."},
    )
    second = make_trace(
        2,
        input="Which plan includes SSO?",
        output="SSO comes with the Enterprise plan.",
        contexts=["Single sign-on is part of Enterprise.", "Pro has no SSO.", "Prices vary."],
        reference="Enterprise.",
        metadata={"response_b": "Every plan has SSO."},
    )
    return first, second


def static_prefix(spec: JudgeSpec) -> str:
    """The user template up to its first Jinja tag: the part that never depends on a trace."""
    template = spec.user
    starts = [i for i in (template.find("{{"), template.find("{%")) if i >= 0]
    return template[: min(starts)] if starts else template


def common_prefix(a: str, b: str) -> str:
    length = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    return a if length is None else a[:length]


@pytest.mark.parametrize("name", sorted(JUDGES))
def test_every_judge_puts_its_static_part_first_and_the_data_last(name: str) -> None:
    spec = JUDGES[name]
    first, second = (render_messages(spec, trace) for trace in two_traces())
    assert [m["role"] for m in first] == ["system", "user"]
    assert first[0]["content"] == second[0]["content"]  # the system prompt is static
    static = static_prefix(spec)
    assert len(static.strip()) > 80, static  # the instructions, not an empty lead-in
    for messages in (first, second):
        assert messages[1]["content"].startswith(static)
        # After the instructions only the fenced data (and fixed placeholders): an instruction
        # placed after the data would sit outside the cacheable prefix and after the trace.
        rest = _FENCED.sub("", messages[1]["content"][len(static) :])
        for placeholder in _PLACEHOLDERS:
            rest = rest.replace(placeholder, "")
        assert not rest.strip(), rest
    # Byte-identical up to the first data: everything before the traces differ is static.
    shared = common_prefix(first[1]["content"], second[1]["content"])
    assert shared.startswith(static) and "<untrusted-data" not in shared[len(static) :].replace(
        '<untrusted-data name="', "", 1
    )


@pytest.fixture
def json_mode_server() -> OpenAIServer:
    """A server with OpenAI's JSON mode only: no json_schema, no schema in response_format."""
    running = OpenAIServer()
    running.fake.reject_json_schema = True
    running.fake.reject_object_schema = True
    return running


def test_in_json_mode_the_schema_reaches_the_model_in_the_static_system_prompt(
    json_mode_server: OpenAIServer, redis_url: str, redis_client: redis.Redis
) -> None:
    with json_mode_server as server:
        settings_ = Settings(
            redis_url=redis_url,
            judge_base_url=server.base_url,
            judge_api_key=SecretStr("sk-test"),
            judge_backoff_base_s=0.01,
            judge_backoff_max_s=0.05,
        )
        traces = two_traces()
        work = [(JUDGES[name], trace) for name in sorted(JUDGES) for trace in traces]
        results = asyncio.run(run_judgements(settings_, list(work)))
        assert [r.call.status for r in results] == ["ok"] * len(work)
        assert {r.call.mode for r in results} == {"json_object"}
        plain = [
            r.body
            for r in server.fake.requests
            if r.body["response_format"] == {"type": "json_object"}
        ]
    for name in sorted(JUDGES):
        spec = JUDGES[name]
        statics = {render_messages(spec, t)[1]["content"][:200] for t in traces}
        sent = [b for b in plain if b["messages"][1]["content"][:200] in statics]
        systems = {b["messages"][0]["content"] for b in sent}
        assert len(sent) == 2 and len(systems) == 1, (name, len(sent), len(systems))
        [system] = systems
        assert all(f'"{field}"' in system for field in spec.output), (name, system)


# -- cached tokens ----------------------------------------------------------------------------


def cached_for(fake: FakeOpenAI, *contents: str, model: str = "gpt-4o-mini") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": c} for c in contents]}
    return fake.cached_prefix_tokens(body)


def test_the_server_reports_cached_tokens_in_usage_like_openai() -> None:
    static = "Judge the answer against the rubric. " * 150  # 5,550 characters: 1,387 tokens
    with OpenAIServer() as server:

        def usage(user: str) -> dict[str, object]:
            reply = httpx.post(
                f"{server.base_url}/chat/completions",
                json={
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": static},
                        {"role": "user", "content": user},
                    ],
                    "response_format": {"type": "json_object"},
                },
                timeout=10,
            )
            reply.raise_for_status()
            result: dict[str, object] = reply.json()["usage"]
            return result

        first = usage("trace one")
        second = usage("trace two, a different one")
    assert first["prompt_tokens_details"] == {"cached_tokens": 0}  # nothing seen yet
    # The shared prefix is the static part (1,387 tokens, plus a role marker): 1,024 + 2 * 128.
    assert second["prompt_tokens_details"] == {"cached_tokens": 1280}
    assert server.fake.cached_tokens == 1280


def test_short_prompts_are_never_cached() -> None:
    fake = FakeOpenAI()
    short = "x" * (4 * CACHE_MIN_TOKENS - 8)
    assert cached_for(fake, short) == 0
    assert cached_for(fake, short) == 0  # the same short prompt again: still under 1,024


@settings(max_examples=60, deadline=None)
@given(
    shared=st.integers(min_value=0, max_value=3000),
    tail_a=st.integers(min_value=0, max_value=800),
    tail_b=st.integers(min_value=1, max_value=800),
    other_model=st.booleans(),
)
def test_cached_tokens_are_the_shared_prefix_in_whole_blocks(
    shared: int, tail_a: int, tail_b: int, other_model: bool
) -> None:
    """Any two prompts: the second one's cached tokens are the largest cut (1,024, then every
    128 tokens) within both the prefix it shares with the first and its own length; none for
    another model."""
    fake = FakeOpenAI()
    prefix = "".join(chr(97 + i % 26) for i in range(4 * shared))
    first = prefix + "A" * (4 * tail_a)
    second = prefix + "B" * (4 * tail_b)
    assert cached_for(fake, first) == 0
    got = cached_for(fake, second, model="other-model" if other_model else "gpt-4o-mini")
    # The texts agree up to the end of ``prefix`` (after the role marker, 6 characters): "A"
    # and "B" differ at once. A cut is cached when both prompts are that long.
    agreeing = (len("\x1euser\x1f") + len(prefix)) // 4
    limit = min(agreeing, len(first) // 4, len(second) // 4)
    cuts = range(CACHE_MIN_TOKENS, limit + 1, CACHE_BLOCK_TOKENS)
    expected = 0 if other_model or not cuts else max(cuts)
    assert got == expected, (shared, tail_a, tail_b, got, expected)
    assert got % CACHE_BLOCK_TOKENS == 0 and (got == 0 or got >= CACHE_MIN_TOKENS)
