"""PII redaction on handwritten cases, including checksum negatives and ordinary numbers."""

from __future__ import annotations

import pytest

from pipeline.detectors import DETECTORS, PiiDetector, redact
from pipeline.detectors.pii import iban_valid, luhn_valid


@pytest.mark.parametrize(
    ("text", "placeholder", "secret"),
    [
        ("write to maria.lopez+news@mail.example.org today", "[EMAIL]", "maria.lopez+news@mail.example.org"),
        ("my card is 4111-1111-1111-1111, expiry soon", "[CARD]", "4111-1111-1111-1111"),
        ("amex 3782 822463 10005 please", "[CARD]", "3782 822463 10005"),
        ("SSN 078-05-1120 on file", "[SSN]", "078-05-1120"),
        ("social security number: 219099999", "[SSN]", "219099999"),
        ("pay to DE89 3704 0044 0532 0130 00 by Friday", "[IBAN]", "DE89 3704 0044 0532 0130 00"),
        ("compact iban GB82WEST12345698765432 ok", "[IBAN]", "GB82WEST12345698765432"),
        ("server at 10.20.30.40 is down", "[IP]", "10.20.30.40"),
        ("v6 address 2001:db8:85a3::8a2e:370:7334 answered", "[IP]", "2001:db8:85a3::8a2e:370:7334"),
        ("ring me on (415) 555-2671 after six", "[PHONE]", "(415) 555-2671"),
        ("office +44 20 7946 0958 ext. 12", "[PHONE]", "+44 20 7946 0958"),
        ("openai key sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12 leaked", "[API_KEY]", "Ab12Cd34Ef56Gh78Ij90Kl12"),
        ("aws AKIAIOSFODNN7EXAMPLE in config", "[API_KEY]", "AKIAIOSFODNN7EXAMPLE"),
        ("token ghp_0123456789abcdefghijABCDEFGHIJ012345 pushed", "[API_KEY]", "ghp_0123456789abcdefghijABCDEFGHIJ012345"),
        ("slack xoxb-2048-9999-AbCdEfGhIjKl bot", "[API_KEY]", "xoxb-2048-9999-AbCdEfGhIjKl"),
        ("Authorization: Bearer abc.DEF123_ghi-JKL456mno", "[API_KEY]", "abc.DEF123_ghi-JKL456mno"),
        ("config secret_key=4f9a2c8e1b7d3f6a0e5c9b2d8a1f4e7c done", "[API_KEY]", "4f9a2c8e1b7d3f6a0e5c9b2d8a1f4e7c"),
    ],
)
def test_redact_replaces_entity(text, placeholder, secret):
    red = redact(text)
    assert secret not in red.text
    assert placeholder in red.text
    assert red.counts[placeholder.strip("[]")] == 1


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",  # one digit off a valid test number
        "IBAN DE89 3704 0044 0532 0130 01 has a bad checksum",
        "order 1234567890123 shipped",  # 13 digits, not Luhn-valid
        "zeros 0000 0000 0000 0000 are a placeholder, not a card",
        "the meeting is on 2024-03-15 at 12:30:45",
        "dates 03/04/2023 and 15.03.2024 and 12-05-2023",
        "population 8,000,000,000 and revenue $1,234,567.89",
        "pi is 3.14159 and the year was 1969",
        "postcode 90210, room 404, 7 days",
        "SSN-like but invalid: 000-12-3456 and 666-12-3456",
        "python 3.11.4 released",
        "password=short",
        "a sentence with no personal data at all",
    ],
)
def test_redact_leaves_ordinary_text_alone(text):
    red = redact(text)
    assert red.text == text
    assert red.counts == {}


def test_redact_counts_each_kind_and_keeps_surrounding_text():
    red = redact("Mail a@b.io or c@d.io, call 212-555-0199, card 5555 5555 5555 4444.")
    assert red.counts == {"EMAIL": 2, "PHONE": 1, "CARD": 1}
    assert red.text == "Mail [EMAIL] or [EMAIL], call [PHONE], card [CARD]."
    assert red.total == 4


def test_redact_is_idempotent():
    once = redact("ip 192.168.1.20, mail x@y.com, ssn 123-45-6789")
    twice = redact(once.text)
    assert twice.text == once.text
    assert twice.counts == {}


def test_checksums():
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("GB82WEST12345698765433")
    assert not iban_valid("GB82")


def test_pii_is_redaction_before_scoring_not_a_scorer_detector():
    assert "pii" not in DETECTORS.names()
    assert PiiDetector().redact("x@y.com").counts == {"EMAIL": 1}
