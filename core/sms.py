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
