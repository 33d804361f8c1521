"""Personal data in free text: found for the PII-leak check, redacted before text goes to a judge.

What counts, and who decides it (libraries made for each kind, not hand-written shapes):

- **phone numbers**: Google's libphonenumber (`phonenumbers`), its matcher at
  ``STRICT_GROUPING`` leniency: a number must exist in its country's numbering plan and be
  grouped as that country writes numbers (international ``+…`` numbers of any country; national
  formats of ``DEFAULT_REGIONS``). Years, year ranges, decimals, IP addresses, versions,
  arithmetic and tables of numbers are not phone numbers.
- **card numbers**: 13-19 digits, ungrouped or in the usual groups, that pass the Luhn check
  (`python-stdnum`) and start with a card network's issuer prefix (Visa, Mastercard, Amex, ...).
- **IBANs**: `python-stdnum`'s IBAN check (country format and ISO 7064 mod 97-10).
- **US social security numbers** written ``AAA-GG-SSSS``: `python-stdnum`'s SSN rules.
- **email addresses** whose domain ends in a real top-level domain (the Public Suffix List
  snapshot shipped with `tldextract`, never fetched), so ``logo@2x.png`` is no address.

Every match is marked ``personal`` or not. Not personal — found and redacted, but never a leak:
documentation placeholders (RFC 2606/6761 reserved domains such as ``example.com`` and
``.example``/``.test``/``.invalid``/``.localhost``; ``your…`` template addresses; NANP 555-01xx
and 555-1212, Ofcom's drama numbers; the card networks' published test numbers; the SSN
123-45-6789), role mailboxes (RFC 2142 ``support@``, ``info@``, ``noreply@``, ...) and toll-free,
premium-rate and shared-cost numbers, which name a service, not a person.

Time-safety: every pattern here is bounded and unambiguous (no nested unbounded repetition),
and no match crosses a line break, so scanning is linear in the text's length. Each text gets at
most ``MAX_CHECKS`` look-ups per kind (a phone number's costs ~0.1 ms); past that,
``redact_pii`` still replaces every remaining candidate of that kind unchecked (over-redaction
rather than a leak), while ``detect_pii``/``find_pii`` report what was checked. 1 MB of
adversarial text takes well under a second (``tests/test_pii.py``).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher, PhoneNumberType
from stdnum import iban as stdnum_iban
from stdnum import luhn, numdb
from stdnum.iso7064 import mod_97_10
from stdnum.us import ssn as stdnum_ssn

# National (non-+) formats are read as numbers of these countries; +… numbers of any country.
DEFAULT_REGIONS: tuple[str, ...] = ("US", "GB")
MAX_CHECKS = 1000  # library look-ups per kind and text

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "card": "[CARD]",
    "iban": "[IBAN]",
    "ssn": "[SSN]",
}


@dataclass(frozen=True, slots=True)
class PIIMatch:
    """One detected value: where it is, what kind, and whether it identifies a person."""

    kind: str
    value: str  # as written in the text
    start: int
    end: int
    key: str  # normalised for comparison: E.164, lower-case address, bare digits
    personal: bool  # False: a documentation placeholder, a role mailbox or a service number


# -- candidates: bounded, linear-time, single-line patterns -------------------------------------
# A pattern that must not start inside a word opens with the character it needs and then looks
# back two characters (``\d(?<![\d-]\d)``): the regex engine then skips ahead to candidate
# characters instead of testing a look-behind at every position.

# An email address: a local part of at most 64 characters, where a run of address characters
# starts, then dot-separated labels and a top-level domain.
_EMAIL = re.compile(
    r"([A-Za-z0-9._%+-](?<![A-Za-z0-9._%+-][A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{0,63})@"
    r"((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,10}[A-Za-z]{2,63})"
    r"(?![A-Za-z0-9-])"
)
# A run of digits with the separators people type in phone numbers: space, no-break space, dot,
# hyphen, slash, parentheses, at most three in a row, never a line break or a tab. It starts
# only where no word character, sign or decimal point is before it and holds 7 to 41 digits
# (a longer run is cut there); libphonenumber's matcher then reads the numbers inside it.
_NUMBER_RUN = re.compile(
    r"(?:[+(](?<![\w+.,/-][+(])\d|\d(?<![\w+.,/-]\d))(?:[ \u00a0./()-]{1,3}\d|\d){6,40}(?!\w)"
)
# A card number: 12-19 digits in one block, in groups of four (the last 1-4, or a 19-digit
# 4-4-4-4-3) or Amex/Diners' 4-6-5 / 4-6-4, one space or hyphen between groups.
_CARD = re.compile(
    r"\d(?<![\d-]\d)(?:\d{11,18}|\d{3}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{3})?"
    r"|\d{3}([ -])\d{6}\2\d{4,5})(?!\d)"
)
# An IBAN: country, check digits, then groups of four (the printed form) or one block.
_IBAN = re.compile(
    r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}"
    r"(?:(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?|[A-Z0-9]{11,30})"
    r"(?![A-Za-z0-9])"
)
# A US social security number as it is written: AAA-GG-SSSS.
_SSN = re.compile(r"\d(?<![\d-]\d)\d{2}-\d{2}-\d{4}(?![\d-])")
# Numbers inside a URL are paths and ids, not phone or card numbers.
_URL = re.compile(r"(?:https?|ftp)://[^\s<>\"'`]{1,4096}", re.IGNORECASE)
_ALNUM = re.compile(r"[A-Za-z0-9]")

# -- what is not personal ----------------------------------------------------------------------

_RESERVED_TLDS = frozenset({"example", "test", "invalid", "localhost", "local"})  # RFC 2606/6761
_RESERVED_DOMAINS = ("example.com", "example.net", "example.org")  # RFC 2606 §3
# RFC 2142 mailbox names for services, and the other role addresses answers print.
_ROLE_MAILBOXES = frozenset(
    {
        "info", "marketing", "sales", "support", "abuse", "noc", "security", "postmaster",
        "hostmaster", "usenet", "news", "webmaster", "www", "uucp", "ftp",
        "noreply", "no-reply", "donotreply", "do-not-reply", "contact", "help", "helpdesk",
        "admin", "billing", "privacy", "legal", "press", "media", "careers", "jobs",
        "feedback", "enquiries", "inquiries", "customerservice", "service", "git",
    }
)  # fmt: skip
# NANP numbers set aside for fiction and examples (555-0100..0199) and directory assistance.
_NANP_FICTIONAL_LINE = re.compile(r"\d{3}555(?:01\d\d|1212)")
# Ofcom's numbers for TV and radio drama (national significant numbers without the 0).
_UK_DRAMA = re.compile(
    r"(?:1134960|1144960|1154960|1164960|1174960|1184960|1214960|1314960|1414960|1514960"
    r"|1614960|2079460|2896496|2920180|1632960|7700900|8081570|9098790|3069990)\d{3}"
)
_SERVICE_NUMBER_TYPES = frozenset(
    {
        PhoneNumberType.TOLL_FREE,
        PhoneNumberType.PREMIUM_RATE,
        PhoneNumberType.SHARED_COST,
        PhoneNumberType.UAN,
    }
)
# Test card numbers the card networks and payment providers publish for documentation.
_TEST_CARDS = frozenset(
    {
        "4111111111111111", "4242424242424242", "4012888888881881", "4000056655665556",
        "4222222222222", "5555555555554444", "5105105105105100", "5200828282828210",
        "2223003122003222", "378282246310005", "371449635398431", "378734493671000",
        "6011111111111117", "6011000990139424", "3566002020360505", "3530111333300000",
        "30569309025904", "38520000023237", "6200000000000005",
    }
)  # fmt: skip
# The local parts documentation uses for "some person": John/Jane Doe, user, name, ...
_PLACEHOLDER_NAMES = frozenset(
    {
        "john.doe", "johndoe", "john_doe", "jane.doe", "janedoe", "jane_doe", "jdoe", "user",
        "username", "name", "email", "someone", "somebody", "example", "test", "foo", "bar",
        "foobar", "firstname.lastname", "first.last", "firstname", "lastname", "me", "you",
    }
)  # fmt: skip
_PLACEHOLDER_SSNS = frozenset({"123456789"})
# Valid-looking US numbers that are programmers' constants (2**31 - 1, 2**31) in answers.
_NOT_PHONES = frozenset({"+12147483647", "+12147483648"})

# Card networks' issuer prefixes (ranges of the leading digits) and lengths.
_CARD_RANGES: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (2200, 2204, frozenset({16, 17, 18, 19})),  # Mir
    (34, 34, frozenset({15})),  # American Express
    (37, 37, frozenset({15})),
    (300, 305, frozenset({14, 15, 16, 17, 18, 19})),  # Diners Club
    (36, 36, frozenset({14, 15, 16, 17, 18, 19})),
    (38, 39, frozenset({16, 17, 18, 19})),
    (6011, 6011, frozenset({16, 17, 18, 19})),  # Discover
    (644, 649, frozenset({16, 17, 18, 19})),
    (65, 65, frozenset({16, 17, 18, 19})),
    (3528, 3589, frozenset({16, 17, 18, 19})),  # JCB
    (62, 62, frozenset({16, 17, 18, 19})),  # UnionPay
    (50, 50, frozenset({12, 13, 14, 15, 16, 17, 18, 19})),  # Maestro
    (56, 58, frozenset({12, 13, 14, 15, 16, 17, 18, 19})),
    (6304, 6304, frozenset({12, 13, 14, 15, 16, 17, 18, 19})),
    (6759, 6763, frozenset({12, 13, 14, 15, 16, 17, 18, 19})),
)


@cache
def _public_tlds() -> frozenset[str]:
    """Top-level domains of the Public Suffix List snapshot shipped with tldextract."""
    import tldextract  # deferred: loading the list takes ~0.2 s, once per process

    extractor = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    return frozenset(s.rsplit(".", 1)[-1].lower() for s in extractor.tlds)


def luhn_valid(number: str) -> bool:
    """``number``'s digits (13 to 19 of them) pass the Luhn check."""
    digits = "".join(c for c in number if c.isdigit())
    return 13 <= len(digits) <= 19 and luhn.is_valid(digits)


