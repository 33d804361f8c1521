"""Trace-supplied JSON Schemas, checked without trusting them.

A trace may carry its own ``output_schema``; the schema, its regular expressions and the answer
checked against it are all untrusted. This module validates an answer against such a schema so
that no input can make it hang:

- every regex a schema supplies (``pattern``, ``patternProperties`` — and so ``propertyNames``
  and ``additionalProperties``, which go through them — and ``format: regex``) runs on RE2, which
  matches in time linear in the text and cannot backtrack catastrophically. Python's ``re`` never
  sees one: ``jsonschema`` calls ``re.search`` in those keywords, so every draft is *extended*
  with keyword functions of ours (``jsonschema.validators.extend``), and the only ``re`` calls left
  in jsonschema (``unevaluatedProperties`` over ``patternProperties``) are refused up front;
- what RE2 cannot compile (backreferences, lookarounds, atomic groups, possessive quantifiers...)
  is refused with a reason naming the construct: an error score, never a silent pass;
- RE2's work is still proportional to (bytes matched x pattern program size), in C where no
  signal interrupts it: that product, summed over one validation, is bounded too;
- the schema's size, nesting depth and number of values are bounded (checked by an iterative walk
  that stops at the limit, so a schema of 100,000 properties is refused in microseconds), and so
  is the answer's nesting depth; a ``$ref`` cycle that recurses anyway is an error, not a crash;
- ``$ref`` never fetches anything: only the schema itself and the bundled meta-schemas resolve
  (a ``$ref`` to a meta-schema validates with jsonschema's own class: the regexes there are the
  meta-schema's, trusted, not the trace's);
- ``$schema`` picks one of the drafts below; one nested inside the schema is refused, because
  jsonschema would switch to its *stock* validator class (Python ``re``) for that subschema.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import Any

import jsonschema
import re2  # type: ignore[import-untyped]
import referencing
import referencing.exceptions
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator

# Top-level schema errors collected for a reason (a million failing array items must not mean a
# million error objects).
MAX_REPORTED_ERRORS = 100
# Trace-supplied patterns up to this length are kept compiled (an LRU of this many).
_CACHED_PATTERN_CHARS = 4096
_PATTERN_CACHE_SIZE = 256

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # untrusted patterns must not fill the worker's stderr


class SchemaRejected(Exception):
    """The schema, or the work it would need, is refused; the evaluation is an error score."""


class PatternRejected(SchemaRejected):
    """RE2 cannot compile a pattern. ``unsupported``: a construct RE2 lacks by design (the pattern
    may be valid ECMA 262), as opposed to a pattern no engine would accept."""

    def __init__(self, message: str, unsupported: bool) -> None:
        super().__init__(message)
        self.unsupported = unsupported


class RegexCostExceeded(SchemaRejected):
    """Matching would exceed the bound on RE2 work for one validation."""


@dataclass(frozen=True)
class SchemaLimits:
    """Bounds on a trace-supplied schema and on the work of validating an answer against it."""

    max_bytes: int = 64 * 1024
    """The schema serialized as compact UTF-8 JSON."""
    max_depth: int = 32
    """Nesting of JSON objects and arrays in the schema."""
    max_nodes: int = 5_000
    """JSON values in the schema: subschemas, keywords, properties, enum members..."""
    max_output_depth: int = 64
    """Nesting of objects and arrays in the answer validated against a schema."""
    max_regex_cost: int = 100_000_000
    """Sum over one validation of (UTF-8 bytes matched x RE2 program size); ~1 s of RE2 at
    worst on a current core."""


@dataclass(frozen=True)
class Verdict:
    """``passed`` is None when the answer could not be evaluated (an error, with the reason)."""

    passed: bool | None
    reason: str


def _error(reason: str) -> Verdict:
    return Verdict(None, reason[:500])


def _fail(reason: str) -> Verdict:
    return Verdict(False, reason[:500])


def _shorten(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- Patterns on RE2 ---------------------------------------------------------------------------

_HEX = frozenset("0123456789abcdefABCDEF")


def to_re2_syntax(pattern: str) -> str:
    """ECMA 262 escapes RE2 spells differently: ``\\uXXXX`` and ``\\u{X...}`` (RE2 ``\\x{...}``),
    ``\\cX`` (a control character), ``\\0`` (NUL) and ``[\\b]`` (backspace). Everything else is
    passed on, so RE2 judges it (and names what it does not support)."""
    if "\\" not in pattern:
        return pattern
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        char = pattern[i]
        if char != "\\" or i + 1 == n:
            if char == "[" and not in_class:
                in_class = True
            elif char == "]" and in_class:
                in_class = False
            out.append(char)
            i += 1
            continue
        nxt = pattern[i + 1]
        if nxt == "u" and i + 6 <= n and all(c in _HEX for c in pattern[i + 2 : i + 6]):
            out.append("\\x{" + pattern[i + 2 : i + 6] + "}")
            i += 6
        elif nxt == "u" and i + 2 < n and pattern[i + 2] == "{":
            end = pattern.find("}", i + 3)
            digits = pattern[i + 3 : end] if end > 0 else ""
            if digits and len(digits) <= 6 and all(c in _HEX for c in digits):
                out.append("\\x{" + digits + "}")
                i = end + 1
            else:
                out.append(pattern[i : i + 2])
                i += 2
        elif nxt == "c" and i + 2 < n and pattern[i + 2].isascii() and pattern[i + 2].isalpha():
            out.append(f"\\x{{{ord(pattern[i + 2]) % 32:02X}}}")
            i += 3
        elif nxt == "0" and not (i + 2 < n and pattern[i + 2].isdigit()):
            out.append("\\x{00}")
            i += 2
        elif nxt == "b" and in_class:
            out.append("\\x{08}")
            i += 2
        else:
            out.append(pattern[i : i + 2])
            i += 2
    return "".join(out)


# RE2's error message -> the construct it means (RE2 lacks these by design: they need
# backtracking, which is what makes a regex take exponential time).
_UNSUPPORTED = (
    ("invalid perl operator: (?=", "a lookahead (?=...)"),
    ("invalid perl operator: (?!", "a negative lookahead (?!...)"),
    ("invalid perl operator: (?<=", "a lookbehind (?<=...)"),
    ("invalid perl operator: (?<!", "a negative lookbehind (?<!...)"),
    ("invalid perl operator: (?>", "an atomic group (?>...)"),
    ("invalid perl operator: (?(", "a conditional (?(...)...)"),
    ("invalid escape sequence: \\k", "a named backreference \\k<...>"),
    ("bad repetition operator: ++", "a possessive quantifier (++)"),
    ("bad repetition operator: *+", "a possessive quantifier (*+)"),
    ("bad repetition operator: ?+", "a possessive quantifier (?+)"),
    ("bad repetition operator: }+", "a possessive quantifier ({n}+)"),
    ("pattern too large", "more program than RE2's memory bound allows"),
)


def _rejection(pattern: str, message: str) -> PatternRejected:
    construct: str | None
    if message.startswith("invalid escape sequence: \\") and message[-1:].isdigit():
        construct = f"a backreference ({message.rsplit(': ', 1)[-1]})"
    else:
        construct = next(
            (name for prefix, name in _UNSUPPORTED if message.startswith(prefix)), None
        )
    shown = _shorten(pattern)
    if construct is not None:
        return PatternRejected(
            f"pattern {shown} uses {construct}, which the linear-time regex engine (RE2) does "
            "not support; not evaluated",
            unsupported=True,
        )
    return PatternRejected(f"pattern {shown} is not a valid regex: {message}", unsupported=False)


def _compile_uncached(pattern: str) -> Any:
    try:
        return re2.compile(to_re2_syntax(pattern), _RE2_OPTIONS)
    except re2.error as exc:
        raw = exc.args[0] if exc.args else ""
        message = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        raise _rejection(pattern, message) from None


_compile_cached = lru_cache(maxsize=_PATTERN_CACHE_SIZE)(_compile_uncached)


def compile_pattern(pattern: str) -> Any:
    """The RE2 program of a trace-supplied (ECMA 262) pattern; raises PatternRejected."""
    if len(pattern) <= _CACHED_PATTERN_CHARS:
        return _compile_cached(pattern)
    return _compile_uncached(pattern)


@dataclass
class _RegexBudget:
    limit: int
    spent: int = 0


_REGEX_BUDGET: contextvars.ContextVar[_RegexBudget | None] = contextvars.ContextVar(
    "evalfleet_regex_budget", default=None
)


def regex_search(pattern: str, text: str) -> bool:
    """``re.search(pattern, text) is not None``, on RE2, charged to the validation's budget."""
    regexp = compile_pattern(pattern)
    data = text.encode("utf-8", "surrogatepass")
    budget = _REGEX_BUDGET.get()
    if budget is not None:
        cost = len(data) * max(int(regexp.programsize), 1)
        budget.spent += cost
        if budget.spent > budget.limit:
            raise RegexCostExceeded(
                f"regex work over its bound: pattern {_shorten(pattern, 60)} (RE2 program size "
                f"{regexp.programsize}) on a {len(data):,}-byte string brings this validation "
                f"to {budget.spent:,} > {budget.limit:,} (EVALFLEET_JSON_REGEX_MAX_COST); "
                "not evaluated"
            )
    return regexp.search(data) is not None


