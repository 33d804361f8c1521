"""A trace's own output_schema is untrusted: hostile schemas, patterns and answers end in a clear
score within milliseconds, never a hang (the regexes run on RE2, the sizes are bounded)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from helpers import make_trace
from sqlmodel import Session, select

from evaluator.evaluation.scoring import ScoringContext, score_batch
from evaluator.evaluators import heuristic_evaluators
from evaluator.evaluators.heuristics import JSONValidity
from evaluator.evaluators.schema_guard import (
    SchemaGuard,
    SchemaLimits,
    nesting_depth,
    schema_patterns,
    to_re2_syntax,
)
from evaluator.models import SampleDecision, Score, ScoreStatus
from evaluator.review import ReviewRouter
from evaluator.settings import Settings
from evaluator.sinks.sql import SQLStore
from evaluator.store.tables import ScoreRecord

CATASTROPHIC = {"type": "string", "pattern": "^(a+)+$"}
# What the issue's trace carried: Python's re needs ~2**46 steps to reject it.
ISSUE_OUTPUT = json.dumps("a" * 46 + "!")


def judge(
    schema: dict[str, Any], output: str, limits: SchemaLimits | None = None
) -> tuple[Score, float]:
    """The json_validity score of a trace with this schema and output, and how long it took."""
    evaluator = JSONValidity(limits=limits or SchemaLimits())
    trace = make_trace(1, output=output, output_schema=schema)
    started = time.perf_counter()
    [score] = evaluator.evaluate(trace)
    return score, time.perf_counter() - started


def assert_error(score: Score, *reason_parts: str) -> None:
    assert score.status is ScoreStatus.ERROR, score
    assert score.passed is None and score.value is None
    for part in reason_parts:
        assert part in score.reason, score.reason


def test_the_catastrophic_pattern_of_the_issue_fails_fast() -> None:
    score, elapsed = judge(CATASTROPHIC, ISSUE_OUTPUT)
    assert elapsed < 1.0
    assert score.status is ScoreStatus.OK
    assert score.passed is False
    assert "does not match '^(a+)+$'" in score.reason
    assert one_score_ok(CATASTROPHIC, json.dumps("a" * 46)).passed is True


def one_score_ok(schema: dict[str, Any], output: str) -> Score:
    score, elapsed = judge(schema, output)
    assert elapsed < 1.0
    assert score.status is ScoreStatus.OK, score.reason
    return score


HOSTILE = "a" * 46 + "!"


@pytest.mark.parametrize(
    ("schema", "document", "where"),
    [
        ({"$schema": "http://json-schema.org/draft-07/schema#", **CATASTROPHIC}, HOSTILE, "(root)"),
        ({"$schema": "http://json-schema.org/draft-04/schema", **CATASTROPHIC}, HOSTILE, "(root)"),
        (
            {"$schema": "https://json-schema.org/draft/2019-09/schema", **CATASTROPHIC},
            HOSTILE,
            "(root)",
        ),
        ({"$schema": "http://json-schema.org/draft-03/schema#", **CATASTROPHIC}, HOSTILE, "(root)"),
        ({"type": "object", "properties": {"a": CATASTROPHIC}}, {"a": HOSTILE}, "a"),
        ({"type": "array", "items": CATASTROPHIC}, [HOSTILE], "0"),
        (
            {"patternProperties": {"^(a+)+$": {"type": "integer"}}},
            {HOSTILE: "x", "aa": "x"},
            "aa",
        ),
        (
            {"patternProperties": {"^(a+)+$": {}}, "additionalProperties": False},
            {HOSTILE: 1},
            "(root)",
        ),
        ({"propertyNames": {"pattern": "^(a+)+$"}}, {HOSTILE: 1}, "(root)"),
        (
            {"$defs": {"s": CATASTROPHIC}, "properties": {"a": {"$ref": "#/$defs/s"}}},
            {"a": HOSTILE},
            "a",
        ),
        # $ref "#" re-enters the root: with its $schema, stock jsonschema would switch back to
        # its own validator class (Python re) there.
        (
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "properties": {"a": {"$ref": "#"}},
                "pattern": "^(a+)+$",
            },
            {"a": HOSTILE},
            "a",
        ),
    ],
)
def test_every_keyword_that_matches_a_regex_runs_on_re2(
    schema: dict[str, Any], document: Any, where: str
) -> None:
    score = one_score_ok(schema, json.dumps(document))
    assert score.passed is False
    assert f"; {where}: " in score.reason


def test_a_million_characters_against_the_pattern() -> None:
    million = "a" * 999_990
    score, elapsed = judge(CATASTROPHIC, json.dumps(million + "!"))
    assert elapsed < 1.0
    assert score.passed is False and score.status is ScoreStatus.OK
    assert len(score.reason) < 500  # the instance is shortened, not repeated
    score, elapsed = judge(CATASTROPHIC, json.dumps(million))
    assert elapsed < 1.0
    assert score.passed is True


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [
        (r"^(a)\1$", r"a backreference (\1)"),
        (r"^(?<x>a)\k<x>$", "a named backreference"),
        (r"^(?=a)a$", "a lookahead"),
        (r"^(?!b)a$", "a negative lookahead"),
        (r"(?<=a)b", "a lookbehind"),
        (r"(?<!a)b", "a negative lookbehind"),
        (r"(?>a+)b", "an atomic group"),
        (r"a++b", "a possessive quantifier"),
    ],
)
def test_what_re2_cannot_run_is_an_error_naming_the_construct(pattern: str, construct: str) -> None:
    for schema in (
        {"type": "string", "pattern": pattern},
        {"patternProperties": {pattern: {}}},
        # draft 4's meta-schema does not check patternProperties keys; the guard still does,
        # though the answer ({}) never reaches the pattern.
        {"$schema": "http://json-schema.org/draft-04/schema#", "patternProperties": {pattern: {}}},
        {"anyOf": [{"type": "integer"}, {"pattern": pattern}]},
    ):
        score, elapsed = judge(schema, json.dumps({}) if "patternProperties" in schema else '"a"')
        assert elapsed < 1.0
        assert_error(score, construct, "RE2", "not evaluated")


def test_a_malformed_pattern_is_an_invalid_schema() -> None:
    score = one_score_ok({"type": "string", "pattern": "(a"}, '"a"')
    assert score.passed is False
    assert "output_schema is invalid: pattern '(a' is not a valid regex: missing )" in score.reason


def test_format_regex_is_checked_on_re2() -> None:
    schema = {"type": "string", "format": "regex"}
    assert one_score_ok(schema, json.dumps("^[a-z]+$")).passed is True
    malformed = one_score_ok(schema, json.dumps("(a"))
    assert malformed.passed is False and "is not a 'regex'" in malformed.reason
    score, _ = judge(schema, json.dumps(r"(a)\1"))
    assert_error(score, "format 'regex'", "backreference")


def test_ecma_escapes_re2_spells_differently() -> None:
    assert to_re2_syntax(r"^[\u0041-\u005A]+$") == r"^[\x{0041}-\x{005A}]+$"
    assert (
        to_re2_syntax(r"\u{1F600}\cJ\0[\b]\b\\u0041") == r"\x{1F600}\x{0A}\x{00}[\x{08}]\b\\u0041"
    )
    assert one_score_ok({"pattern": r"^[\u0041-\u005A]+$"}, '"ABC"').passed is True
    assert one_score_ok({"pattern": r"^[\u0041-\u005A]+$"}, '"abc"').passed is False


def test_a_schema_of_100000_properties_is_refused_fast() -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(100_000)}}
    score, elapsed = judge(schema, "{}")
    assert elapsed < 1.0
    assert_error(score, "more than 5,000 values", "EVALFLEET_JSON_SCHEMA_MAX_NODES")


def test_schema_size_and_depth_are_bounded() -> None:
    score, _ = judge({"type": "string", "description": "x" * 70_000}, '"a"')
    assert_error(score, "bytes, over the limit of 65,536", "EVALFLEET_JSON_SCHEMA_MAX_BYTES")
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(200):
        deep = {"items": deep}
    score, elapsed = judge(deep, "[]")
    assert elapsed < 1.0
    assert_error(score, "nests deeper than 32 levels", "EVALFLEET_JSON_SCHEMA_MAX_DEPTH")
    # Deeper than any Trace holds (a Python caller's dict): the walk is iterative.
    for _ in range(10_000):
        deep = {"items": deep}
    started = time.perf_counter()
    verdict = SchemaGuard().check([], deep)
    assert time.perf_counter() - started < 1.0
    assert verdict.passed is None and "nests deeper than 32 levels" in verdict.reason


def test_limits_are_settings() -> None:
    [validity] = [
        e
        for e in heuristic_evaluators(
            Settings(json_schema_max_nodes=10, json_schema_max_depth=4, json_max_output_depth=2)
        )
        if isinstance(e, JSONValidity)
    ]
    assert validity.limits.max_nodes == 10 and validity.limits.max_depth == 4
    trace = make_trace(1, output="[[[1]]]", output_schema={"type": "array"})
    [score] = validity.evaluate(trace)
    assert_error(score, "nests deeper than 2 levels", "EVALFLEET_JSON_MAX_OUTPUT_DEPTH")


def test_a_10000_deep_answer_gets_a_score_with_a_reason() -> None:
    deep = "[" * 10_000 + "]" * 10_000
    score, elapsed = judge({"type": "array"}, deep)
    assert elapsed < 1.0
    assert score.status is ScoreStatus.OK and score.passed is False
    assert score.reason == "not JSON a parser can read: nested too deeply"
    [plain] = JSONValidity().evaluate(make_trace(1, output=deep, output_format="json"))
    assert plain.passed is False and "nested too deeply" in plain.reason
    # Parseable, but deeper than a schema is checked against.
    score, elapsed = judge({"type": "array"}, "[" * 500 + "]" * 500)
    assert elapsed < 1.0
    assert_error(score, "answer JSON nests deeper than 64 levels")
    assert nesting_depth(json.loads("[" * 500 + "]" * 500), 64) == 65
    assert nesting_depth({"a": [1, {"b": []}]}, 64) == 4
    assert nesting_depth("x", 64) == 0


def test_regex_work_is_bounded_even_on_re2() -> None:
    # RE2 is linear in the text, but its constant is the pattern's program size: 1,000 states
    # over 800 KB would be ~10 s of C that no signal interrupts.
    score, elapsed = judge(
        {"type": "string", "pattern": "[ab]*a[ab]{999}c"}, json.dumps("ab" * 400_000)
    )
    assert elapsed < 1.0
    assert_error(score, "regex work over its bound", "EVALFLEET_JSON_REGEX_MAX_COST")
    # The same pattern on ordinary strings is fine.
    assert one_score_ok({"pattern": "[ab]*a[ab]{9}c"}, json.dumps("ab" * 10 + "c")).passed is True


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"$ref": "https://schemas.example/order.json"}, "unresolvable $ref"),
        ({"$id": "https://schemas.example/root", "$ref": "other.json"}, "nothing is fetched"),
        ({"$ref": "#"}, "recursed too deeply"),
        (
            {
                "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
                "$ref": "#/$defs/a",
            },
            "recursed",
        ),
        (
            {"properties": {"a": {"$schema": "http://json-schema.org/draft-07/schema#"}}},
            "nested $schema (at /properties/a)",
        ),
        ({"$schema": "https://schemas.example/my-dialect"}, "unsupported $schema"),
        (
            {"patternProperties": {"^x-": {}}, "unevaluatedProperties": False},
            "combines unevaluatedProperties with patternProperties",
        ),
    ],
)
def test_refused_schemas(schema: dict[str, Any], reason: str) -> None:
    score, elapsed = judge(schema, '{"a": 1}')
    assert elapsed < 1.0
    assert_error(score, reason)


def test_ordinary_schemas_still_validate() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "required": ["id", "tags"],
        "properties": {
            "id": {"type": "string", "pattern": r"^[A-Z]{3}-\d{4}$"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
        },
        "patternProperties": {"^x-": {"type": "string"}},
        "additionalProperties": False,
    }
    assert one_score_ok(schema, json.dumps({"id": "ABC-1234", "tags": ["a"], "x-n": "s"})).passed
    extra = one_score_ok(schema, json.dumps({"id": "ABC-1234", "tags": [], "y": 1}))
    assert extra.passed is False and "'y' does not match any of the regexes: '^x-'" in extra.reason
    bad_id = one_score_ok(schema, json.dumps({"id": "abc", "tags": []}))
    assert bad_id.passed is False and "id: 'abc' does not match" in bad_id.reason
    # unevaluatedProperties without patternProperties is supported.
    closed = {"properties": {"a": {}}, "unevaluatedProperties": False}
    assert one_score_ok(closed, '{"a": 1}').passed is True
    assert one_score_ok(closed, '{"a": 1, "b": 2}').passed is False


def test_many_errors_are_counted_up_to_a_bound() -> None:
    score = one_score_ok(
        {"type": "array", "items": {"type": "integer"}}, json.dumps(["x"] * 50_000)
    )
    assert score.passed is False
    assert score.reason.startswith("100+ schema error(s); 0: 'x' is not of type 'integer'")


def test_patterns_are_found_wherever_a_ref_could_reach_them() -> None:
    schema = {
        "x-extension": {"pattern": "a", "patternProperties": {"b": {}, "c": {"pattern": "d"}}},
        "const": {"pattern": "(?=not a regex: data)"},
        "anyOf": [{"pattern": "e"}],
    }
    assert sorted(schema_patterns(schema)) == ["a", "b", "c", "d", "e"]


def test_the_issue_batch_is_scored(store: SQLStore, redis_client: redis.Redis) -> None:
    """The issue's batch: good traces and the one with the catastrophic pattern, all scored."""
    decision = SampleDecision(judge=False, rate=0.1).model_dump()
    traces = [
        make_trace(i, output='{"seats": 3}', output_schema={"type": "object"}) for i in range(40)
    ]
    traces.insert(20, make_trace(99, output=ISSUE_OUTPUT, output_schema=CATASTROPHIC))
    batch = [
        {"id": f"{1763630000000 + i}-0", "trace": t.model_dump_json(), "decision": decision}
        for i, t in enumerate(traces)
    ]
    ctx = ScoringContext(heuristic_evaluators(Settings()), store, ReviewRouter(), redis_client)
    started = time.perf_counter()
    result = score_batch(batch, ctx)
    assert time.perf_counter() - started < 10.0
    assert result.traces == 41
    with Session(store.engine) as session:
        rows = session.exec(
            select(ScoreRecord).where(ScoreRecord.evaluator == "json_validity")
        ).all()
    verdicts = {row.trace_id: (row.passed, row.reason) for row in rows}
    assert len(verdicts) == 41
    assert verdicts.pop("t-000099") == (
        False,
        "1 schema error(s); (root): 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!' does not "
        "match '^(a+)+$'",
    )
    assert set(verdicts.values()) == {(True, "valid JSON matching its schema")}
