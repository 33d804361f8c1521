"""Every shipped judge against a real model server: llama.cpp's OpenAI-compatible server
(llama-cpp-python, the ``local-model`` extra) with a tiny generated model (tests/local_model.py).

The model is a protocol peer, not a judge: random weights, greedy decoding. Where a grammar
constrains it, it fills the JSON schema with the shortest valid values; otherwise it writes
noise. No score in these tests is a judgement of a trace — they check the wire: response
formats, the fallback, the repair round on real output, token counts and cost from the server's
own tokenizer, time-outs under the server's real latency, several calls in flight, and
``evalfleet calibrate`` for every shipped judge over its golden sets (its report is produced,
with baselines, kappa and F1, and says its scores are not judgements).

Skipped, with the reason, when the extra is not installed. This server found two product bugs,
fixed since: it refuses OpenAI's ``json_schema`` with a 500 (now a "no schema here" verdict,
not an outage), and it constrains JSON mode only by a schema given in ``response_format`` (now
the first fallback, ``schema_in_object``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy
from helpers import Fleet, fleet_env, make_trace, wait_for
from local_model import (
    API_KEY,
    Exchange,
    LlamaServer,
    RecordingProxy,
    local_model_missing,
    write_tiny_model,
)
from pydantic import SecretStr
from sqlmodel import Session, select
from typer.testing import CliRunner

from evaluator.cli import app
from evaluator.ingest import publish_many
from evaluator.judging.files import (
    Judge,
    JudgeSpec,
    default_judges_dir,
    load_judges,
    render_messages,
)
from evaluator.judging.runtime import JudgeResult, run_judgements
from evaluator.models import ScoreStatus, Trace
from evaluator.settings import Settings, get_settings
from evaluator.store.tables import JudgeCallRecord, ScoreRecord
from evaluator.trust.golden import default_golden_dir, read_golden

_MISSING = local_model_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")

JUDGES = load_judges(default_judges_dir())
SHIPPED = sorted(JUDGES)
REPAIRED = "judge output failed its schema after one repair"


def a_trace(index: int, **fields: object) -> Trace:
    """A trace every shipped judge applies to (contexts, a reference, an input, a second answer
    for the pairwise judge)."""
    return make_trace(
        index,
        reference="Rotate keys under Settings > Security.",
        metadata={"response_b": "Ask support to rotate the key for you."},
        **fields,
    )


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    directory = tmp_path_factory.mktemp("local-model")
    model = write_tiny_model(directory / "tiny-random.gguf")
    server = LlamaServer(model, directory / "llama-server.log").start()
    yield server
    server.stop()


@pytest.fixture
def proxy(llama: LlamaServer) -> Iterator[RecordingProxy]:
    with RecordingProxy(llama.port) as running:
        yield running


@pytest.fixture
def settings(proxy: RecordingProxy, redis_url: str, redis_client: redis.Redis) -> Settings:
    return Settings(
        redis_url=redis_url,
        judge_base_url=proxy.base_url,
        judge_api_key=SecretStr(API_KEY),
        judge_timeout_s=30,
        judge_backoff_base_s=0.01,
        judge_backoff_max_s=0.05,
        judge_max_attempts=2,
    )


def judge(settings: Settings, work: list[tuple[Judge, Trace]]) -> list[JudgeResult]:
    """The product's judge path from the start: json_schema first, then the fallback."""
    return asyncio.run(run_judgements(settings, work))


def assert_switched_to_json_mode_with_the_schema(exchanges: list[Exchange]) -> None:
    """At most one json_schema request (refused with a 500: a runtime switches once per
    endpoint, so an evaluation may find it switched already), then JSON mode with the schema."""
    refused = [e for e in exchanges if e.mode == "json_schema"]
    assert len(refused) <= 1 and all(e.status == 500 for e in refused), refused
    for exchange in exchanges:
        if exchange.mode != "json_schema":
            assert exchange.mode == "json_object" and "schema" in exchange.body["response_format"]


def exchanges_of(proxy: RecordingProxy, spec: JudgeSpec, trace: Trace) -> list[Exchange]:
    """The requests one evaluation made (its first user message is the rendered trace)."""
    user = render_messages(spec, trace)[1]["content"]
    return [e for e in proxy.recorder.completions() if e.body["messages"][1]["content"] == user]


