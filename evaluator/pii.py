"""Emails, phone numbers and card numbers in free text: found for the PII-leak check, redacted
before text is sent to an external judge."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# A run of digits with the separators people type; classified below as a card or a phone.
_NUMBER_RUN = re.compile(r"(?<![\w+])\+?\(?\d[\d\s().-]{5,22}\d(?![\w])")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    checksum = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        checksum += digit
    return checksum % 10 == 0


def _number_kind(run: str) -> str | None:
    digits = sum(c.isdigit() for c in run)
    if 13 <= digits <= 19 and luhn_valid(run):
        return "card"
    separators = sum(c in " .-()" for c in run.strip())
    looks_dialled = run.startswith(("+", "(")) or separators >= 2
    if 7 <= digits <= 15 and looks_dialled and not _ISO_DATE.match(run):
        return "phone"
    return None


def find_pii(text: str) -> list[tuple[str, str]]:
    """(kind, value) pairs of emails, phone numbers and Luhn-valid card numbers in ``text``."""
    found = [("email", m) for m in _EMAIL.findall(text)]
    for match in _NUMBER_RUN.finditer(text):
        run = match.group(0).strip()
        kind = _number_kind(run)
        if kind:
            found.append((kind, run))
    return found


_PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]"}


def redact_pii(text: str) -> str:
    """``text`` with every email, phone number and card number replaced by a placeholder."""
    for kind, value in sorted(find_pii(text), key=lambda kv: -len(kv[1])):
        text = text.replace(value, _PLACEHOLDERS[kind])
    return text
