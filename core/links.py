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


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, payload: str) -> str:
    return _b64encode(hmac.new(secret.encode(), payload.encode("ascii"), hashlib.sha256).digest())


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
    payload = _b64encode(json.dumps(document, separators=(",", ":")).encode())
    return f"{payload}.{_sign(secret, payload)}"


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
        expected = _sign(secret, payload).encode("ascii")
        given = signature.encode("ascii")
    except UnicodeEncodeError:
        raise LinkError("malformed", "this unsubscribe link is not valid") from None
    if not hmac.compare_digest(expected, given):
        raise LinkError("tampered", "this unsubscribe link has been altered or is not one of ours")
    try:
        document = json.loads(_b64decode(payload))
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
