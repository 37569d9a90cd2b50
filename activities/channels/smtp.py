"""activities.channels: `email` over SMTP (aiosmtplib)."""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import socket
import ssl
from email.headerregistry import HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from typing import Any, Literal

import aiosmtplib

from activities.channels.base import (
    OutgoingMessage,
    Provider,
    ProviderError,
    Receipt,
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


class _UrlListHeader(UnstructuredHeader):
    """`List-Unsubscribe: <https://…/u/token>` on one line, as written.

    The default folding splits a word longer than a line (a signed URL is) into RFC 2047
    encoded words, which no mail client reads back as a URL; RFC 2369 asks for the URL as
    is (lines may reach RFC 5322's 998 characters)."""

    def fold(self, *, policy: Any) -> str:
        name: str = self.name  # type: ignore[attr-defined]  # the registry mixes BaseHeader in
        return f"{name}: {self}{policy.linesep}"


def _message_policy() -> email.policy.EmailPolicy[EmailMessage]:
    registry = HeaderRegistry()  # our own: the default policy's registry is shared
    for name in ("list-unsubscribe", "list-unsubscribe-post"):
        registry.map_to_type(name, _UrlListHeader)  # type: ignore[arg-type]  # a mixin, as above
    return email.policy.default.clone(header_factory=registry)


MESSAGE_POLICY = _message_policy()


class SmtpProvider(Provider):
    """Sends each email over its own SMTP connection.

    One connection per send on purpose: journeys send one message at a time per activity,
    a fresh connection never meets a server that silently dropped an idle one, and a
    failure is always about this message. A relay that must see fewer connections is the
    case for a small pool later; the error classification would not change.

    Exactly-once as far as SMTP allows: the `deliveries` row stops a second send after a
    recorded success; a retry after a lost DATA reply carries the same Message-ID, so a
    receiving system that deduplicates by it shows one message.
    """

    channel = "email"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        security: Literal["starttls", "tls", "none"],
        sender: str,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        extra_headers: HeaderHook | None = None,
    ):
        self._sender_name, self._sender_address = parse_sender(sender)
        self._host = host
        self._port = port
        self._security = security
        self._username = username
        self._password = password
        self._tls_context = tls_context
        self._timeout = timeout
        self.extra_headers = extra_headers
        """The hook for per-message headers (List-Unsubscribe); None adds nothing."""
        self._local_hostname: str | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, extra_headers: HeaderHook | None = None
    ) -> SmtpProvider:
        [host] = required_settings(
            {"NUDGE_SMTP_HOST": settings.smtp_host},
            chosen_by="NUDGE_EMAIL_PROVIDER=smtp",
            hint="the SMTP relay's host name",
        )
        if bool(settings.smtp_username) != bool(settings.smtp_password):
            raise ValueError(
                "NUDGE_SMTP_USERNAME and NUDGE_SMTP_PASSWORD go together: set both or neither"
            )
        if settings.smtp_username and settings.smtp_security == "none":
            raise ValueError(
                "NUDGE_SMTP_USERNAME with NUDGE_SMTP_SECURITY=none would send the password "
                "unencrypted: use starttls or tls"
            )
        tls_context = None
        if settings.smtp_security != "none":
            try:
                tls_context = ssl.create_default_context(cafile=settings.smtp_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"NUDGE_SMTP_CA_FILE={settings.smtp_ca_file!r} is not a readable CA "
                    f"bundle: {exc}"
                ) from exc
        return cls(
            host=host,
            port=settings.smtp_port,
            security=settings.smtp_security,
            sender=settings.email_from,
            username=settings.smtp_username,
            password=settings.smtp_password,
            tls_context=tls_context,
            timeout=settings.provider_timeout_seconds,
            extra_headers=extra_headers,
        )

    def build(self, message: OutgoingMessage) -> EmailMessage:
        """The MIME message: text, plus an HTML alternative when the template has one."""
        mime = EmailMessage(policy=MESSAGE_POLICY)
        mime["From"] = email.utils.formataddr((self._sender_name, self._sender_address))
        mime["To"] = recipient(message)
        mime["Subject"] = subject(message)
        mime["Date"] = email.utils.formatdate(usegmt=True)
        mime["Message-ID"] = message_id(message.idempotency_key, self._sender_address)
        for name, value in extra_headers(self.extra_headers, message).items():
            mime[name] = value
        mime.set_content(message.body)
        if message.html:
            mime.add_alternative(message.html, subtype="html")
        return mime

    async def send(self, message: OutgoingMessage) -> Receipt:
        mime = self.build(message)
        to = mime["To"]
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        smtp = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            use_tls=self._security == "tls",
            start_tls=self._security == "starttls",
            tls_context=self._tls_context,
            username=self._username,
            password=self._password,
            timeout=self._timeout,
            local_hostname=self._local_hostname,
        )
        try:
            await smtp.connect()
            _, reply = await smtp.send_message(mime, sender=self._sender_address, recipients=[to])
        except (aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            raise classify(exc, to) from exc
        # DATA was accepted: the message is sent, whatever QUIT meets.
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()
        return Receipt(
            provider_message_id=mime["Message-ID"],
            response={"reply": reply, "recipient": to},
        )


HARD_BOUNCE_CODES = frozenset({550, 551, 553})


def classify(exc: BaseException, to: str) -> ProviderError:
    """The shared rule in SMTP's terms: connection failures, timeouts and 4xx replies
    (421, 450, 451, 452, …) are temporary; 5xx replies (550, 553, …) are the server's
    final no, as is a server lacking what the settings require (STARTTLS, AUTH)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = exc.recipients[0] if exc.recipients else None
        if refused is None:
            return ProviderError(f"SMTP refused {to}", retryable=False)
        error = _reply_error(f"SMTP refused recipient {to}", refused.code, refused.message)
        # 550 mailbox unavailable, 551 user not local, 553 mailbox name not allowed: the
        # address is bad, not the message. (552, 554 and the rest may be about the message.)
        error.bounce = refused.code in HARD_BOUNCE_CODES
        return error
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply_error(f"SMTP {type(exc).__name__}", exc.code, exc.message)
    if isinstance(exc, ssl.SSLError):
        # Retryable like any failed connection (as httpx's are for the HTTP providers): a
        # certificate being rotated heals; a wrong NUDGE_SMTP_CA_FILE shows in the error.
        return ProviderError(f"SMTP TLS handshake failed: {exc}", retryable=True)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return ProviderError(f"SMTP timed out: {exc}", retryable=True)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPConnectError | OSError):
        return ProviderError(f"SMTP server unreachable: {exc}", retryable=True)
    return ProviderError(f"SMTP: {exc}", retryable=False)


def _reply_error(what: str, code: int, text: str) -> ProviderError:
    return ProviderError(f"{what}: {code} {text}".strip(), retryable=400 <= code < 500, status=code)
