"""api: Twilio's webhook signature — `X-Twilio-Signature` on every request Twilio makes to
Nudge (inbound SMS, message status callbacks), checked one way for all of them."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

from fastapi import HTTPException, Request, status

from core.config import Environment, Settings


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Twilio's `X-Twilio-Signature`: base64 HMAC-SHA1, keyed with the auth token, of the
    URL Twilio called followed by every POST parameter's name and value, sorted by name."""
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signed_urls(request: Request, settings: Settings) -> list[str]:
    """The URLs Twilio may have signed: the one configured for it (`public_url` + path and
    query), and the one this request arrived at (no proxy in between)."""
    query = f"?{request.url.query}" if request.url.query else ""
    configured = f"{settings.public_url.rstrip('/')}{request.url.path}{query}"
    return list(dict.fromkeys([configured, str(request.url)]))


def check_twilio_headers(request: Request, settings: Settings) -> None:
    """What can be refused before the body is read: the signature covers the body, but
    whether one is needed, and sent, is in the headers."""
    if not settings.twilio_auth_token:
        if settings.environment is Environment.production:
            # Unsigned, anyone could opt any number in or out, or bounce any delivery.
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "set NUDGE_TWILIO_AUTH_TOKEN to accept Twilio webhooks in production",
            )
        return
    if not request.headers.get("x-twilio-signature"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "X-Twilio-Signature is missing")


def verify_twilio(request: Request, settings: Settings, params: list[tuple[str, str]]) -> None:
    """Refuse (403) a request whose signature is not Twilio's for this URL and form."""
    token = settings.twilio_auth_token
    if not token:
        return  # allowed outside production by `check_twilio_headers`
    given = request.headers.get("x-twilio-signature", "")
    for url in signed_urls(request, settings):
        if hmac.compare_digest(twilio_signature(token, url, params).encode(), given.encode()):
            return
    raise HTTPException(status.HTTP_403_FORBIDDEN, "X-Twilio-Signature does not match")