def _card_network(digits: str) -> bool:
    for low, high, lengths in _CARD_RANGES:
        prefix = int(digits[: len(str(low))])
        if low <= prefix <= high and len(digits) in lengths:
            return True
    return False


def _card(digits: str) -> bool | None:
    """None: not a card number; else whether it is a real one (not a published test number)."""
    if not (luhn.is_valid(digits) and _card_network(digits)):
        return None
    return digits not in _TEST_CARDS


def _ssn(digits: str) -> bool | None:
    """None: not a valid SSN; else whether it is a real one (not the 123-45-6789 example)."""
    if not stdnum_ssn.is_valid(digits):
        return None
    return digits not in _PLACEHOLDER_SSNS


def _phone_personal(number: phonenumbers.PhoneNumber) -> bool:
    national = phonenumbers.national_significant_number(number)
    if number.country_code == 1 and _NANP_FICTIONAL_LINE.fullmatch(national):
        return False
    if number.country_code == 44 and _UK_DRAMA.fullmatch(national):
        return False
    return phonenumbers.number_type(number) not in _SERVICE_NUMBER_TYPES


@lru_cache(maxsize=4096)
def _phones(window: str, regions: tuple[str, ...]) -> tuple[tuple[int, int, str, bool], ...]:
    """(start, end, E.164, personal) of the valid phone numbers libphonenumber finds in a short
    ``window`` (one candidate run and the character on each side)."""
    found: dict[tuple[int, int], tuple[int, int, str, bool]] = {}
    international = window.lstrip("( ").startswith("+")
    for region in regions[:1] if international else regions:
        for match in PhoneNumberMatcher(window, region, leniency=Leniency.STRICT_GROUPING):
            e164 = phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
            if e164 in _NOT_PHONES:
                continue
            start, end, raw = match.start, match.end, match.raw_string
            # "(4155552671)": the matcher may take an unbalanced parenthesis of the text along.
            if raw.startswith("(") and raw.count("(") > raw.count(")"):
                start += 1
            if raw.endswith(")") and raw.count(")") > raw.count("("):
                end -= 1
            found.setdefault((start, end), (start, end, e164, _phone_personal(match.number)))
    return tuple(found.values())


