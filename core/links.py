"""core: signed unsubscribe links — who, which channel and group, until when. Pure, stdlib.

A token is `<payload>.<signature>`: the payload is base64url JSON (user, channel, group,
expiry as Unix seconds), the signature base64url HMAC-SHA256 of the payload text with the
link secret. No database row per link: anyone holding the link may unsubscribe that user
from that group, which is what a link in their mailbox is for, and nothing more.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime

TOKEN_VERSION = 1


class LinkError(ValueError):
    """An unsubscribe token that cannot be honoured; `reason` is tampered, expired or
    malformed, and the message says what the user can do."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class UnsubscribeLink:
    user_id: str
    channel: str
    group: str
    expires_at: datetime


# Shared with core.tracking, whose tokens are made the same way under another key.


def b64encode(raw: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: str | bytes, payload: str) -> str:
    """base64url HMAC-SHA256 of the (ASCII) payload under `secret`."""
    key = secret.encode() if isinstance(secret, str) else secret
    return b64encode(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def signature_matches(secret: str | bytes, payload: str, signature: str) -> bool:
    """Whether `signature` is the payload's, compared in constant time. Both parts are
    base64url, so ASCII; they are compared as bytes, since compare_digest refuses str
    holding anything else (a link mangled by a mail client, or forged): such a token
    matches nothing."""
    try:
        expected = sign(secret, payload).encode("ascii")
        given = signature.encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected, given)


def make_token(*, secret: str, user_id: str, channel: str, group: str, expires_at: datetime) -> str:
    """A signed token for "unsubscribe `user_id` from `group` on `channel`" until
    `expires_at` (aware)."""
    if not secret:
        raise ValueError("the link secret is empty: set NUDGE_LINK_SECRET")
    document = {
        "v": TOKEN_VERSION,
        "u": user_id,
        "c": channel,
        "g": group,
        "e": int(expires_at.timestamp()),
    }
    payload = b64encode(json.dumps(document, separators=(",", ":")).encode())
    return f"{payload}.{sign(secret, payload)}"


def read_token(*, secret: str, token: str, now: datetime | None = None) -> UnsubscribeLink:
    """The link a token stands for, or a `LinkError`: a signature that does not match
    (changed, or signed with another secret) is `tampered`; a good one past its expiry is
    `expired`. The signature is checked first, in constant time, before anything in the
    payload is believed."""
    payload, dot, signature = token.strip().partition(".")
    if not dot or not payload or not signature:
        raise LinkError("malformed", "this unsubscribe link is incomplete: copy the whole link")
    try:
        # Both parts are base64url, so ASCII; compared as bytes, since compare_digest
        # refuses str holding anything else (a link mangled by a mail client, or forged).
        expected = sign(secret, payload).encode("ascii")
        given = signature.encode("ascii")
    except UnicodeEncodeError:
        raise LinkError("malformed", "this unsubscribe link is not valid") from None
    if not hmac.compare_digest(expected, given):
        raise LinkError("tampered", "this unsubscribe link has been altered or is not one of ours")
    try:
        document = json.loads(b64decode(payload))
        link = UnsubscribeLink(
            user_id=str(document["u"]),
            channel=str(document["c"]),
            group=str(document["g"]),
            expires_at=datetime.fromtimestamp(int(document["e"]), UTC),
        )
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise LinkError("malformed", "this unsubscribe link is not valid") from exc
    if (now or datetime.now(UTC)) >= link.expires_at:
        raise LinkError(
            "expired",
            "this unsubscribe link has expired: use the link in a newer message, "
            "or contact us to unsubscribe",
        )
    return link


def unsubscribe_url(public_url: str, token: str) -> str:
    """`{public_url}/u/{token}`: the page (GET) and the one-click endpoint (POST)."""
    return f"{public_url.rstrip('/')}/u/{token}"
