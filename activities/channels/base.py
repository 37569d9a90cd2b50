"""activities.channels: what every provider shares — the base class, the message, the
receipt, and one classification of provider errors (retry or give up).

A channel (`email`, `sms`, …) is how a message goes out, named in a campaign; a provider
(SMTP, SendGrid, Twilio, …) is who carries it, chosen by configuration."""

from __future__ import annotations

import email.utils
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx


@dataclass(frozen=True)
class OutgoingMessage:
    """A rendered message, ready for a provider."""

    idempotency_key: str
    delivery_id: int
    user_id: str
    campaign_id: str
    campaign_version: int
    step_id: str
    channel: str
    subject: str | None
    body: str
    """The text: an email's plain-text part, an SMS, a push notification's body."""
    data: dict[str, Any] = field(default_factory=dict)
    html: str | None = None
    """An email's HTML part, when the template has one."""
    traits: dict[str, Any] = field(default_factory=dict)
    """The recipient's profile: each channel finds its address there (`email`, `phone`,
    `push_tokens`). Addresses come from the store at send time, never from a history."""
    subscription_group: str | None = None
    """What the recipient unsubscribes from to stop this campaign; None for transactional
    messages (no List-Unsubscribe)."""
    priority: str | None = None
    """The campaign's priority (core.definition.Priority), when known."""


def address(message: OutgoingMessage, trait: str, channel: str) -> str:
    """The recipient's address from a profile trait, or a final error naming the trait."""
    value = message.traits.get(trait)
    if not isinstance(value, str) or not value.strip():
        raise ProviderError(
            f"user {message.user_id!r} has no {trait!r} trait: nothing to send {channel} to",
            retryable=False,
        )
    return value.strip()


@dataclass(frozen=True)
class Receipt:
    """What a provider said when it accepted a message."""

    provider_message_id: str | None
    response: dict[str, Any] = field(default_factory=dict)


class ProviderError(Exception):
    """A provider refused or could not be reached. `retryable` decides what happens next."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
        bounce: bool = False,
        body: Any = None,
        answer: dict[str, Any] | None = None,
    ):
        super().__init__(bounded(message, MAX_MESSAGE_CHARS))
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
        self.body = body
        """The provider's answer, parsed when it was JSON (error codes live there)."""
        self.bounce = bounce
        """A hard bounce: the address itself is refused for good. `deliver` suppresses the
        channel for this user, so no later send — transactional included — tries it again."""
        self.answer = answer
        """What the provider answered, bounded (status, URL, the start of its body), for the
        delivery row an operator reads; None when there was no answer (unreachable)."""


class Provider(ABC):
    """Who carries the messages of one channel: SMTP or SendGrid for `email`, Twilio for
    `sms`, FCM for `push`, a signed POST for `webhook`, the database for `sandbox`."""

    channel: str
    """The channel it serves."""
    reports_delivery: bool = False
    """Whether the provider reports delivery later (a status webhook). When it does not, a
    message it accepted counts as delivered at once."""

    @abstractmethod
    async def send(self, message: OutgoingMessage) -> Receipt: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the provider holds; most hold nothing of their own."""


def required_settings(values: dict[str, str | None], *, chosen_by: str, hint: str) -> list[str]:
    """The values of the settings a provider cannot work without, stripped, in order; a
    missing or blank one stops the worker at start naming every setting to set."""
    missing = [name for name, value in values.items() if not (value or "").strip()]
    if missing:
        raise ValueError(f"{chosen_by} needs {', '.join(missing)} ({hint})")
    return [(value or "").strip() for value in values.values()]


RETRYABLE_STATUS = {408, 425, 429}

BODY_CHARS = 300
"""How much of a provider's error page an error message quotes: enough for its reason."""
MAX_MESSAGE_CHARS = 1000
"""The most a provider error says. Its message becomes a Temporal failure, which the
server replaces with "Failure exceeds size limit." past a few KB (stack trace included),
and a delivery row's error; a 1 MB error page must not go with it."""
JSON_BODY_BYTES = 64 * 1024
"""An error answer is parsed as JSON (providers put their error codes there) up to this
size; a larger one is only quoted."""


def bounded(text: str, limit: int) -> str:
    """`text` at most `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(f"… ({len(text)} more characters)"))
    return text[:keep] + f"… ({len(text) - keep} more characters)"


def short_body(text: str, limit: int = BODY_CHARS) -> str:
    """The start of an answer's body on one line: whitespace runs folded, at most `limit`."""
    return bounded(" ".join(text.split()), limit)


def _where(response: httpx.Response) -> str:
    """The URL a request went to, without its query (it may carry credentials)."""
    try:
        url = response.request.url
    except RuntimeError:  # a response built without a request (tests of the classification)
        return ""
    return str(url.copy_with(query=None, fragment=None))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def raise_for_provider_status(response: httpx.Response, provider: str) -> None:
    """Classify an HTTP answer: 2xx passes; 408/425/429/5xx retry (honouring
    `Retry-After`); any other status is the provider's final no."""
    status = response.status_code
    if 200 <= status < 300:
        return
    quoted = short_body(response.text) or response.reason_phrase
    url = _where(response)
    message = f"{provider} answered {status}" + (f" from {url}" if url else "") + f": {quoted}"
    body = None
    if len(response.content) <= JSON_BODY_BYTES:
        try:
            body = response.json()
        except ValueError:
            body = None
    answer = {"status": status, "url": url, "body": quoted}
    if status in RETRYABLE_STATUS or status >= 500:
        raise ProviderError(
            message,
            retryable=True,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            status=status,
            body=body,
            answer=answer,
        )
    raise ProviderError(message, retryable=False, status=status, body=body, answer=answer)


async def post_to_provider(
    client: httpx.AsyncClient, provider: str, url: str, **kwargs: Any
) -> httpx.Response:
    """POST, turning transport failures (timeouts, refused or dropped connections) into
    retryable `ProviderError`s and HTTP errors into classified ones."""
    try:
        response = await client.post(url, **kwargs)
    except httpx.TimeoutException as exc:
        raise ProviderError(f"{provider} timed out: {exc!r}", retryable=True) from exc
    except httpx.TransportError as exc:
        raise ProviderError(f"{provider} unreachable: {exc!r}", retryable=True) from exc
    raise_for_provider_status(response, provider)
    return response
