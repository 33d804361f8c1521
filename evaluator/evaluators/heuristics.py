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

from evaluator.evaluators.base import CheckEvaluator
from evaluator.evaluators.pii import DEFAULT_REGIONS, detect_pii
from evaluator.evaluators.schema_guard import SchemaGuard, SchemaLimits
from evaluator.models import Score, Severity, Trace


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


# "As an AI ..." is a self-reference when it opens a sentence or the sentence speaks in the
# first person ("As an AI language model, I cannot ..."); "tools such as an AI assistant" is not.
_FIRST_PERSON = re.compile(r"\b(?:I|I'm|I've|I'd|I'll|me|my|myself)\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?\n]")
_SENTENCE_REACH = 200  # characters either side of the phrase searched for a first-person word


def _speaks_of_itself(text: str, start: int, end: int) -> bool:
    before = text[max(0, start - _SENTENCE_REACH) : start]
    cut = max((m.end() for m in _SENTENCE_END.finditer(before)), default=0)
    opening = before[cut:]
    if not opening.strip(" \t\"'*_("):
        return True  # the phrase opens the sentence
    after = text[end : end + _SENTENCE_REACH]
    stop = _SENTENCE_END.search(after)
    sentence = opening + " " + after[: stop.start() if stop else len(after)]
    return _FIRST_PERSON.search(sentence) is not None


@dataclass
class AISelfReference(CheckEvaluator):
    """The answer talks about itself as an AI model ("As an AI language model, I ...").

    Low severity: it never routes a trace to review by itself. On the public labelled sets
    about 10 % of good answers in one of them (HaluEval general) say this, so it is a style
    signal for dashboards and sampling, not a failure that needs a person.
    """

    name: ClassVar[str] = "ai_self_reference"
    version: ClassVar[str] = "1.1.0"
    severity: ClassVar[Severity] = Severity.LOW

    def evaluate(self, trace: Trace) -> list[Score]:
        text = trace.output.replace("\u2019", "'")
        for match in _AI_SELF_REFERENCE.finditer(text):
            phrase = match.group(0)
            if phrase[:2].lower() != "as" or _speaks_of_itself(text, *match.span()):
                return [self.result(trace, False, f"self-reference phrase: {phrase!r}")]
        return [self.result(trace, True, "no self-reference")]


_URL = re.compile(r"https?://[^\s<>\"'`\])}]+", re.IGNORECASE)


def _normalise_url(url: str) -> str:
    return url.rstrip(".,;:!?").rstrip("/").lower()


@dataclass
class UnsupportedURLs(CheckEvaluator):
    """Every URL in the answer appears in the retrieved contexts or the input.

    A URL found nowhere in the sources of a RAG answer is a typical hallucination (fabricated
    documentation links). It applies only to traces that have sources to check against — a RAG
    flow (``retrieval: true``) or retrieved contexts: without them it cannot tell a fabricated
    link from a real one the model knows (a CDN, git-scm.com), so it says nothing.
    """

    name: ClassVar[str] = "unsupported_urls"
    version: ClassVar[str] = "1.1.0"
    severity: ClassVar[Severity] = Severity.HIGH

    def evaluate(self, trace: Trace) -> list[Score]:
        if not (trace.retrieval or trace.contexts):
            return []
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
    """When the trace declares JSON output, the answer parses (and matches its JSON Schema).

    The trace's schema is untrusted: it is checked through ``schema_guard`` (its regexes on RE2,
    its size and depth bounded, nothing fetched). What cannot be evaluated safely (a construct
    RE2 lacks, a schema over a limit, an answer nested too deep) is an error score with the
    reason; an answer nested too deep for any parser fails.
    """

    name: ClassVar[str] = "json_validity"
    version: ClassVar[str] = "1.1.0"
    severity: ClassVar[Severity] = Severity.HIGH
    limits: SchemaLimits = field(default_factory=SchemaLimits)

    def __post_init__(self) -> None:
        self._guard = SchemaGuard(self.limits)

    def evaluate(self, trace: Trace) -> list[Score]:
        if not trace.expects_json:
            return []
        try:
            document = json.loads(trace.output)
        except json.JSONDecodeError as exc:
            return [self.result(trace, False, f"not JSON: {exc.msg} at line {exc.lineno}")]
        except RecursionError:
            return [self.result(trace, False, "not JSON a parser can read: nested too deeply")]
        if trace.output_schema is None:
            return [self.result(trace, True, "valid JSON")]
        verdict = self._guard.check(document, trace.output_schema)
        if verdict.passed is None:
            return [self.error(trace, verdict.reason)]
        return [self.result(trace, verdict.passed, verdict.reason)]


@dataclass
class PIILeak(CheckEvaluator):
    """The answer contains no personal data the user did not give: email address, phone
    number, card number, IBAN or US social security number (``evaluator.evaluators.pii``:
    libphonenumber, python-stdnum's checksums, the Public Suffix List).

    PII the user typed in the input and that the answer repeats is not a leak; PII taken from
    retrieved contexts or invented is. Documentation placeholders (``example.com``, 555-01xx
    numbers, test card numbers), role mailboxes (``support@``) and toll-free numbers are not
    personal data. The reason names kinds and counts, never the values.
    """

    name: ClassVar[str] = "pii_leak"
    version: ClassVar[str] = "2.0.0"
    severity: ClassVar[Severity] = Severity.HIGH
    regions: tuple[str, ...] = DEFAULT_REGIONS  # whose national phone formats are read

    def evaluate(self, trace: Trace) -> list[Score]:
        found = [m for m in detect_pii(trace.output, self.regions) if m.personal]
        if found:
            given = {m.key for m in detect_pii(trace.input, self.regions)}
            found = [m for m in found if m.key not in given]
        if found:
            counts = Counter(m.kind for m in found)
            listed = ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items()))
            return [self.result(trace, False, f"PII in answer: {listed}")]
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
