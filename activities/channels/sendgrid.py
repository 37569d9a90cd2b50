"""activities.channels: `email` through SendGrid's v3 Mail Send API (or one compatible)."""

from __future__ import annotations

from typing import Any

import httpx

from activities.channels.base import (
    OutgoingMessage,
    Provider,
    Receipt,
    post_to_provider,
    required_settings,
)
from activities.channels.email import (
    HeaderHook,
    extra_headers,
    message_id,
    parse_sender,
    recipient,
    subject,
)
from core.config import Settings


class SendGridProvider(Provider):
    """POSTs one `mail/send` request per message; 202 means SendGrid queued it.

    The idempotency key travels three ways: as `Idempotency-Key` (ignored where the API does
    not take it), in `custom_args` (so SendGrid's event webhook names our delivery) and in
    the Message-ID, derived as for SMTP (activities/channels/email.py).
    """

    channel = "email"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        url: str,
        api_key: str,
        sender: str,
        extra_headers: HeaderHook | None = None,
        reports_delivery: bool = True,
    ):
        self.reports_delivery = reports_delivery
        """With the Event Webhook set up (api/routes/provider_webhooks.py), SendGrid says
        when the receiving server took the message (202 only means it queued it); without
        it, accepted counts as delivered, or nothing ever would."""
        self._client = client
        self._url = url
        self._api_key = api_key
        self._sender_name, self._sender_address = parse_sender(sender)
        self.extra_headers = extra_headers
        """The hook for per-message headers (List-Unsubscribe); None adds nothing."""

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        extra_headers: HeaderHook | None = None,
    ) -> SendGridProvider:
        api_key, url = required_settings(
            {
                "NUDGE_SENDGRID_API_KEY": settings.sendgrid_api_key,
                "NUDGE_SENDGRID_URL": settings.sendgrid_url,
            },
            chosen_by="NUDGE_EMAIL_PROVIDER=sendgrid",
            hint="an API key with the Mail Send permission, and the v3 mail/send URL",
        )
        return cls(
            http,
            url=url,
            api_key=api_key,
            sender=settings.email_from,
            extra_headers=extra_headers,
            reports_delivery=bool(settings.sendgrid_webhook_public_key),
        )

    def payload(self, message: OutgoingMessage) -> dict[str, Any]:
        sender: dict[str, str] = {"email": self._sender_address}
        if self._sender_name:
            sender["name"] = self._sender_name
        content = [{"type": "text/plain", "value": message.body}]
        if message.html:
            content.append({"type": "text/html", "value": message.html})
        return {
            "personalizations": [
                {
                    "to": [{"email": recipient(message)}],
                    "custom_args": {
                        "delivery_id": str(message.delivery_id),
                        "idempotency_key": message.idempotency_key,
                    },
                }
            ],
            "from": sender,
            "subject": subject(message),
            "content": content,
            "headers": {
                "Message-ID": message_id(message.idempotency_key, self._sender_address),
                **extra_headers(self.extra_headers, message),
            },
            # Nudge tracks opens and clicks itself (core/tracking.py): SendGrid's own would
            # rewrite the links again and count every open twice.
            "tracking_settings": {
                "click_tracking": {"enable": False, "enable_text": False},
                "open_tracking": {"enable": False},
            },
        }

    async def send(self, message: OutgoingMessage) -> Receipt:
        body = self.payload(message)
        response = await post_to_provider(
            self._client,
            "sendgrid",
            self._url,
            json=body,
            headers={
                "authorization": f"Bearer {self._api_key}",
                "idempotency-key": message.idempotency_key,
            },
        )
        provider_id = response.headers.get("x-message-id")
        ours = body["headers"]["Message-ID"]
        return Receipt(
            # SendGrid's own id is what its event webhook reports; ours if it sent none.
            provider_message_id=provider_id or ours,
            response={
                "status": response.status_code,
                "x_message_id": provider_id,
                "message_id": ours,
            },
        )
