"""activities.channels: `webhook` — a JSON POST signed per the Standard Webhooks spec."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx

from activities.channels.base import (
    OutgoingMessage,
    Provider,
    ProviderError,
    Receipt,
    post_to_provider,
)

SECRET_PREFIX = "whsec_"


def _secret_bytes(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from exc


def sign(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,<base64 HMAC-SHA256>` per secret, space-separated,
    so a receiver rotating secrets accepts either."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1,"
        + base64.b64encode(hmac.new(_secret_bytes(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets
    )


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance: int = 300) -> bool:
    """What a receiver does (used by our tests and documented for users)."""
    msg_id = headers["webhook-id"]
    timestamp = int(headers["webhook-timestamp"])
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = sign([secret], msg_id, timestamp, body).split(",", 1)[1]
    return any(
        hmac.compare_digest(expected, sig.split(",", 1)[1])
        for sig in headers["webhook-signature"].split()
        if sig.startswith("v1,")
    )


class WebhookProvider(Provider):
    """POSTs each message to one URL. The idempotency key is the `webhook-id`, so a receiver
    that remembers ids sees a retried delivery as the same message."""

    channel = "webhook"

    def __init__(self, client: httpx.AsyncClient, url: str | None, secrets: list[str]):
        self._client = client
        self._url = url
        self._secrets = secrets
        for s in secrets:
            _secret_bytes(s)

    async def send(self, message: OutgoingMessage) -> Receipt:
        if not self._url:
            raise ProviderError(
                "the webhook channel has no URL: set NUDGE_WEBHOOK_URL", retryable=False
            )
        timestamp = int(time.time())
        body = json.dumps(
            {
                "type": "message.send",
                "timestamp": timestamp,
                "data": {
                    "id": message.idempotency_key,
                    "delivery_id": message.delivery_id,
                    "user_id": message.user_id,
                    "campaign_id": message.campaign_id,
                    "campaign_version": message.campaign_version,
                    "step_id": message.step_id,
                    "subject": message.subject,
                    "body": message.body,
                    "data": message.data,
                },
            },
            separators=(",", ":"),
        ).encode()
        headers = {
            "content-type": "application/json",
            "webhook-id": message.idempotency_key,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secrets, message.idempotency_key, timestamp, body),
            "idempotency-key": message.idempotency_key,
        }
        response = await post_to_provider(
            self._client, "webhook", self._url, content=body, headers=headers
        )
        try:
            answer = response.json()
        except ValueError:
            answer = {"text": response.text[:2000]}
        if not isinstance(answer, dict):
            answer = {"body": answer}
        return Receipt(
            provider_message_id=str(answer.get("id") or message.idempotency_key),
            response={"status": response.status_code, "body": answer},
        )