def assert_wire_accounting(
    settings: Settings, spec: JudgeSpec, result: JudgeResult, exchanges: list[Exchange]
) -> None:
    """The call row's tokens are the server's usage over this evaluation's requests (its real
    tokenizer: about one token per character here, nothing like the 4-characters estimate),
    and its cost is those tokens at the price table's rate."""
    answered = [e for e in exchanges if e.status == 200]
    assert answered, exchanges
    prompt = sum(e.usage[0] for e in answered)
    completion = sum(e.usage[1] for e in answered)
    assert (result.call.input_tokens, result.call.output_tokens) == (prompt, completion)
    characters = sum(len(m["content"]) for e in answered for m in e.body["messages"])
    assert prompt > characters // 2  # a character vocabulary: not the client's estimate
    assert result.call.cost_usd == pytest.approx(settings.cost_usd(spec.model, prompt, completion))
    for score in result.scores:
        assert score.metadata["call_input_tokens"] == prompt
        assert score.metadata["call_cost_usd"] == result.call.cost_usd


def assert_schema_valid_or_repaired(
    spec: JudgeSpec, result: JudgeResult, exchanges: list[Exchange]
) -> None:
    """Never deferred, never raised: either one Score per output field (schema-valid, though
    not a judgement) or one error Score after exactly one repair round on the real output."""
    assert not result.deferred, result.call
    if result.call.status == "ok":
        assert {s.name for s in result.scores} == set(spec.score_fields)
        assert all(s.status is ScoreStatus.OK for s in result.scores)
        return
    [score] = result.scores
    assert score.status is ScoreStatus.ERROR and score.reason.startswith(REPAIRED), score.reason
    answered = [e for e in exchanges if e.status == 200]
    assert len(answered) == 2, [(e.status, e.content) for e in exchanges]
    first, repair = answered
    # The repair request carries the model's real (bad) output back to it.
    assert repair.body["messages"][-2] == {"role": "assistant", "content": first.content}
    assert "did not match the required JSON schema" in repair.body["messages"][-1]["content"]


# -- the peer ---------------------------------------------------------------------------------


