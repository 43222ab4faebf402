"""PII redaction: replace e-mails, phones, cards, SSNs, IBANs, IPs and secrets with placeholders.

Regex candidates, then checksums where the format has one (Luhn for cards, mod-97 for IBANs,
`ipaddress` for IPs), so ordinary numbers, dates and version strings survive. Patterns run in a
fixed order (secrets first, phones last) and each replaced span becomes a placeholder without
digits, so later patterns cannot re-match it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Redaction:
    """A redacted text and how many entities of each kind (EMAIL, PHONE, ...) were replaced."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """Whether a compact IBAN (no spaces) has a plausible length and passes the ISO 13616 mod-97 check."""
    s = candidate.upper()
    if not (15 <= len(s) <= 34) or not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]+", s):
        return False
    rearranged = s[4:] + s[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


# --- secrets ---------------------------------------------------------------------------------
_API_KEY_PATTERNS = [
    re.compile(r"\bsk-(?:proj-|ant-(?:api\d\d-)?|live_|test_)?[A-Za-z0-9_\-]{20,}"),
    re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{40,}\b"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
]
# Only the token after "Bearer" / "key=" is replaced: the label stays readable.
_BEARER = re.compile(r"(\bBearer\s+)([A-Za-z0-9._~+/\-]{16,}=*)")
_KEY_VALUE = re.compile(
    r"(?i)(\b[\w\-]*(?:api[_\-]?key|apikey|secret|token|access[_\-]?key|passw(?:or)?d|pwd|auth|credential|private[_\-]?key)[\w\-]*"
    r"\"?\s*[:=]\s*[\"']?)([A-Za-z0-9_\-+/.=]{16,})"
)


def _looks_secret(value: str) -> bool:
    # Long hex strings and mixed-class base64-ish strings are secrets; a long plain word is not.
    if re.fullmatch(r"[0-9a-fA-F]{16,}", value):
        return True
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d"))
    return classes >= 2 and bool(re.search(r"\d", value))


# --- other entities --------------------------------------------------------------------------
_EMAIL = re.compile(
    r"(?<![\w.+\-])[A-Za-z0-9](?:[A-Za-z0-9._%+\-]{0,62}[A-Za-z0-9_%+\-])?@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b"
)
_IBAN = re.compile(r"(?i)\b[A-Z]{2}\d{2}(?:[ \-]?[A-Z0-9]{4}){2,7}(?:[ \-]?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d\-])")
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?:%[\w.]+)?(?![\w:])")
_SSN = re.compile(r"(?<![\d\-])(?!000|666|9\d\d)\d{3}([\- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d\-])")
_SSN_LABELLED = re.compile(r"(?i)(\b(?:ssn|social security(?: number| no\.?)?)\W{0,3}(?:is\s+|:\s*|#\s*)?)((?!000|666|9\d\d)\d{9})\b")
_PHONE_NANP = re.compile(
    r"(?<![\w+])(?<!\d[ .\-])(?:(?:\+|00)?1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}(?:\s*(?:x|ext\.?|extension)\s*\d{1,6})?(?!\d)"
)
_PHONE_INTL = re.compile(r"(?<![\w+])(?<!\d[ .\-])(?:\+|00)[1-9]\d{0,3}(?:[\s.\-]?\(?\d{1,5}\)?){1,6}(?:\s*(?:x|ext\.?)\s*\d{1,6})?(?!\d)")
_PHONE_NATIONAL = re.compile(r"(?<![\w+.\-/:])(?<!\d[ .\-])\(?0\d{1,4}\)?(?:[\s.\-]\d{2,4}){2,4}(?![\w.\-/:]|\.\d)")
# Many national formats (e.g. "699 956 915", "60-56-85-91", "(37) 788-063") are 3+ short digit
# groups; dates (the other common grouped numbers) are excluded in `_phone_grouped`.
_PHONE_GROUPED = re.compile(r"(?<![\w.\-/:,+])(?<!\d[ .\-])\(?\d{2,4}\)?(?:[ .\-]\d{2,4}){2,4}(?![\w\-/:]|[.,]\d|[ .\-]\d)")
_SSN_SHAPED = re.compile(r"\d{3}-\d{2}-\d{4}")
_DATE_LIKE = re.compile(r"\d{1,2}([./\- ])\d{1,2}\1\d{2,4}|\d{4}([./\- ])\d{1,2}\2\d{1,2}")
_PHONE_LABELLED = re.compile(r"(?i)(\b(?:phone|tel|telephone|mobile|cell|call(?: me)?(?: at| on)?|fax)\b\W{0,3}(?:is\s+|:\s*|#\s*)?)(\d{10,12})\b")


def _count_digits(s: str) -> int:
    return sum(ch.isdigit() for ch in s)


Replacer = Callable[[re.Match[str]], str | None]


def _sub(pattern: re.Pattern[str], text: str, label: str, counts: dict[str, int], check: Replacer) -> str:
    def repl(m: re.Match[str]) -> str:
        out = check(m)
        if out is None:
            return m.group(0)
        counts[label] = counts.get(label, 0) + 1
        return out

    return pattern.sub(repl, text)


def _card(m: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", m.group(0))
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1 or not luhn_valid(digits):
        return None
    return "[CARD]"


def _iban(m: re.Match[str]) -> str | None:
    # The grouped pattern can swallow a following word; drop trailing groups until the checksum holds.
    raw = m.group(0)
    groups = list(re.finditer(r"[A-Za-z0-9]+", raw))
    for end in range(len(groups), 0, -1):
        stop = groups[end - 1].end()
        if iban_valid(re.sub(r"[ \-]", "", raw[:stop])):
            return "[IBAN]" + raw[stop:]
    return None


def _ipv6(m: re.Match[str]) -> str | None:
    value = m.group(0).split("%", 1)[0]
    if sum(c.isalnum() for c in value) < 3:
        return None
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return None
    return "[IP]"


def _phone_intl(m: re.Match[str]) -> str | None:
    return "[PHONE]" if 8 <= _count_digits(m.group(0).split("x")[0].split("ext")[0]) <= 15 else None


def _phone_national(m: re.Match[str]) -> str | None:
    value = m.group(0)
    return "[PHONE]" if 9 <= _count_digits(value) <= 12 and not _SSN_SHAPED.fullmatch(value) else None


def _phone_grouped(m: re.Match[str]) -> str | None:
    value = m.group(0)
    if _DATE_LIKE.fullmatch(value) or _SSN_SHAPED.fullmatch(value) or not 8 <= _count_digits(value) <= 12:
        return None
    return "[PHONE]"


def _replace_with(placeholder: str) -> Replacer:
    return lambda m: placeholder


def _keep_label(placeholder: str) -> Replacer:
    return lambda m: m.group(1) + placeholder


# Patterns run in this order, in groups behind a prerequisite that every match of each pattern
# in the group contains (a literal, or a plain search with the pattern's own flags), checked
# once on the text as it stands before the group. Every pattern costs a scan of every text (the
# key=value one several), and most texts hold no secret, e-mail or digit.
_Step = tuple[re.Pattern[str], str, Replacer]
_SECRET_HINT = re.compile(r"sk-|AKIA|ASIA|AGPA|AIDA|AROA|gh[pousr]_|github_pat_|xox|AIza|\.eyJ|Bearer").search
_KEY_WORD = re.compile(r"(?i)key|secret|token|passw|pwd|auth|credential").search  # in every _KEY_VALUE keyword
_DIGIT = re.compile(r"\d").search
_GROUPS: list[tuple[Callable[[str], object], tuple[_Step, ...]]] = [
    (
        _SECRET_HINT,
        (*((p, "API_KEY", _replace_with("[API_KEY]")) for p in _API_KEY_PATTERNS), (_BEARER, "API_KEY", _keep_label("[API_KEY]"))),
    ),
    (
        lambda text: (":" in text or "=" in text) and _KEY_WORD(text),
        ((_KEY_VALUE, "API_KEY", lambda m: m.group(1) + "[API_KEY]" if _looks_secret(m.group(2)) else None),),
    ),
    (lambda text: "@" in text, ((_EMAIL, "EMAIL", _replace_with("[EMAIL]")),)),
    (_DIGIT, ((_IBAN, "IBAN", _iban), (_CARD, "CARD", _card), (_IPV4, "IP", _replace_with("[IP]")))),
    (lambda text: ":" in text, ((_IPV6, "IP", _ipv6),)),
    (
        _DIGIT,
        (
            (_SSN, "SSN", _replace_with("[SSN]")),
            (_SSN_LABELLED, "SSN", _keep_label("[SSN]")),
            (_PHONE_NANP, "PHONE", _replace_with("[PHONE]")),
            (_PHONE_INTL, "PHONE", _phone_intl),
            (_PHONE_NATIONAL, "PHONE", _phone_national),
            (_PHONE_GROUPED, "PHONE", _phone_grouped),
            (_PHONE_LABELLED, "PHONE", _keep_label("[PHONE]")),
        ),
    ),
]


def redact(text: str) -> Redaction:
    """Replace personal data and secrets in `text` with `[EMAIL]`, `[PHONE]`, `[CARD]`, `[SSN]`,
    `[IBAN]`, `[IP]` and `[API_KEY]`, counting each kind."""
    counts: dict[str, int] = {}
    for needs, steps in _GROUPS:
        if needs(text):
            for pattern, kind, replacer in steps:
                text = _sub(pattern, text, kind, counts, replacer)
    return Redaction(text=text, counts=counts)


class PiiDetector:
    """Registry adapter for `redact`: finds and replaces PII; takes (and ignores) an embedder."""

    name = "pii"

    def __init__(self, embedder: object | None = None) -> None:
        self.embedder = embedder

    def redact(self, text: str) -> Redaction:
        """See `redact`."""
        return redact(text)

    def score(self, texts: list[str]) -> list[float]:
        """1.0 where a text holds PII that `redact` would replace, else 0.0."""
        return [1.0 if redact(t).total else 0.0 for t in texts]
