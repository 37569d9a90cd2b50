"""activities.channels: `sms` through Twilio's Messages API (or one compatible with it)."""

from __future__ import annotations

from urllib.parse import quote

import httpx

from activities.channels.base import (
    OutgoingMessage,
    Provider,
    ProviderError,
    Receipt,
    address,
    post_to_provider,
    required_settings,
)
from core.config import Settings
from core.sms import count_segments

PROVIDER = "twilio"
STATUS_PATH = "/v1/webhooks/twilio/status"
"""Nudge's route for Twilio's status callbacks (api/routes/provider_webhooks.py)."""


class TwilioProvider(Provider):
    """Sends an SMS with `POST /2010-04-01/Accounts/{sid}/Messages.json`, form-encoded,
    HTTP Basic with the account SID and auth token; the number is the profile's `phone`.

    Our idempotency key goes out as `Idempotency-Key`, which compatible gateways (and our
    test doubles) honour. Twilio itself takes no idempotency key for creating a message:
    if Twilio accepts a message and the answer is lost (timeout, dropped connection, worker
    killed before `deliver` records it), the retry sends a second SMS. That window is
    documented, not closed; the `deliveries` row closes it for every other case.
    """

    channel = "sms"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        account_sid: str,
        auth_token: str,
        sender: str,
        public_url: str | None = None,
    ):
        self._client = client
        self._url = (
            f"{base_url.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}"
            "/Messages.json"
        )
        self._auth = httpx.BasicAuth(account_sid, auth_token)
        # A Messaging Service SID (MG…) lets Twilio pick the sender from its pool.
        self._sender_field = "MessagingServiceSid" if sender.startswith("MG") else "From"
        self._sender = sender
        self._status_url = f"{public_url.rstrip('/')}{STATUS_PATH}" if public_url else None
        """Where Twilio reports the message's status; None asks for no report."""
        self.reports_delivery = self._status_url is not None
        """Twilio's status callbacks (api/routes/provider_webhooks.py) say when the carrier
        delivered the message (201 only means Twilio queued it); asked for none, accepted
        counts as delivered."""

    @classmethod
    def from_settings(cls, settings: Settings, http: httpx.AsyncClient) -> TwilioProvider:
        account_sid, auth_token, sender = required_settings(
            {
                "NUDGE_TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
                "NUDGE_TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
                "NUDGE_SMS_FROM": settings.sms_from,
            },
            chosen_by="NUDGE_SMS_PROVIDER=twilio",
            hint="the account SID and auth token from the Twilio console, and the sending "
            "number in E.164 or a Messaging Service SID",
        )
        return cls(
            http,
            base_url=settings.twilio_url,
            account_sid=account_sid,
            auth_token=auth_token,
            sender=sender,
            public_url=settings.public_url,
        )

    def form(self, message: OutgoingMessage, to: str) -> dict[str, str]:
        """The Messages API form for one message to `to`."""
        form = {"To": to, self._sender_field: self._sender, "Body": message.body}
        if self._status_url:
            # The delivery's id rides in the URL, which Twilio signs: its reports find the
            # delivery even before `deliver` has recorded the SID Twilio answered with.
            form["StatusCallback"] = f"{self._status_url}?delivery_id={message.delivery_id}"
        return form

    async def send(self, message: OutgoingMessage) -> Receipt:
        to = address(message, "phone", "sms")
        try:
            response = await post_to_provider(
                self._client,
                PROVIDER,
                self._url,
                data=self.form(message, to),
                auth=self._auth,
                headers={"idempotency-key": message.idempotency_key},
            )
        except ProviderError as exc:
            raise _explained(exc) from exc
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        counted = count_segments(message.body)
        sid = answer.get("sid")
        # Twilio's answer echoes the number and the text; the receipt keeps only what an
        # operator needs to find the message in Twilio's console and what it costs.
        return Receipt(
            provider_message_id=str(sid) if sid else None,
            response={
                "http_status": response.status_code,
                "status": answer.get("status"),
                "segments": counted.segments,
                "encoding": counted.encoding,
            },
        )


def _explained(exc: ProviderError) -> ProviderError:
    """The same classification, with Twilio's error code and message up front."""
    body = exc.body
    if not isinstance(body, dict) or "code" not in body:
        return exc
    reason = f"twilio refused the message (HTTP {exc.status}, Twilio error {body['code']})"
    if body.get("message"):
        reason += f": {body['message']}"
    if body.get("more_info"):
        reason += f" — {body['more_info']}"
    return ProviderError(
        reason,
        retryable=exc.retryable,
        retry_after=exc.retry_after,
        status=exc.status,
        body=body,
        bounce=exc.bounce,
        answer=exc.answer,
    )
