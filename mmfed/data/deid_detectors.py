"""The detectors of mmfed.data.deid: per class of identifier, the candidate spans of a text, found with
the patterns and gazetteers of mmfed.data.deid_tables and then trimmed or validated (what each class
covers, and what it must leave alone: mmfed.data.deid). Candidates may overlap; mmfed.data.deid merges them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

from mmfed.data.deid_tables import (
    ADDRESS_RES,
    AGE_FIELD_RE,
    AGE_OLD_RE,
    AGE_PAREN_RE,
    AGE_YO_RE,
    AGE_YRS_RE,
    CITY_POSTCODE_RE,
    DATE_RES,
    DOMAIN_RE,
    EMAIL_RE,
    FIELD_RE,
    FIRST_RE,
    HCONN,
    HOSPITAL_PREFIX_RE,
    HOSPITAL_SUFFIX_RE,
    HOSPITAL_WORDS,
    ID_LABEL_RE,
    ISO_DATE_RE,
    LONG_DIGITS_RE,
    NOT_AGE_AFTER,
    NOT_AGE_BEFORE,
    NOT_NAME,
    NUM_DATE_RE,
    PARTICLE,
    PHONE_INTL_RE,
    PHONE_LABEL_RE,
    PHONE_NATIONAL_RE,
    PHONE_US_RE,
    SSN_RE,
    SURNAME_FIRST_RE,
    TITLE_RE,
    UNIT_AFTER,
    URL_RE,
)

Span = tuple[int, int]  # [start, end) in the original text


# ---------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------


def _is_name_word(token: str) -> bool:
    return token.strip(".,;:'’").lower() not in NOT_NAME


def _trim_name(text: str, start: int, end: int) -> Span | None:
    """Cut a candidate name run at its first non-name word; drop trailing particles and punctuation."""
    kept_end = start
    for tok in re.finditer(r"[^\s,]+", text[start:end]):
        if not _is_name_word(tok.group()):
            break
        if not re.fullmatch(PARTICLE, tok.group()):
            kept_end = start + tok.end()
    while kept_end > start and text[kept_end - 1] in ",;:":
        kept_end -= 1
    return (start, kept_end) if kept_end > start else None


def _spans(
    pattern: re.Pattern[str],
    text: str,
    group: str | int = 0,
    check: Callable[[re.Match[str]], bool] | None = None,
) -> Iterator[Span]:
    for m in pattern.finditer(text):
        if m.group(group) is not None and (check is None or check(m)):
            yield m.span(group)


# ---------------------------------------------------------------------------------------------------------
# NAME
# ---------------------------------------------------------------------------------------------------------


def _field_name(text: str, m: re.Match[str]) -> Span | None:
    """After "Name:" any name; after "Patient:", "Physician:" ... 2+ words before a comma, not "Smoker"."""
    start, end = m.span("name")
    if not re.search(r"(?i)nom|name|cognome|apellido", m["label"]):
        end = start + len(text[start:end].split(",")[0])
        span = _trim_name(text, start, end)
        return span if span and " " in text[span[0] : span[1]] else None
    return _trim_name(text, start, end)


def _names(text: str) -> Iterator[Span]:
    for start, end in _spans(TITLE_RE, text, "name"):
        span = _trim_name(text, start, end)
        if span:
            yield span
    for m in FIELD_RE.finditer(text):
        span = _field_name(text, m)
        if span:
            yield span
    # Gazetteer rules: the first word is known, a surname must remain after trimming.
    for pattern in (FIRST_RE, SURNAME_FIRST_RE):
        for start, end in _spans(pattern, text, "name"):
            span = _trim_name(text, start, end)
            if span and " " in text[span[0] : span[1]].strip():
                yield span


# ---------------------------------------------------------------------------------------------------------
# DATE
# ---------------------------------------------------------------------------------------------------------


def _valid_numeric_date(m: re.Match[str]) -> bool:
    a, b, c = int(m["a"]), int(m["b"]), m["c"]
    if not (1 <= a <= 31 and 1 <= b <= 31 and (a <= 12 or b <= 12)):
        return False
    if len(c) == 4:
        return c.startswith(("19", "20"))
    # "1.5.10", "2-3-20" and "10-12-14 mm" look like ranges: with a 2-digit year and dots/hyphens, want a
    # 2-digit day and month; with any separator, no unit after it.
    if m["sep"] != "/" and (len(m["a"]) < 2 or len(m["b"]) < 2):
        return False
    return not UNIT_AFTER.match(m.string, m.end())


def _dates(text: str) -> Iterator[Span]:
    for pattern in DATE_RES:
        yield from _spans(pattern, text)
    yield from _spans(NUM_DATE_RE, text, check=_valid_numeric_date)
    yield from _spans(ISO_DATE_RE, text)


# ---------------------------------------------------------------------------------------------------------
# AGE
# ---------------------------------------------------------------------------------------------------------


def _yrs_is_age(text: str) -> Callable[[re.Match[str]], bool]:
    """'45 yrs' is an age; 'for 20 yrs' and '5 yrs ago' are durations."""

    def check(m: re.Match[str]) -> bool:
        before = text[max(0, m.start() - 20) : m.start()]
        return not (NOT_AGE_BEFORE.search(before) or NOT_AGE_AFTER.search(text[m.end() : m.end() + 20]))

    return check


def _ages(text: str) -> Iterator[Span]:
    yield from _spans(AGE_OLD_RE, text)
    yield from _spans(AGE_YO_RE, text)
    yield from _spans(AGE_PAREN_RE, text, "v")
    yield from _spans(AGE_FIELD_RE, text, "v")
    yield from _spans(AGE_YRS_RE, text, check=_yrs_is_age(text))


# ---------------------------------------------------------------------------------------------------------
# PHONE
# ---------------------------------------------------------------------------------------------------------


def _trim_phone(text: str, span: Span, lo: int, hi: int) -> Span | None:
    """Drop a trailing 1-digit group ('555-123-4567 5 days'), then check the digit count."""
    start, end = span
    m = re.search(r"[\s.-]\d$", text[start:end])
    if m and end - start > 2:
        end = start + m.start()
    digits = sum(c.isdigit() for c in text[start:end])
    return (start, end) if lo <= digits <= hi else None


def _phones(text: str) -> Iterator[Span]:
    for pattern, group, lo, hi in (
        (PHONE_LABEL_RE, "v", 7, 15),
        (PHONE_INTL_RE, 0, 8, 15),
        (PHONE_US_RE, 0, 10, 10),
        (PHONE_NATIONAL_RE, 0, 9, 12),
    ):
        for span in _spans(pattern, text, group):
            trimmed = _trim_phone(text, span, lo, hi)
            if trimmed:
                yield trimmed


# ---------------------------------------------------------------------------------------------------------
# EMAIL, URL
# ---------------------------------------------------------------------------------------------------------


def _urls(text: str) -> Iterator[Span]:
    for pattern in (URL_RE, DOMAIN_RE):
        for start, end in _spans(pattern, text):
            while end > start and text[end - 1] in ".,;:!?":  # sentence punctuation is not part of the URL
                end -= 1
            yield start, end


# ---------------------------------------------------------------------------------------------------------
# ADDRESS
# ---------------------------------------------------------------------------------------------------------


def _addresses(text: str) -> Iterator[Span]:
    for pattern in ADDRESS_RES:
        for start, end in _spans(pattern, text):
            while end > start and text[end - 1] in ",;:":
                end -= 1
            yield start, end
    yield from _spans(CITY_POSTCODE_RE, text)


# ---------------------------------------------------------------------------------------------------------
# ID
# ---------------------------------------------------------------------------------------------------------


def _ids(text: str) -> Iterator[Span]:
    yield from _spans(ID_LABEL_RE, text, "v", check=lambda m: sum(c.isdigit() for c in m["v"]) >= 3)
    yield from _spans(SSN_RE, text)
    yield from _spans(LONG_DIGITS_RE, text)


# ---------------------------------------------------------------------------------------------------------
# HOSPITAL
# ---------------------------------------------------------------------------------------------------------


def _trim_hospital(text: str, start: int, end: int) -> Span | None:
    """Drop common words at both ends ('Our', 'Emergency Department of', '... Hospital Affiliated')."""
    words = list(re.finditer(r"\S+", text[start:end]))
    lo, hi = 0, len(words)

    def common(w: re.Match[str]) -> bool:
        token = w.group().strip(".,")
        low = token.lower()
        return re.fullmatch(HCONN, token) is not None or (low in NOT_NAME and low not in HOSPITAL_WORDS)

    while lo < hi and common(words[lo]):
        lo += 1
    while hi > lo and common(words[hi - 1]):
        hi -= 1
    if hi - lo < 2:  # a lone "Hospital" / "Clinic" is generic
        return None
    return start + words[lo].start(), start + words[hi - 1].end()


def _hospitals(text: str) -> Iterator[Span]:
    for pattern in (HOSPITAL_SUFFIX_RE, HOSPITAL_PREFIX_RE):
        for start, end in _spans(pattern, text):
            span = _trim_hospital(text, start, end)
            if span:
                yield span


DETECTORS: dict[str, Callable[[str], Iterable[Span]]] = {
    "EMAIL": lambda text: _spans(EMAIL_RE, text),
    "URL": _urls,
    "HOSPITAL": _hospitals,
    "ADDRESS": _addresses,
    "PHONE": _phones,
    "ID": _ids,
    "DATE": _dates,
    "AGE": _ages,
    "NAME": _names,
}
