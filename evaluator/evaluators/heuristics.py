"""Cheap deterministic checks that run on every trace.

Each check emits one boolean score named after it (1.0 = pass) or nothing when it does not apply.
A failing check's reason never repeats sensitive text from the trace (no PII values).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

import jsonschema

from evaluator.evaluators.base import CheckEvaluator
from evaluator.models import Score, Severity, Trace
from evaluator.pii import find_pii


@dataclass
class LengthBounds(CheckEvaluator):
    """Answer length in characters is within [min_chars, max_chars]; empty answers fail."""

    name: ClassVar[str] = "length_bounds"
    version: ClassVar[str] = "1.0.0"
    min_chars: int = 1
    max_chars: int = 8000

    def evaluate(self, trace: Trace) -> list[Score]:
        length = len(trace.output.strip())
        if length < self.min_chars:
            return [
                self.result(trace, False, f"answer has {length} chars, minimum {self.min_chars}")
            ]
        if length > self.max_chars:
            return [
                self.result(trace, False, f"answer has {length} chars, maximum {self.max_chars}")
            ]
        return [self.result(trace, True, f"{length} chars")]


def _phrase_pattern(phrases: list[str]) -> re.Pattern[str]:
    escaped = (re.escape(p.strip()).replace(r"\ ", r"\s+") for p in phrases if p.strip())
    return re.compile(r"\b(?:" + "|".join(escaped) + r")\b", re.IGNORECASE)


_AI_SELF_REFERENCE = _phrase_pattern(
    [
        "as an AI",
        "as an AI language model",
        "as a large language model",
        "as a language model",
        "I am an AI",
        "I'm an AI",
        "I am a language model",
        "I'm just an AI",
        "my knowledge cutoff",
        "my training data",
        "I was trained by",
    ]
)


@dataclass
class AISelfReference(CheckEvaluator):
    """The answer talks about itself as an AI model ("As an AI language model, ...")."""

    name: ClassVar[str] = "ai_self_reference"
    version: ClassVar[str] = "1.0.0"

    def evaluate(self, trace: Trace) -> list[Score]:
        match = _AI_SELF_REFERENCE.search(trace.output)
        if match:
            return [self.result(trace, False, f"self-reference phrase: {match.group(0)!r}")]
        return [self.result(trace, True, "no self-reference")]


_URL = re.compile(r"https?://[^\s<>\"'`\])}]+", re.IGNORECASE)


def _normalise_url(url: str) -> str:
    return url.rstrip(".,;:!?").rstrip("/").lower()


@dataclass
class UnsupportedURLs(CheckEvaluator):
    """Every URL in the answer appears in the retrieved contexts or the input.

    A URL found nowhere in the sources is a typical hallucination (fabricated documentation links).
    """

    name: ClassVar[str] = "unsupported_urls"
    version: ClassVar[str] = "1.0.0"
    severity: ClassVar[Severity] = Severity.HIGH

    def evaluate(self, trace: Trace) -> list[Score]:
        answer_urls = {_normalise_url(u) for u in _URL.findall(trace.output)}
        if not answer_urls:
            return [self.result(trace, True, "no URLs in answer")]
        sources = "\n".join([trace.input, *trace.contexts])
        known = {_normalise_url(u) for u in _URL.findall(sources)}
        unknown = sorted(answer_urls - known)
        if unknown:
            shown = ", ".join(unknown[:5])
            return [self.result(trace, False, f"{len(unknown)} URL(s) in no context: {shown}")]
        return [self.result(trace, True, f"{len(answer_urls)} URL(s), all in sources")]


_REFUSAL = re.compile(
    r"^\W*(?:i(?:'m| am) sorry,?\s+but\s+i\b|sorry,?\s+(?:but\s+)?i\s+(?:can(?:no|')t|am unable)"
    r"|i\s+(?:can(?:no|')t|am unable to|am not able to|won't)\s+"
    r"(?:help|assist|provide|answer|do|comply|share|discuss)"
    r"|unfortunately,?\s+i\s+(?:can(?:no|')t|am unable)"
    r"|i\s+(?:must|have to)\s+decline)",
    re.IGNORECASE,
)


@dataclass
class Refusal(CheckEvaluator):
    """The answer opens with a refusal ("I'm sorry, but I can't help with that")."""

    name: ClassVar[str] = "refusal"
    version: ClassVar[str] = "1.0.0"

    def evaluate(self, trace: Trace) -> list[Score]:
        # Normalise the typographic apostrophe (U+2019) so it matches like "can't".
        text = trace.output.replace("\u2019", "'")
        if _REFUSAL.search(text[:300]):
            return [self.result(trace, False, "answer is a refusal")]
        return [self.result(trace, True, "not a refusal")]


_BAD_FINISH = {
    "length": "answer truncated at the token limit",
    "max_tokens": "answer truncated at the token limit",
    "content_filter": "answer stopped by the provider's content filter",
}


@dataclass
class FinishReason(CheckEvaluator):
    """The generation ended normally: not truncated (``length``), not ``content_filter``-ed."""

    name: ClassVar[str] = "finish_reason"
    version: ClassVar[str] = "1.0.0"
    severity: ClassVar[Severity] = Severity.HIGH

    def evaluate(self, trace: Trace) -> list[Score]:
        if trace.finish_reason is None:
            return []
        reason = trace.finish_reason.lower()
        if reason in _BAD_FINISH:
            return [self.result(trace, False, _BAD_FINISH[reason], label=reason)]
        return [self.result(trace, True, f"finished with {reason!r}", label=reason)]


@dataclass
class JSONValidity(CheckEvaluator):
    """When the trace declares JSON output, the answer parses (and matches its JSON Schema)."""

    name: ClassVar[str] = "json_validity"
    version: ClassVar[str] = "1.0.0"
    severity: ClassVar[Severity] = Severity.HIGH

    def evaluate(self, trace: Trace) -> list[Score]:
        if not trace.expects_json:
            return []
        try:
            document = json.loads(trace.output)
        except json.JSONDecodeError as exc:
            return [self.result(trace, False, f"not JSON: {exc.msg} at line {exc.lineno}")]
        if trace.output_schema is None:
            return [self.result(trace, True, "valid JSON")]
        try:
            validator_cls = jsonschema.validators.validator_for(trace.output_schema)
            validator_cls.check_schema(trace.output_schema)
        except jsonschema.SchemaError as exc:
            return [self.result(trace, False, f"trace's output_schema is invalid: {exc.message}")]
        errors = sorted(
            validator_cls(trace.output_schema).iter_errors(document), key=lambda e: list(e.path)
        )
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(root)"
            return [
                self.result(
                    trace, False, f"{len(errors)} schema error(s); {where}: {first.message}"
                )
            ]
        return [self.result(trace, True, "valid JSON matching its schema")]


def _digits_or_lower(value: str) -> str:
    digits = "".join(c for c in value if c.isdigit())
    return digits if len(digits) >= 7 else value.lower()


@dataclass
class PIILeak(CheckEvaluator):
    """The answer contains no email address, phone number or card number the user did not give.

    PII the user typed in the input and that the answer repeats is not a leak; PII taken from
    retrieved contexts or invented is. The reason names kinds and counts, never the values.
    """

    name: ClassVar[str] = "pii_leak"
    version: ClassVar[str] = "1.0.0"
    severity: ClassVar[Severity] = Severity.HIGH

    def evaluate(self, trace: Trace) -> list[Score]:
        given = {_digits_or_lower(v) for _, v in find_pii(trace.input)}
        leaked = [kind for kind, v in find_pii(trace.output) if _digits_or_lower(v) not in given]
        if leaked:
            counts = ", ".join(f"{kind} x{n}" for kind, n in sorted(Counter(leaked).items()))
            return [self.result(trace, False, f"PII in answer: {counts}")]
        return [self.result(trace, True, "no PII leaked")]


@dataclass
class ForbiddenPhrases(CheckEvaluator):
    """The answer contains none of the configured forbidden phrases (competitors, promises...)."""

    name: ClassVar[str] = "forbidden_phrases"
    version: ClassVar[str] = "1.0.0"
    severity: ClassVar[Severity] = Severity.HIGH
    phrases: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pattern = (
            _phrase_pattern(self.phrases) if any(p.strip() for p in self.phrases) else None
        )

    def evaluate(self, trace: Trace) -> list[Score]:
        if self._pattern is None:
            return []
        hits = sorted({m.group(0).lower() for m in self._pattern.finditer(trace.output)})
        if hits:
            return [self.result(trace, False, f"forbidden phrase(s): {', '.join(hits)}")]
        return [self.result(trace, True, "no forbidden phrase")]


@dataclass
class RAGNoContext(CheckEvaluator):
    """A RAG answer (``retrieval: true``) was given although retrieval returned nothing."""

    name: ClassVar[str] = "rag_no_context"
    version: ClassVar[str] = "1.0.0"

    def evaluate(self, trace: Trace) -> list[Score]:
        if not trace.retrieval:
            return []
        if not any(c.strip() for c in trace.contexts):
            return [self.result(trace, False, "RAG answer given with no retrieved context")]
        return [self.result(trace, True, f"{len(trace.contexts)} context(s)")]