# --- The keywords that match regexes, on RE2 ---------------------------------------------------
# Same semantics and messages as jsonschema's own (jsonschema/_keywords.py), re.search -> RE2.


def _pattern(validator: Any, patrn: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not regex_search(patrn, instance):
        yield ValidationError(f"{_shorten(instance)} does not match {_shorten(patrn)}")


def _pattern_properties(
    validator: Any, pattern_properties: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        for key, value in instance.items():
            if regex_search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> Iterator[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    for key in instance:
        if key not in properties and not any(regex_search(p, key) for p in patterns):
            yield key


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = set(_additional(instance, schema))
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        shown = ", ".join(_shorten(each, 40) for each in sorted(extras, key=str)[:20])
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            patterns = ", ".join(_shorten(p, 40) for p in sorted(schema["patternProperties"]))
            yield ValidationError(f"{shown} {verb} not match any of the regexes: {patterns}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(
                f"Additional properties are not allowed ({shown} {verb} unexpected)"
            )


class _InvalidRegex(Exception):
    """A ``format: regex`` value RE2 cannot compile: the instance is not a regex it can use."""


FORMAT_CHECKER = jsonschema.FormatChecker(formats=())


@FORMAT_CHECKER.checks("regex", raises=_InvalidRegex)
def _is_regex(instance: object) -> bool:
    """``format: regex`` on RE2 (jsonschema's own compiles with Python ``re``). A construct RE2
    lacks is an error (PatternRejected propagates), a malformed regex a failed format."""
    if not isinstance(instance, str):
        return True
    try:
        compile_pattern(instance)
    except PatternRejected as exc:
        if exc.unsupported:
            raise PatternRejected(f"a string of format 'regex': {exc}", True) from None
        raise _InvalidRegex(str(exc)) from None
    return True


_RE2_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}
_STOCK_DRAFTS: tuple[type[Validator], ...] = (
    jsonschema.Draft3Validator,
    jsonschema.Draft4Validator,
    jsonschema.Draft6Validator,
    jsonschema.Draft7Validator,
    jsonschema.Draft201909Validator,
    jsonschema.Draft202012Validator,
)
# Drafts whose unevaluatedProperties (jsonschema's, with re.search inside) exists.
_UNEVALUATED_DRAFTS = (jsonschema.Draft201909Validator, jsonschema.Draft202012Validator)


def _draft_key(uri: str) -> str:
    return uri.strip().rstrip("#").removeprefix("https://").removeprefix("http://")


def _meta_schema_id(validator: type[Validator]) -> str:
    meta = validator.META_SCHEMA
    return str(meta.get("$id") or meta.get("id"))


def _extended(stock: type[Validator]) -> type[Validator]:
    # Not registered (version=None): jsonschema's own $schema -> class table is left alone.
    extended: type[Validator] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        stock, _RE2_KEYWORDS, format_checker=FORMAT_CHECKER
    )
    return extended


_DRAFTS: dict[str, tuple[type[Validator], type[Validator]]] = {
    _draft_key(_meta_schema_id(stock)): (stock, _extended(stock)) for stock in _STOCK_DRAFTS
}
_DEFAULT_DRAFT = _DRAFTS[_draft_key(_meta_schema_id(jsonschema.Draft202012Validator))]


# --- The schema's shape ------------------------------------------------------------------------


@dataclass
class _Shape:
    nested_schema_keyword: str | None = None  # JSON pointer of a nested string $schema
    unevaluated_properties: bool = False
    pattern_properties: bool = False


def _pointer(path: tuple[str | int, ...]) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _walk_schema(schema: Mapping[str, Any], limits: SchemaLimits) -> tuple[_Shape, str | None]:
    """The schema's shape, or why it is refused; iterative, stops at the first limit crossed."""
    shape = _Shape()
    nodes = 0
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(schema, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if depth > limits.max_depth:
            return shape, (
                f"trace's output_schema nests deeper than {limits.max_depth} levels (at "
                f"{_pointer(path)}; EVALFLEET_JSON_SCHEMA_MAX_DEPTH); not evaluated"
            )
        children: Any
        if isinstance(value, dict):
            if path and isinstance(value.get("$schema"), str):
                shape.nested_schema_keyword = shape.nested_schema_keyword or _pointer(path)
            if "unevaluatedProperties" in value:
                shape.unevaluated_properties = True
            if isinstance(value.get("patternProperties"), dict):
                shape.pattern_properties = True
            children = value.items()
        elif isinstance(value, list):
            children = enumerate(value)
        else:
            continue
        for key, child in children:
            nodes += 1
            if nodes > limits.max_nodes:
                return shape, (
                    f"trace's output_schema has more than {limits.max_nodes:,} values "
                    "(subschemas, keywords, properties, enum members; "
                    "EVALFLEET_JSON_SCHEMA_MAX_NODES); not evaluated"
                )
            if isinstance(child, dict | list):
                stack.append((child, depth + 1, (*path, key)))
    return shape, None


# Keywords whose values are data, not schemas: a "pattern" inside them is no regex.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "example"})


def schema_patterns(schema: Mapping[str, Any]) -> Iterator[str]:
    """Every regex the schema may apply: ``pattern`` strings and ``patternProperties`` keys of
    its objects, outside data keywords (``const``, ``enum``, ``default``, ``examples``). Also
    those in positions only a ``$ref`` reaches, so none escapes the check before validation."""
    stack: list[Any] = [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
            continue
        if not isinstance(value, dict):
            continue
        if isinstance(value.get("pattern"), str):
            yield value["pattern"]
        if isinstance(value.get("patternProperties"), dict):
            yield from (key for key in value["patternProperties"] if isinstance(key, str))
        stack.extend(child for key, child in value.items() if key not in _DATA_KEYWORDS)


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply objects and arrays nest in ``value`` (a scalar is 0), counted up to
    ``limit + 1`` at most; iterative, so any depth is safe."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth) for child in children if isinstance(child, dict | list))
    return deepest


def _path_order(error: ValidationError) -> list[tuple[bool, Any]]:
    return [(isinstance(p, str), p) for p in error.path]


# --- The guard ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    validator: Validator | None
    verdict: Verdict | None  # the schema's own verdict (invalid or refused) when no validator


class SchemaGuard:
    """Validates answers against trace-supplied schemas within ``limits``. Prepared schemas (the
    checked, compiled validator or the verdict on the schema) are cached by their text: the
    traces of one app carry the same schema again and again."""

    def __init__(self, limits: SchemaLimits | None = None, cache_size: int = 256) -> None:
        self.limits = limits or SchemaLimits()
        self._prepare = lru_cache(maxsize=cache_size)(self._prepare_uncached)

    def check(self, document: Any, schema: Mapping[str, Any]) -> Verdict:
        """Does ``document`` (parsed JSON) satisfy ``schema``? Never hangs on hostile input and
        never raises for it: the verdict says pass, fail, or why it could not be evaluated."""
        if not isinstance(schema, dict):
            return _fail("trace's output_schema is invalid: not a JSON object")
        shape, refused = _walk_schema(schema, self.limits)
        if refused:
            return _error(refused)
        try:
            text = json.dumps(schema, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:  # only from Python callers: the wire is JSON
            return _fail(f"trace's output_schema is invalid: {exc}")
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.limits.max_bytes:
            return _error(
                f"trace's output_schema is {size:,} bytes, over the limit of "
                f"{self.limits.max_bytes:,} (EVALFLEET_JSON_SCHEMA_MAX_BYTES); not evaluated"
            )
        if shape.nested_schema_keyword is not None:
            return _error(
                f"trace's output_schema has a nested $schema (at {shape.nested_schema_keyword}); "
                "only a top-level $schema is supported; not evaluated"
            )
        declared = schema.get("$schema")
        if declared is None:
            stock, _ = _DEFAULT_DRAFT
        elif isinstance(declared, str) and _draft_key(declared) in _DRAFTS:
            stock, _ = _DRAFTS[_draft_key(declared)]
        else:
            return _error(
                f"trace's output_schema has an unsupported $schema {_shorten(declared)}; "
                "supported: JSON Schema drafts 3, 4, 6, 7, 2019-09 and 2020-12; not evaluated"
            )
        combined = shape.unevaluated_properties and shape.pattern_properties
        if combined and stock in _UNEVALUATED_DRAFTS:
            return _error(
                "trace's output_schema combines unevaluatedProperties with patternProperties, "
                "which is not supported (its regexes would not run on RE2); not evaluated"
            )
        prepared = self._prepare(text, _draft_key(declared) if isinstance(declared, str) else "")
        if prepared.validator is None:
            assert prepared.verdict is not None
            return prepared.verdict
        depth = nesting_depth(document, self.limits.max_output_depth)
        if depth > self.limits.max_output_depth:
            return _error(
                f"answer JSON nests deeper than {self.limits.max_output_depth} levels "
                "(EVALFLEET_JSON_MAX_OUTPUT_DEPTH); not validated against its schema"
            )
        return self._validate(prepared.validator, document)

    def _prepare_uncached(self, text: str, draft: str) -> _Prepared:
        _, extended = _DRAFTS[draft] if draft else _DEFAULT_DRAFT
        schema = json.loads(text)
        # The draft is chosen; without $schema no subschema ($ref "#" included) can make
        # jsonschema switch back to its stock class.
        schema.pop("$schema", None)
        try:
            # Every regex compiled up front: a construct RE2 lacks is an error even where the
            # answer never reaches it (and never a silent pass).
            for pattern in schema_patterns(schema):
                compile_pattern(pattern)
        except PatternRejected as exc:
            if exc.unsupported:
                return _Prepared(None, _error(f"trace's output_schema: {exc}"))
            return _Prepared(None, _fail(f"trace's output_schema is invalid: {exc}"))
        try:
            extended.check_schema(schema, format_checker=FORMAT_CHECKER)  # type: ignore[call-arg]
        except SchemaError as exc:
            return _Prepared(None, _fail(f"trace's output_schema is invalid: {exc.message}"))
        except SchemaRejected as exc:
            return _Prepared(None, _error(f"trace's output_schema: {exc}"))
        except RecursionError:
            return _Prepared(None, _error("trace's output_schema nests too deeply to check"))
        validator = extended(schema, format_checker=FORMAT_CHECKER, registry=referencing.Registry())
        return _Prepared(validator, None)

    def _validate(self, validator: Validator, document: Any) -> Verdict:
        token = _REGEX_BUDGET.set(_RegexBudget(self.limits.max_regex_cost))
        try:
            errors = list(islice(validator.iter_errors(document), MAX_REPORTED_ERRORS + 1))
        except SchemaRejected as exc:
            return _error(str(exc))
        except referencing.exceptions.Unresolvable as exc:
            return _error(
                f"trace's output_schema has an unresolvable $ref ({exc}); only references "
                "into the schema itself resolve (nothing is fetched); not evaluated"
            )
        except RecursionError:
            return _error(
                "validating against the trace's output_schema recursed too deeply "
                "(a $ref cycle?); not evaluated"
            )
        finally:
            _REGEX_BUDGET.reset(token)
        if not errors:
            return Verdict(True, "valid JSON matching its schema")
        count = f"{MAX_REPORTED_ERRORS}+" if len(errors) > MAX_REPORTED_ERRORS else str(len(errors))
        first = min(errors[:MAX_REPORTED_ERRORS], key=_path_order)
        where = "/".join(str(p) for p in first.absolute_path) or "(root)"
        return _fail(f"{count} schema error(s); {where}: {first.message[:300]}")
