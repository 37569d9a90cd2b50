"""Signed unsubscribe tokens: round trip, tampering, expiry, another secret."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from core.links import LinkError, make_token, read_token, unsubscribe_url

SECRET = "test-link-secret"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def token(**overrides: object) -> str:
    fields: dict[str, object] = {
        "secret": SECRET,
        "user_id": "ada@example.com/ü 42",
        "channel": "email",
        "group": "marketing",
        "expires_at": NOW + timedelta(days=60),
    }
    return make_token(**(fields | overrides))  # type: ignore[arg-type]


def test_round_trip() -> None:
    link = read_token(secret=SECRET, token=token(), now=NOW)
    assert (link.user_id, link.channel, link.group) == (
        "ada@example.com/ü 42",
        "email",
        "marketing",
    )
    assert link.expires_at == NOW + timedelta(days=60)


def test_token_is_url_safe() -> None:
    value = token()
    assert unsubscribe_url("https://nudge.example/", value) == f"https://nudge.example/u/{value}"
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_a_changed_payload_is_tampered() -> None:
    payload, _, signature = token().partition(".")
    document = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    document["u"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()
    with pytest.raises(LinkError, match="has been altered") as err:
        read_token(secret=SECRET, token=f"{forged}.{signature}", now=NOW)
    assert err.value.reason == "tampered"


@pytest.mark.parametrize("position", [0, -1])
def test_a_changed_character_is_refused(position: int) -> None:
    value = list(token())
    value[position] = "A" if value[position] != "A" else "B"
    with pytest.raises(LinkError) as err:
        read_token(secret=SECRET, token="".join(value), now=NOW)
    assert err.value.reason in ("tampered", "malformed")


def test_another_secret_is_tampered() -> None:
    with pytest.raises(LinkError, match="has been altered") as err:
        read_token(secret="rotated-secret", token=token(), now=NOW)
    assert err.value.reason == "tampered"


def test_expired() -> None:
    value = token(expires_at=NOW - timedelta(seconds=1))
    with pytest.raises(LinkError, match="expired") as err:
        read_token(secret=SECRET, token=value, now=NOW)
    assert err.value.reason == "expired"
    # Good until the very second it expires.
    assert read_token(secret=SECRET, token=token(expires_at=NOW + timedelta(seconds=1)), now=NOW)


@pytest.mark.parametrize(
    ("value", "reason", "message"),
    [
        ("", "malformed", "is incomplete: copy the whole link"),
        ("abc", "malformed", "is incomplete: copy the whole link"),
        ("abc.", "malformed", "is incomplete: copy the whole link"),
        (".abc", "malformed", "is incomplete: copy the whole link"),
        ("ünïcode.sig", "malformed", "is not valid"),
        # Two parts it can read, a signature that is not ours.
        ("a.b.c", "tampered", "has been altered or is not one of ours"),
    ],
)
def test_malformed(value: str, reason: str, message: str) -> None:
    with pytest.raises(LinkError, match=f"^this unsubscribe link {message}$") as err:
        read_token(secret=SECRET, token=value, now=NOW)
    assert err.value.reason == reason


def test_an_empty_secret_signs_nothing() -> None:
    with pytest.raises(ValueError, match="NUDGE_LINK_SECRET"):
        token(secret="")