def chat(proxy: RecordingProxy, spec: JudgeSpec, **body: object) -> httpx.Response:
    """One chat-completions request for ``spec`` on a trace, as plain JSON on the wire."""
    payload = {"model": spec.model, "messages": render_messages(spec, a_trace(1)), **body}
    return httpx.post(
        f"{proxy.base_url}/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )


def test_llama_cpp_server_refuses_openai_json_schema_with_a_500(proxy: RecordingProxy) -> None:
    """What this server does with OpenAI's structured-output request: llama-cpp-python's
    request model allows response_format types 'text' and 'json_object' only, and its error
    handler turns the validation error into a 500. (When a later version accepts json_schema,
    this fails: then the product's first path is exercised here too.)"""
    spec = JUDGES["answer_relevance"]
    reply = chat(proxy, spec, response_format=spec.response_format(), max_tokens=spec.max_tokens)
    assert reply.status_code == 500, reply.text
    error = reply.json()["error"]
    assert error["type"] == "internal_server_error"
    assert "response_format" in error["message"] and "json_object" in error["message"]


@pytest.mark.parametrize("name", SHIPPED)
def test_grammar_constrained_output_fits_every_shipped_schema_but_is_not_a_judgement(
    proxy: RecordingProxy, name: str
) -> None:
    """llama.cpp's own structured output ({'type': 'json_object', 'schema': ...}): a grammar
    from the judge's schema makes even a random model's answer schema-valid; without one the
    answer is noise. The values are the grammar's, not an assessment of the trace."""
    spec = JUDGES[name]
    constrained = chat(
        proxy,
        spec,
        response_format={"type": "json_object", "schema": spec.json_schema()},
        max_tokens=spec.max_tokens,
        temperature=0,
    )
    content = constrained.json()["choices"][0]["message"]["content"]
    assert set(spec.output_model.model_validate_json(content).model_dump()) == set(spec.output)
    free = chat(proxy, spec, max_tokens=spec.max_tokens, temperature=0)
    with pytest.raises(ValueError):
        spec.output_model.model_validate_json(free.json()["choices"][0]["message"]["content"])


# -- the product's judge path against the real server -----------------------------------------


def test_every_shipped_judge_switches_to_json_mode_with_its_schema_and_settles(
    settings: Settings, proxy: RecordingProxy
) -> None:
    """Each shipped judge from the start: the server refuses json_schema (a 500), the client
    switches to JSON mode carrying the schema, and whatever the model returns ends as
    schema-valid Scores or as an error Score after one repair on its real output — with the
    server's token counts and their cost on the call row. Not judgements."""
    trace = a_trace(1)
    work: list[tuple[Judge, Trace]] = [(JUDGES[name], trace) for name in SHIPPED]
    results = judge(settings, work)
    for name, result in zip(SHIPPED, results, strict=True):
        spec = JUDGES[name]
        exchanges = exchanges_of(proxy, spec, trace)
        assert_switched_to_json_mode_with_the_schema(exchanges)
        assert result.call.mode == "schema_in_object"
        assert result.call.attempts == len(exchanges)  # what the server saw, the 500 too
        assert_schema_valid_or_repaired(spec, result, exchanges)
        assert_wire_accounting(settings, spec, result, exchanges)


def test_several_calls_in_flight_against_the_real_server(
    settings: Settings, proxy: RecordingProxy
) -> None:
    """Fifteen evaluations at once: the client keeps them in flight together, the server
    answers one at a time (llama-cpp-python serialises requests), every one settles."""
    traces = [a_trace(i, output=f"Answer number {i}: rotate it in Settings.") for i in range(3)]
    work: list[tuple[Judge, Trace]] = [(JUDGES[n], t) for t in traces for n in SHIPPED]
    results = judge(settings, work)
    assert proxy.recorder.max_in_flight >= 5, proxy.recorder.max_in_flight
    for (spec, trace), result in zip(work, results, strict=True):
        assert isinstance(spec, JudgeSpec)
        exchanges = exchanges_of(proxy, spec, trace)
        assert_schema_valid_or_repaired(spec, result, exchanges)
        assert_wire_accounting(settings, spec, result, exchanges)


def test_a_timeout_under_real_latency_is_retried_then_deferred(
    settings: Settings, proxy: RecordingProxy
) -> None:
    """A long trace takes the server about a second to read (one token per character); with a
    0.3 s time-out every attempt times out for real: retried, then deferred for later — no
    score, no exception. With a normal time-out the same evaluation then completes."""
    long_trace = a_trace(1, output="Rotate the key in Settings. " * 220)  # ~6,000 characters
    spec = JUDGES["answer_relevance"]
    hurried = settings.model_copy(update={"judge_timeout_s": 0.3})
    [result] = judge(hurried, [(spec, long_trace)])
    assert result.deferred and result.scores == [] and result.call.status == "deferred"
    assert "APITimeoutError" in (result.call.error or ""), result.call.error
    proxy.wait_idle()  # the server finishes what the client gave up on
    exchanges = [e for e in exchanges_of(proxy, spec, long_trace) if e.mode == "json_object"]
    assert len(exchanges) == settings.judge_max_attempts  # the refused json_schema aside
    assert all(e.server_s > 0.3 for e in exchanges), [e.server_s for e in exchanges]
    [again] = judge(settings, [(spec, long_trace)])
    assert not again.deferred and again.call.status in ("ok", "error")


# -- what this server found (fixed: each failed before) ----------------------------------------


def test_a_json_schema_500_switches_to_json_mode(settings: Settings, proxy: RecordingProxy) -> None:
    """The product's path from the start (json_schema first): the server's refusal should
    switch the endpoint to JSON mode, and the evaluation settles, not deferred (it used to be
    retried as an outage, then deferred, for hours)."""
    spec, trace = JUDGES["groundedness"], a_trace(1)
    [result] = asyncio.run(run_judgements(settings, [(spec, trace)]))
    modes = [(e.mode, e.status) for e in exchanges_of(proxy, spec, trace)]
    assert modes[0] == ("json_schema", 500), modes
    assert result.call.mode == "schema_in_object", (result.call, modes)
    assert_schema_valid_or_repaired(spec, result, exchanges_of(proxy, spec, trace))
    assert_wire_accounting(settings, spec, result, exchanges_of(proxy, spec, trace))


def test_json_object_fallback_gets_schema_valid_scores_from_a_grammar(
    settings: Settings, proxy: RecordingProxy
) -> None:
    """Every shipped judge in JSON mode gets grammar-constrained, schema-valid output (Scores
    with status ok — still not judgements) from a server that takes a schema there (it got the
    generic JSON grammar, and noise, before the schema went into response_format)."""
    trace = a_trace(1)
    results = judge(settings, [(JUDGES[n], trace) for n in SHIPPED])
    assert [r.call.status for r in results] == ["ok"] * len(SHIPPED), [
        (r.call.judge, r.call.error) for r in results
    ]


def test_the_repair_round_on_real_truncated_output(
    settings: Settings, proxy: RecordingProxy, tmp_path: Path
) -> None:
    """A judge whose max_tokens (16) cuts the grammar's answer short: the server returns
    truncated JSON (finish_reason length), the client asks once for a repair, gets truncated
    JSON again, and stores an error Score with the reason."""
    judges = tmp_path / "judges"
    shutil.copytree(default_judges_dir(), judges)
    path = judges / "answer_relevance.yaml"
    path.write_text(path.read_text().replace("max_tokens: 300", "max_tokens: 16"))
    spec = load_judges(judges)["answer_relevance"]
    trace = a_trace(1)
    [result] = judge(settings, [(spec, trace)])
    exchanges = exchanges_of(proxy, spec, trace)
    answered = [e for e in exchanges if e.status == 200]
    assert [e.finish_reason for e in answered] == ["length", "length"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(answered[0].content or "")
    assert result.call.status == "error"
    assert_schema_valid_or_repaired(spec, result, exchanges)
    assert_wire_accounting(settings, spec, result, exchanges)


FleetFactory = Callable[[dict[str, str]], Fleet]


def test_every_shipped_judge_through_the_fleet_against_llama_cpp(
    redis_client: redis.Redis,
    redis_url: str,
    sqlite_url: str,
    proxy: RecordingProxy,
    fleet_factory: FleetFactory,
) -> None:
    """Sampler and worker processes, every shipped judge enabled, traces they all apply to:
    each evaluation should end as stored Scores (schema-valid or an error after one repair),
    each judge_calls row holding the server's token counts and their cost. Not judgements.
    (Judges of other levels — sessions, trajectories — have their own subjects, not turns.)"""
    n = 3
    on_turns = [name for name in SHIPPED if JUDGES[name].applies_when.why_not(a_trace(0)) is None]
    assert {"groundedness", "pairwise", "quality"} <= set(on_turns), on_turns
    env = fleet_env(
        redis_url,
        sqlite_url,
        judge_base_url=proxy.base_url,
        judge_api_key=API_KEY,
        enabled_judges=on_turns,
        judge_sample_rate=1.0,
        judge_timeout_s=30,
        judge_max_attempts=2,
        judge_backoff_base_s=0.02,
        judge_backoff_max_s=0.2,
        judge_batch_size=10,
    )
    fleet = fleet_factory(env)
    fleet.worker(concurrency=1)
    fleet.sampler()
    traces = [a_trace(i, output=f"Answer {i}: rotate the key in Settings.") for i in range(n)]
    publish_many(redis_client, traces, Settings())
    engine = sqlalchemy.create_engine(sqlite_url)

    def calls() -> list[JudgeCallRecord]:
        try:
            with Session(engine) as session:
                return list(session.exec(select(JudgeCallRecord)).all())
        except sqlalchemy.exc.OperationalError:  # the worker has not created the tables yet
            return []

    def settled() -> bool:
        return sum(1 for c in calls() if c.status in ("ok", "error")) == n * len(on_turns)

    def stuck() -> bool:
        """An evaluation refused json_schema on every attempt and never tried json_object."""
        exchanges = proxy.recorder.completions()
        refused = Counter(
            e.body["messages"][1]["content"]
            for e in exchanges
            if e.mode == "json_schema" and e.status == 500
        )
        return max(refused.values(), default=0) >= 2 and all(
            e.mode == "json_schema" for e in exchanges
        )

    try:
        wait_for(lambda: settled() or stuck(), 90, lambda: f"judge calls\n{fleet.logs()}")
        assert settled(), [(c.judge, c.status, c.error) for c in calls()]
        settings = Settings()
        by_call = {(c.trace_id, c.judge): c for c in calls()}
        with Session(engine) as session:
            scores = list(session.exec(select(ScoreRecord)).all())
        for trace in traces:
            for name in on_turns:
                spec, call = JUDGES[name], by_call[(trace.trace_id, name)]
                answered = [e for e in exchanges_of(proxy, spec, trace) if e.status == 200]
                prompt = sum(e.usage[0] for e in answered)
                completion = sum(e.usage[1] for e in answered)
                assert (call.input_tokens, call.output_tokens) == (prompt, completion)
                assert call.cost_usd == pytest.approx(
                    settings.cost_usd(spec.model, prompt, completion)
                )
                mine = [s for s in scores if s.trace_id == trace.trace_id and s.evaluator == name]
                if call.status == "ok":
                    assert {s.name for s in mine} == set(spec.score_fields)
                else:
                    [error] = mine
                    assert error.status == "error" and error.reason.startswith(REPAIRED)
                    assert len(answered) == 2
    finally:
        engine.dispose()
        fleet.stop_all()


# -- calibrate, end to end --------------------------------------------------------------------

NOT_JUDGEMENTS = "a tiny random model served by llama.cpp: a protocol peer, not a judge"
CALIBRATE_LIMIT = 4  # per judge: both verdicts (and a pairwise judge's two orders of 2 pairs)


@pytest.mark.parametrize("name", SHIPPED)
def test_calibrate_every_shipped_judge_against_the_real_server(
    name: str,
    proxy: RecordingProxy,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``evalfleet calibrate --limit`` for each judge against llama.cpp, as a team would run it
    against its own judge model: the report comes out with the trivial baselines, kappa and the
    fail class's F1 (a pairwise judge: its position bias over both orders), labelled, on the
    terminal and in the JSON, as not judgements. Its figures are the tiny model's noise."""
    if not read_golden(name, default_golden_dir()):
        pytest.skip(f"{name} has no golden set in {default_golden_dir()}")
    for variable, value in {
        "EVALFLEET_REDIS_URL": redis_url,
        "EVALFLEET_JUDGE_BASE_URL": proxy.base_url,
        "EVALFLEET_JUDGE_API_KEY": API_KEY,
        "EVALFLEET_JUDGE_TIMEOUT_S": "30",
        "EVALFLEET_JUDGE_MAX_ATTEMPTS": "2",
        "COLUMNS": "200",
    }.items():
        monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    report = tmp_path / f"calibration-{name}.json"
    done = CliRunner().invoke(
        app,
        [
            "calibrate", "--judge", name, "--limit", str(CALIBRATE_LIMIT),
            "--not-judgements", NOT_JUDGEMENTS, "--report", str(report),
        ],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    for line in ("NOT JUDGEMENTS", "Cohen's kappa", "fail class F1", "trivial baselines"):
        assert line in done.output, (line, done.output)
    data = json.loads(report.read_text())
    assert data["judgements"] is False and data["not_judgements"] == NOT_JUDGEMENTS
    assert data["judge"] == name and data["version"] == JUDGES[name].version
    assert 0 < data["agreement"]["n"] <= CALIBRATE_LIMIT, data["agreement"]
    assert data["errors"] + data["agreement"]["n"] == data["examples"]
    assert "kappa" in data["agreement"] and "f1_fail" in data["agreement"]
    assert data["baselines"] and all(b["rule"] and b["auc"] >= 0.5 for b in data["baselines"])
    judged = [e for e in proxy.recorder.completions() if e.status == 200]
    assert judged, "calibrate never reached the server"
    if name == "pairwise":
        assert data["position"]["pairs"] == CALIBRATE_LIMIT // 2
        assert "position bias over" in done.output
