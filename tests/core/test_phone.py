"""Phone numbers as E.164: how SMS STOP finds the user a number belongs to."""

from __future__ import annotations

import pytest

from core.sms import e164, normalise_phone


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("+447700900123", "+447700900123"),
        ("+44 7700 900123", "+447700900123"),
        ("(+44) 7700-900123", "+447700900123"),
        ("0044 7700 900123", "+447700900123"),
        ("+1 (415) 555-0100", "+14155550100"),
        ("+1.415.555.0100", "+14155550100"),
        ("+49\u00a030\u00a0901820", "+4930901820"),
    ],
)
def test_international_numbers_become_e164(written: str, expected: str) -> None:
    assert e164(written) == expected


@pytest.mark.parametrize(
    "written",
    [
        "07700 900123",  # no country code: the country would be a guess
        "+0123456789",  # country codes never start with 0
        "+1234567",  # too short
        "+1234567890123456",  # over 15 digits
        "+\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",  # not ASCII digits
        "+44 7700 ext 12",
        "",
    ],
)
def test_what_is_not_e164_is_left_as_written(written: str) -> None:
    assert e164(written) is None
    assert normalise_phone(written) == written


def test_only_strings_are_normalised() -> None:
    assert normalise_phone(447700900123) == 447700900123
    assert normalise_phone(None) is None