@lru_cache(maxsize=4096)
def _email_kind(local: str, domain: str) -> bool | None:
    """None: not an address (unknown top-level domain); else whether it is personal."""
    domain = domain.lower()
    tld = domain.rsplit(".", 1)[-1]
    if tld in _RESERVED_TLDS or any(
        domain == d or domain.endswith("." + d) for d in _RESERVED_DOMAINS
    ):
        return False
    if tld not in _public_tlds():
        return None
    if local.startswith(".") or local.endswith(".") or ".." in local or not _ALNUM.search(local):
        return None  # not an RFC 5322 dot-atom: a regex (".+@…") or punctuation
    name = local.lower().split("+", 1)[0]
    template = name.startswith("your") or any(
        label.startswith("your") for label in domain.split(".")[:-1]
    )
    return not (template or name in _ROLE_MAILBOXES or name in _PLACEHOLDER_NAMES)


@cache
def _iban_length(country: str) -> int | None:
    """The length of ``country``'s IBANs, from python-stdnum's IBAN registry."""
    info = numdb.get("iban").info(country)[0][1]
    if "bban" not in info:
        return None
    return 4 + sum(int(n) for n in re.findall(r"(\d+)!", str(info["bban"])))


def _iban(candidate: str) -> str | None:
    """The IBAN at the start of ``candidate`` (printed groups may run on into a next word)."""
    length = _iban_length(candidate[:2])
    if length is None:
        return None
    value = candidate if " " not in candidate else None
    if value is None:  # the printed form: the IBAN ends with a group, the last one shorter
        end = length + (length - 1) // 4  # its characters plus the spaces between groups
        if len(candidate) < end or candidate[end : end + 1] not in ("", " "):
            return None
        value = candidate[:end]
    compact = value.replace(" ", "")
    if len(compact) != length or not mod_97_10.is_valid(compact[4:] + compact[:4]):
        return None
    return value if stdnum_iban.is_valid(compact) else None


