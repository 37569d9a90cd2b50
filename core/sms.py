"""core: SMS arithmetic — which encoding a text needs and how many segments it bills as."""

from __future__ import annotations

from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
"""The GSM 03.38 default alphabet: one septet each."""
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
"""Reached through an escape: two septets each, and a segment never splits the pair."""


@dataclass(frozen=True)
class SmsSegments:
    encoding: str
    """`GSM-7`, or `UCS-2` as soon as one character is outside the GSM alphabet."""
    segments: int


def count_segments(body: str) -> SmsSegments:
    """How many SMS segments carriers bill for `body`.

    One GSM-7 message holds 160 septets, a concatenated one 153 per part (the rest is the
    user data header); UCS-2 holds 70 UTF-16 units, 67 per part. A part never ends in the
    middle of an escape pair or a surrogate pair, so those are counted unit by unit.
    """
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in body):
        units = [2 if c in GSM7_EXTENSION else 1 for c in body]
        return SmsSegments("GSM-7", _parts(units, single=160, multi=153))
    units = [2 if ord(c) > 0xFFFF else 1 for c in body]
    return SmsSegments("UCS-2", _parts(units, single=70, multi=67))


def _parts(units: list[int], *, single: int, multi: int) -> int:
    if sum(units) <= single:
        return 1 if units else 0
    parts, used = 1, 0
    for size in units:
        if used + size > multi:
            parts, used = parts + 1, 0
        used += size
    return parts


_PHONE_PUNCTUATION = str.maketrans("", "", " -.()/\u00a0\u2009\u2010\u2011\u2012\u2013")
E164_DIGITS = range(8, 16)
"""E.164: a country code and subscriber number, at most 15 digits (8 is the shortest in
use)."""


def e164(value: str) -> str | None:
    """`value` as E.164 (`+447700900123`) when it is written with its country code —
    `+44 7700 900123`, `(+44) 7700-900123`, `0044 7700 900123` — else None.

    Spaces, dashes, dots, slashes and brackets are how people write numbers, not part of
    them; an international `00` prefix is `+`. A number without its country code cannot
    be made E.164 without guessing the country, so it is left as written.
    """
    compact = value.strip().translate(_PHONE_PUNCTUATION)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    digits = compact[1:]
    if compact.startswith("+") and digits.isascii() and digits.isdigit():
        if len(digits) in E164_DIGITS and not digits.startswith("0"):
            return compact
    return None


def normalise_phone(value: object) -> object:
    """A `phone` trait as stored: E.164 when it can be made so, otherwise untouched (so SMS
    STOP from `+447700900123` finds a user whose phone was written `+44 7700 900123`)."""
    if isinstance(value, str):
        return e164(value) or value
    return value
