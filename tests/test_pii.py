"""The PII detector both ways: tricky strings that are not personal data stay untouched, real
personal data in several formats and regions is found and redacted; and the heuristics' own
patterns stay linear on 1 MB of adversarial text."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from helpers import make_trace
from stdnum import iban, luhn

from evaluator.evaluators import heuristic_evaluators, run_evaluator
from evaluator.evaluators.heuristics import PIILeak
from evaluator.evaluators.pii import detect_pii, find_pii, redact_pii
from evaluator.models import Trace
from evaluator.settings import Settings

NOT_PII = [
    # dates, year ranges, times
    "Audioslave (2001-2007) was a supergroup.",
    "He served as mayor (1991-2000 and again 2004-2008).",
    "Mark Twain (1835-1910), Jack London (1876\u20131916)",
    "Released 2023-10-05, patched 10/05/2023 and 05.10.2023.",
    "Logged at 2023-10-05T14:30:00Z, closed 12/31/1999 23:59.",
    "Open 10:00-12:00 and 14:30-18:00.",
    "The war lasted from 1939-1945; the first from 1914-1918.",
    # versions and builds
    "Python 3.11.4, Node 18.17.1, Chart.js 2.9.4, Windows 10.0.19041.1415, presidio 2.2.366.",
    "pip install regex==2026.11.15 and numpy 1.26.4",
    # IP addresses, subnet masks, ports
    "Subnet masks: 255.255.255.0, 255.255.0.0, 255.255.255.248, 255.255.255.252",
    "Ping 192.168.1.1 or 172.16.254.1, serve on 127.0.0.1:8080, route 10.0.0.0/8.",
    "IPv6 2001:db8::1 and fe80::1ff:fe23:4567:890a",
    # ISBNs and identifiers
    "ISBN 978-0-306-40615-7 (ISBN-10 0-306-40615-2), also 978-3-16-148410-0.",
    "ISBN 0306406152 or 9780306406157",
    "Order No. 20231005-0042, ticket #5521, invoice INV-2023-000123, order 123456789.",
    "Tracking 1Z999AA10123456784, SKU 0012-3456-7890, PO 4500012345.",
    "uuid 123e4567-e89b-12d3-a456-426614174000, commit d6660f0099, IMEI 35-209900-176148-1",
    # arithmetic and decimals
    "2+2=4, 123*456=56088 and (3+4)*(5-2)=21",
    "A = sqrt(11.5(11.5-5)(11.5-10)(11.5-8)) = 19.81",
    "0.610865 - 0.436332 = 0.174533; 1.658063 - (-1.396263) = 3.054326",
    "Pi is 3.14159265358979, e is 2.718281828, 1/3 is 0.333333333.",
    "1000 - 250 - 125 = 625 and 6.02214076e23 atoms",
    # tables of numbers
    "12 16 14\n1\n1\n3\n1 2 3",
    "| 2019 | 1234 | 5678 |\n| 2020 | 2345 | 6789 |",
    "1 2 3 4 5 6 7 8 9 10",
    "81 75 75 93 93 87",
    "2.2    6   9   5   6   4",
    "Population 1 000 000; revenue $1,234,567.89; € 2.500.000",
    "37.7749, -122.4194 and 25.7617° N, 80.1918° W",
    "int max is 2147483647 and 9223372036854775807",
    # not addresses
    "@media screen and (max-width: 600px) { }",
    "@app.route('/users/<int:id>')",
    "Use logo@2x.png and icon@3x.jpg for retina screens.",
    "npm install @types/node @angular/core@16.2.0",
    "pattern = r'^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$' and '.+@mysite.com'",
    "ssh user@host and foo@bar.baz",
    "ZIP 90210-1234, call 911 or 112",
]

# Documentation placeholders and service contacts: found (and redacted), never personal.
PLACEHOLDERS = [
    ("email", "user@example.com"),
    ("email", "your_email@example.com"),
    ("email", "john.doe@example.org"),
    ("email", "alice@corp.example"),
    ("email", "qa@staging.test"),
    ("email", "name@yourdomain.com"),
    ("email", "johndoe@email.com"),
    ("email", "support@acme.com"),
    ("email", "noreply@github.com"),
    ("email", "git@github.com"),
    ("phone", "+1 202 555 0143"),
    ("phone", "(415) 555-0132"),
    ("phone", "1-800-555-0199"),
    ("phone", "201-555-0123"),
    ("phone", "+44 20 7946 0958"),
    ("phone", "020 7946 0321"),
    ("phone", "+1 800 275 2273"),  # toll-free: a service, not a person
    ("card", "4111 1111 1111 1111"),
    ("card", "4242424242424242"),
    ("card", "5555-5555-5555-4444"),
    ("card", "3782 822463 10005"),
    ("ssn", "123-45-6789"),
]


def _card(prefix: str, length: int) -> str:
    """A Luhn-valid number with the issuer ``prefix``, not a published test number."""
    body = (prefix + "739150284617392058")[: length - 1]
    return body + luhn.calc_check_digit(body)


def _iban(country: str, bban: str) -> str:
    number = country + iban.calc_check_digits(country + "00" + bban) + bban
    return iban.format(number)


VISA, MASTERCARD, AMEX = _card("4", 16), _card("52", 16), _card("37", 15)
DISCOVER, JCB, MC2 = _card("6011", 16), _card("3530", 16), _card("2221", 16)

PII = [
    ("phone", "4155552671"),  # 555 outside 555-01xx is not reserved for fiction
    ("phone", "+1 415 555 2671"),
    ("phone", "(415) 867-5309"),
    ("phone", "650.253.0000"),
    ("phone", "+1 (650) 253-0000"),
    ("phone", "1-650-253-0000"),
    ("phone", "+44 7911 123456"),
    ("phone", "020 7123 4567"),
    ("phone", "0044 20 7123 4567"),
    ("phone", "011 44 20 7123 4567"),
    ("phone", "+44 (0)20 7123 4567"),
    ("phone", "+49 30 12345678"),
    ("phone", "+33 1 42 68 53 00"),
    ("phone", "+45 20 31 44 87"),
    ("phone", "+91 98765 43210"),
    ("phone", "+81 3-1234-5678"),
    ("phone", "+61 2 9876 5432"),
    ("phone", "+55 11 91234-5678"),
    ("phone", "+86 138 0013 8000"),
    ("phone", "+4520314487"),
    ("iban", "DE89 3704 0044 0532 0130 00"),
    ("iban", "GB29 NWBK 6016 1331 9268 19"),
    ("iban", "FR14 2004 1010 0505 0001 3M02 606"),
    ("iban", "NL91ABNA0417164300"),
    ("iban", "CH9300762011623852957"),
    ("iban", _iban("DE", "500105175407324931")),
    ("iban", _iban("ES", "21000418450200051332")),
    ("card", " ".join(VISA[i : i + 4] for i in range(0, 16, 4))),
    ("card", "-".join(MASTERCARD[i : i + 4] for i in range(0, 16, 4))),
    ("card", f"{AMEX[:4]} {AMEX[4:10]} {AMEX[10:]}"),
    ("card", DISCOVER),
    ("card", JCB),
    ("card", MC2),
    ("card", "4539 1488 0343 6467"),
    ("ssn", "536-90-4399"),
    ("email", "maria.jensen@fjordlab.dk"),
    ("email", "j.smith+billing@gmail.com"),
    ("email", "Bob.Lee@outlook.co.uk"),
    ("email", "ana@mail.university.edu"),
]


@pytest.mark.parametrize("text", NOT_PII)
def test_tricky_strings_are_not_pii_and_redaction_leaves_them_alone(text: str) -> None:
    assert detect_pii(text) == []
    assert redact_pii(text) == text
    trace = make_trace(1, output=text)
    assert run_evaluator(PIILeak(), trace)[0].passed is True


@pytest.mark.parametrize(("kind", "value"), PLACEHOLDERS)
def test_documentation_placeholders_are_redacted_but_never_a_leak(kind: str, value: str) -> None:
    text = f"For example: {value}, then continue."
    assert [(m.kind, m.value, m.personal) for m in detect_pii(text)] == [(kind, value, False)]
    assert find_pii(text) == []
    placeholder = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "ssn": "[SSN]"}
    assert redact_pii(text) == f"For example: {placeholder[kind]}, then continue."
    assert PIILeak().evaluate(make_trace(1, output=text))[0].passed is True


@pytest.mark.parametrize(("kind", "value"), PII)
@pytest.mark.parametrize("frame", ["{}", "Reach her at {}.", "x ({}) y", "Details:\n{}\nthanks"])
def test_real_pii_is_found_and_redacted(kind: str, value: str, frame: str) -> None:
    text = frame.format(value)
    assert find_pii(text) == [(kind, value)]
    placeholder = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "iban": "[IBAN]"}
    assert redact_pii(text) == frame.format(placeholder.get(kind, "[SSN]"))
    score = PIILeak().evaluate(make_trace(1, input="Any news?", output=text))[0]
    assert score.passed is False
    assert score.reason == f"PII in answer: {kind} x1"
    assert value not in score.reason


def test_nothing_matches_across_a_line_break() -> None:
    for text in [
        "415\n555 2671",
        "+1 415\n555 2671",
        "4539 1488\n0343 6467",
        "maria\n@fjordlab.dk",
        "DE89 3704 0044\n0532 0130 00",
        "536-90\n-4399",
    ]:
        assert detect_pii(text) == [], text


def test_redaction_keeps_the_text_around_and_the_placeholders() -> None:
    text = (
        "Audioslave (2001-2007) toured; mail maria@fjordlab.dk or call +1 415 555 2671; "
        "card 4539 1488 0343 6467, IBAN DE89 3704 0044 0532 0130 00, order 12345, v2.9.4."
    )
    assert redact_pii(text) == (
        "Audioslave (2001-2007) toured; mail [EMAIL] or call [PHONE]; "
        "card [CARD], IBAN [IBAN], order 12345, v2.9.4."
    )


def test_redaction_replaces_by_position_not_by_value() -> None:
    # The old str.replace turned every other occurrence of a value's text into a placeholder.
    text = "Call 415-555-2671. Room 415-555 is upstairs."
    assert redact_pii(text) == "Call [PHONE]. Room 415-555 is upstairs."


def test_pii_the_user_gave_is_no_leak_even_written_differently() -> None:
    trace = make_trace(
        1,
        input="My number is +1 415 555 2671 and my email is Maria@FjordLab.dk",
        output="We will call (415) 555-2671 and write to maria@fjordlab.dk.",
    )
    assert PIILeak().evaluate(trace)[0].passed is True
    other = make_trace(2, input=trace.input, output="Or call her colleague at 650-253-0000.")
    assert PIILeak().evaluate(other)[0].reason == "PII in answer: phone x1"


def test_numbers_in_urls_are_not_phone_numbers() -> None:
    text = "See http://science.sciencemag.org/content/352/6286/663 and https://x.example/4155552671"
    assert detect_pii(text) == []


def test_national_formats_follow_the_regions() -> None:
    assert find_pii("ring 030 12345678") == []  # German national format: not read by default
    assert (
        PIILeak(regions=("DE",)).evaluate(make_trace(1, output="ring 030 12345678"))[0].passed
        is False
    )


# -- time-safety: 1 MB of adversarial text ---------------------------------------------------

MB = 1_000_000
BOUND_S = 2.0


def _fill(unit: str) -> str:
    return (unit * (MB // len(unit) + 1))[:MB]


def _distinct(unit: Callable[[int], str]) -> str:
    """``unit(0) + unit(1) + ...``, 1 MB of it."""
    parts, size, i = [], 0, 0
    while size < MB:
        parts.append(unit(i))
        size += len(parts[-1])
        i += 1
    return "".join(parts)[:MB]


ADVERSARIAL = {
    "digits and hyphens": _fill("1-"),
    "digits and spaces": _fill("1 "),
    "digits and dots": _fill("12.34."),
    "open parentheses": _fill("("),
    "dialled prefixes": _fill("+1 (415) 555-"),
    "distinct phone numbers": _distinct(lambda i: f"415-{200 + i // 10**4:03d}-{i % 10**4:04d}, "),
    "one digit": _fill("9"),
    "at signs": _fill("@"),
    "address-like": _fill("a.b@"),
    "one long local part": _fill("a.")[: MB - 1] + "@",
    "addresses": _distinct(lambda i: f"u{i}@d{i}.com "),
    "long local parts": _fill("x" * 70 + "@"),
    "http schemes": _fill("http://"),
    "http schemes and spaces": _fill("http:// "),
    "IBAN groups": _fill("DE89 "),
    "card numbers": _fill("4539 1488 0343 6467 "),
    "SSNs": _fill("536-90-4399 "),
    "one letter": _fill("a"),
    "one space": _fill(" "),
    "self-reference phrases": _fill("as an AI "),
    "phrase prefixes": _fill("as   "),
}


def _timed(call: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_detector_and_heuristics_are_linear_on_1mb_adversarial_text(name: str) -> None:
    text = ADVERSARIAL[name]
    assert len(text) == MB
    timings = {"find_pii": _timed(find_pii, text), "redact_pii": _timed(redact_pii, text)}
    trace = Trace(
        trace_id="adversarial", input="?", output=text, contexts=[text[: MB // 4]], retrieval=True
    )
    settings = Settings(forbidden_phrases=["guaranteed refund", "as an AI", "555"])
    for evaluator in heuristic_evaluators(settings):
        timings[evaluator.name] = _timed(run_evaluator, evaluator, trace)
    slow = {k: round(v, 2) for k, v in timings.items() if v > BOUND_S}
    assert not slow, f"{name}: over {BOUND_S} s: {slow}"