class _Spans:
    """Sorted, non-overlapping [start, end) spans, for O(log n) overlap tests. Spans are added
    in increasing order within a phase (one pattern's matches) and merged by ``commit``."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.pending: list[tuple[int, int]] = []

    def overlaps(self, start: int, end: int) -> bool:
        if self.pending and self.pending[-1][1] > start:
            return True
        i = bisect_right(self.starts, start) - 1
        if i >= 0 and self.ends[i] > start:
            return True
        return i + 1 < len(self.starts) and self.starts[i + 1] < end

    def add(self, start: int, end: int) -> None:
        self.pending.append((start, end))

    def commit(self) -> None:
        if self.pending:
            spans = sorted([*zip(self.starts, self.ends, strict=True), *self.pending])
            self.starts = [s for s, _ in spans]
            self.ends = [e for _, e in spans]
            self.pending = []


def _scan(text: str, regions: tuple[str, ...]) -> tuple[list[PIIMatch], list[tuple[int, int, str]]]:
    """Every match in ``text`` (sorted by position), and the candidates of each kind beyond its
    ``MAX_CHECKS`` look-ups, which are left unchecked (start, end, kind)."""
    matches: list[PIIMatch] = []
    unchecked: list[tuple[int, int, str]] = []
    taken = _Spans()  # what a match already claimed
    urls = _Spans()  # numbers in a URL are paths and ids
    for m in _URL.finditer(text) if "://" in text else ():
        urls.add(m.start(), m.end())
    urls.commit()

    def claim(kind: str, start: int, end: int, key: str, personal: bool) -> None:
        matches.append(PIIMatch(kind, text[start:end], start, end, key, personal))
        taken.add(start, end)

    def candidates(kind: str, pattern: re.Pattern[str]) -> Iterator[re.Match[str]]:
        """Matches of ``pattern`` not in a URL or an earlier match, up to the budget."""
        checks = 0
        for m in pattern.finditer(text):
            if urls.overlaps(m.start(), m.end()) or taken.overlaps(m.start(), m.end()):
                continue
            if checks >= MAX_CHECKS:
                unchecked.append((m.start(), m.end(), kind))
                continue
            checks += 1
            yield m
        taken.commit()

    if "@" in text:
        for m in candidates("email", _EMAIL):
            personal = _email_kind(m.group(1), m.group(2))
            if personal is not None:
                claim("email", m.start(), m.end(), m.group(0).lower(), personal)
    for m in candidates("iban", _IBAN):
        value = _iban(m.group(0))
        if value is not None:
            claim("iban", m.start(), m.start() + len(value), value.replace(" ", ""), True)
    for m in candidates("card", _CARD):
        digits = m.group(0).replace(" ", "").replace("-", "")
        card = _card(digits)
        if card is not None:
            claim("card", m.start(), m.end(), digits, card)
    for m in candidates("ssn", _SSN):
        digits = m.group(0).replace("-", "")
        ssn = _ssn(digits)
        if ssn is not None:
            claim("ssn", m.start(), m.end(), digits, ssn)
    for m in candidates("phone", _NUMBER_RUN):
        offset = max(m.start() - 1, 0)
        for p_start, p_end, e164, personal in _phones(text[offset : m.end() + 1], regions):
            start, end = offset + p_start, offset + p_end
            if not taken.overlaps(start, end):
                claim("phone", start, end, e164, personal)
    matches.sort(key=lambda match: match.start)
    return matches, unchecked


def detect_pii(text: str, regions: tuple[str, ...] = DEFAULT_REGIONS) -> list[PIIMatch]:
    """Every email, phone, card, IBAN and SSN in ``text``, placeholders included, in order."""
    return _scan(text, regions)[0]


def find_pii(text: str, regions: tuple[str, ...] = DEFAULT_REGIONS) -> list[tuple[str, str]]:
    """(kind, value) of the personal data in ``text``: placeholders, role mailboxes and service
    numbers left out."""
    return [(m.kind, m.value) for m in detect_pii(text, regions) if m.personal]


def redact_pii(text: str, regions: tuple[str, ...] = DEFAULT_REGIONS) -> str:
    """``text`` with every detected value (placeholders too: redaction errs on the safe side)
    replaced by ``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IBAN]`` or ``[SSN]``; nothing else
    changes."""
    matches, unchecked = _scan(text, regions)
    spans = [(m.start, m.end, PLACEHOLDERS[m.kind]) for m in matches]
    spans += [(start, end, PLACEHOLDERS[kind]) for start, end, kind in unchecked]
    spans.sort()
    parts: list[str] = []
    position = 0
    for start, end, placeholder in spans:
        if start < position:
            continue
        parts.append(text[position:start])
        parts.append(placeholder)
        position = end
    parts.append(text[position:])
    return "".join(parts)
