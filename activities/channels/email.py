"""activities.channels: what the `email` providers (SMTP, SendGrid) share — the sender, the
Message-ID, the recipient and subject rules, the extra-headers hook, and the List-Unsubscribe
headers (RFC 2369, RFC 8058) that let a user say no from their mailbox."""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from activities.channels.base import OutgoingMessage, ProviderError, address
from core.config import Settings
from core.definition import Priority
from core.links import make_token, unsubscribe_url

HeaderHook = Callable[[OutgoingMessage], Mapping[str, str]]
"""Extra headers for one message, e.g. `List-Unsubscribe` and `List-Unsubscribe-Post`
(RFC 8058), which name the recipient and so cannot be fixed per channel."""

RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
"""Headers the channel writes itself (or SendGrid refuses in `headers`): a hook may not."""


_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII but ':'
_NOT_ATEXT = re.compile(r"[^A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]")


def parse_sender(value: str) -> tuple[str, str]:
    """`NUDGE_EMAIL_FROM` ("Name <addr@domain>" or "addr@domain") → (name, address)."""
    name, addr = email.utils.parseaddr(value)
    if "@" not in addr or "\n" in value or "\r" in value or not addr.rpartition("@")[2]:
        raise ValueError(
            f"NUDGE_EMAIL_FROM must be an address such as 'Nudge <nudge@example.com>', "
            f"got {value!r}"
        )
    return name, addr


def message_id(idempotency_key: str, sender_address: str) -> str:
    """`<key@sender-domain>`: the same on every retry of one send, so a resend after a crash
    (accepted, but we never heard) reaches the inbox as the same message."""
    domain = sender_address.rpartition("@")[2]
    return f"<{_NOT_ATEXT.sub('-', idempotency_key)}@{domain}>"


def recipient(message: OutgoingMessage) -> str:
    """The `email` trait as a bare address, or a final error naming the trait."""
    value = address(message, "email", "email")
    _, addr = email.utils.parseaddr(value)
    if "@" not in addr or "\n" in value or "\r" in value:
        raise ProviderError(
            f"user {message.user_id!r} has an invalid 'email' trait {value!r}: "
            "expected an address such as ada@example.com",
            retryable=False,
        )
    return addr


def subject(message: OutgoingMessage) -> str:
    if not message.subject or not message.subject.strip():
        raise ProviderError(
            f"step {message.step_id!r} sends an email without a subject: "
            "give its template a `subject`",
            retryable=False,
        )
    return message.subject


def extra_headers(hook: HeaderHook | None, message: OutgoingMessage) -> dict[str, str]:
    """What the hook adds, refused (final) if it would overwrite a header we own or smuggle
    a line break into one."""
    if hook is None:
        return {}
    headers = dict(hook(message))
    for name, value in headers.items():
        if name.lower() in RESERVED_HEADERS or not _HEADER_NAME.match(name):
            raise ProviderError(f"extra header {name!r} is not allowed", retryable=False)
        if "\r" in value or "\n" in value:
            raise ProviderError(f"extra header {name!r} contains a line break", retryable=False)
    return headers


def list_unsubscribe_hook(
    settings: Settings, *, clock: Callable[[], datetime] | None = None
) -> Callable[[OutgoingMessage], Mapping[str, str]]:
    """The email channels' `extra_headers` hook: for a message of a subscription group
    (every non-transactional one), a signed one-click unsubscribe URL and the
    `List-Unsubscribe-Post` header that tells mailbox providers a POST does it."""

    def now() -> datetime:
        return clock() if clock else datetime.now(UTC)

    def headers(message: OutgoingMessage) -> Mapping[str, str]:
        if message.subscription_group is None or message.priority == Priority.transactional:
            return {}
        token = make_token(
            secret=settings.link_secret,
            user_id=message.user_id,
            channel=message.channel,
            group=message.subscription_group,
            expires_at=now() + timedelta(days=settings.unsubscribe_link_days),
        )
        return {
            "List-Unsubscribe": f"<{unsubscribe_url(settings.public_url, token)}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    return headers
