"""activities.channels: `push` through FCM HTTP v1 (`projects.messages.send`), or one
compatible with it."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from activities.channels.base import (
    OutgoingMessage,
    Provider,
    ProviderError,
    Receipt,
    post_to_provider,
    required_settings,
)
from core.config import Settings
from store.profiles import remove_push_token

PROVIDER = "fcm"


def device_tokens(message: OutgoingMessage) -> list[str]:
    """The profile's device tokens: `push_tokens` (a list) and `push_token` (one string),
    in order, each once; a final error naming the traits when there are none."""
    found: list[str] = []
    many = message.traits.get("push_tokens")
    one = message.traits.get("push_token")
    for value in [*(many if isinstance(many, list) else []), one]:
        if isinstance(value, str) and value.strip() and value.strip() not in found:
            found.append(value.strip())
    if not found:
        raise ProviderError(
            f"user {message.user_id!r} has no 'push_tokens' trait (nor 'push_token'): "
            "nothing to send push to",
            retryable=False,
        )
    return found


def fingerprint(token: str) -> str:
    """What receipts and errors show of a device token: enough to match, not to reuse."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def data_strings(data: dict[str, Any]) -> dict[str, str]:
    """FCM's `data` is a map of strings: strings pass, anything else goes as JSON."""
    return {
        str(k): v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        for k, v in data.items()
    }


def is_unregistered(exc: ProviderError) -> bool:
    """FCM's answer for a token that is no longer valid (app uninstalled, token expired):
    HTTP 404, `UNREGISTERED` in the error details (or, from older servers, status
    `NOT_FOUND`)."""
    if exc.status != 404:
        return False
    body = exc.body
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "UNREGISTERED" in str(exc)
    details = error.get("details")
    codes = {d.get("errorCode") for d in details if isinstance(d, dict)} if details else set()
    return "UNREGISTERED" in codes or error.get("status") == "NOT_FOUND"


def _reason(exc: ProviderError) -> str:
    body = exc.body
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return str(exc)
    details = error.get("details") or []
    codes = [d["errorCode"] for d in details if isinstance(d, dict) and d.get("errorCode")]
    code = codes[0] if codes else error.get("status")
    return f"fcm answered {exc.status} {code}: {error.get('message', '')}".rstrip(": ")


class FcmProvider(Provider):
    """Sends a notification to each of the user's devices; sent when at least one accepts.

    Tokens go one request each, in order. FCM's errors per token:

    - `UNREGISTERED` (404): the device is gone. The token is removed from the profile and
      shown in the receipt; never retried.
    - `INVALID_ARGUMENT` (400) and other final 4xx: that token failed; the others are tried.
    - 429/500/503, timeouts: retryable. The attempt stops there (`Retry-After` honoured)
      and the activity's retry starts again from the first token.

    Why a retry cannot repeat a notification on a device that already took it: every
    request carries `Idempotency-Key: {delivery key}:{token fingerprint}`, the same on
    every attempt, so a gateway that honours it (and our doubles) answers the repeat
    without showing it again. FCM itself takes no idempotency key, so against FCM a device
    that accepted before a later token hit a retryable error gets the notification again
    on the retry — a documented window, the same one the answer lost in flight leaves for
    every provider without keys. Recording per-token progress durably would close it, but
    needs a place in the `deliveries` row that the activity owns.
    """

    channel = "push"

    def __init__(
        self,
        client: httpx.AsyncClient,
        sessions: async_sessionmaker[AsyncSession],
        *,
        base_url: str,
        project_id: str,
        access_token: str,
    ):
        self._client = client
        self._sessions = sessions
        self._url = f"{base_url.rstrip('/')}/v1/projects/{quote(project_id, safe='')}/messages:send"
        self._access_token = access_token

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        http: httpx.AsyncClient,
        sessions: async_sessionmaker[AsyncSession],
    ) -> FcmProvider:
        project_id, access_token = required_settings(
            {
                "NUDGE_FCM_PROJECT_ID": settings.fcm_project_id,
                "NUDGE_FCM_ACCESS_TOKEN": settings.fcm_access_token,
            },
            chosen_by="NUDGE_PUSH_PROVIDER=fcm",
            hint="the Firebase project id, and an OAuth 2 access token for the "
            "firebase.messaging scope",
        )
        return cls(
            http,
            sessions,
            base_url=settings.fcm_url,
            project_id=project_id,
            access_token=access_token,
        )

    def _payload(self, message: OutgoingMessage, token: str) -> dict[str, Any]:
        notification = {"body": message.body}
        if message.subject:
            notification["title"] = message.subject
        payload: dict[str, Any] = {"token": token, "notification": notification}
        if message.data:
            payload["data"] = data_strings(message.data)
        return {"message": payload}

    async def send(self, message: OutgoingMessage) -> Receipt:
        outcomes: list[dict[str, Any]] = []
        first_id: str | None = None
        for token in device_tokens(message):
            ref = fingerprint(token)
            try:
                response = await post_to_provider(
                    self._client,
                    PROVIDER,
                    self._url,
                    json=self._payload(message, token),
                    headers={
                        "authorization": f"Bearer {self._access_token}",
                        "idempotency-key": f"{message.idempotency_key}:{ref}",
                    },
                )
            except ProviderError as exc:
                if exc.retryable:
                    accepted = sum(o["status"] == "sent" for o in outcomes)
                    raise ProviderError(
                        f"{exc} (token {ref}; {accepted} of the user's devices accepted "
                        "before it: the retry sends with the same keys)",
                        retryable=True,
                        retry_after=exc.retry_after,
                        status=exc.status,
                        answer=exc.answer,
                    ) from exc
                if is_unregistered(exc):
                    async with self._sessions() as session, session.begin():
                        removed = await remove_push_token(
                            session=session, user_id=message.user_id, token=token
                        )
                    outcomes.append({"token": ref, "status": "unregistered", "removed": removed})
                else:
                    outcomes.append({"token": ref, "status": "failed", "error": _reason(exc)})
                continue
            try:
                answer = response.json()
            except ValueError:
                answer = {}
            name = answer.get("name") if isinstance(answer, dict) else None
            first_id = first_id or (str(name) if name else None)
            outcomes.append({"token": ref, "status": "sent", "name": name})
        if not any(o["status"] == "sent" for o in outcomes):
            raise ProviderError(
                "no device accepted the notification: " + "; ".join(_describe(o) for o in outcomes),
                retryable=False,
            )
        return Receipt(
            provider_message_id=first_id,
            response={"sent": sum(o["status"] == "sent" for o in outcomes), "tokens": outcomes},
        )


def _describe(outcome: dict[str, Any]) -> str:
    if outcome["status"] == "unregistered":
        removed = "removed from the profile" if outcome["removed"] else "already gone"
        return f"token {outcome['token']} is unregistered ({removed})"
    return f"token {outcome['token']}: {outcome['error']}"
