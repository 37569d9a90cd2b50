"""The `email` channel: SMTP against a real aiosmtpd server (plain, STARTTLS, implicit TLS,
AUTH) and SendGrid against the HTTP provider double, alone and through `deliver`."""

from __future__ import annotations

import re
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.channels.base import OutgoingMessage, ProviderError
from activities.channels.registry import build_providers
from activities.channels.sendgrid import SendGridProvider
from activities.channels.smtp import SmtpProvider
from activities.journey import PROVIDER_UNAVAILABLE, JourneyActivities
from core.config import Settings
from core.definition import parse_campaign
from core.journey import (
    DeliverRequest,
    DeliveryStatus,
    PolicyAction,
    PolicyRequest,
)
from store import deliveries
from store.campaigns import save_campaign
from store.profiles import merge_traits
from store.subscriptions import get_suppression
from tests.fixtures.providers import SendGridResponder, keyless, taken
from tests.fixtures.sends import deliver_request, entry_event
from tests.fixtures.servers import Fault, ProviderDouble

SENDER = "Nudge Shop <hello@shop.example>"
USER, PASSWORD = "nudge", "s3cret"

# -- a real SMTP server ---------------------------------------------------------------------


@dataclass
class Delivered:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    authenticated: bool

    @property
    def mime(self) -> EmailMessage:
        """The message as parsed here, in the test: a check inside the SMTP handler would
        become the server's SMTP reply (aiosmtpd answers 500 for an exception), and the
        test would see a provider error instead of the failed check."""
        parsed = message_from_bytes(self.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class Mailbox:
    """aiosmtpd handler: keeps each accepted message as it came; `rcpt_replies` answers the
    next RCPTs with a refusal instead (e.g. '550 5.1.1 no such mailbox'). It records and
    answers, never checks: the tests check what it recorded."""

    def __init__(self) -> None:
        self.delivered: list[Delivered] = []
        self.rcpt_replies: list[str] = []
        self.rcpt_attempts = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        self.rcpt_attempts += 1
        if self.rcpt_replies:
            return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        self.delivered.append(
            Delivered(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                content=envelope.content,
                tls=server.transport.get_extra_info("ssl_object") is not None,
                authenticated=bool(session.authenticated),
            )
        )
        return f"250 2.0.0 Ok: queued as Q{len(self.delivered)}"


class EphemeralController(Controller):
    """aiosmtpd's Controller bound to port 0: reads the port the OS chose before its
    readiness check connects."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def _authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False)


@dataclass
class Tls:
    ca_file: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A throwaway CA and a server certificate for 127.0.0.1, made here, nothing fetched."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    ca_file = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(ca_file=ca_file, server_context=server_context)


SmtpServer = tuple[Mailbox, int]


@pytest.fixture
def smtp_server(tls: Tls) -> Iterator[Callable[..., SmtpServer]]:
    """Start an SMTP server: `security` as the channel's setting, `auth` to require AUTH."""
    controllers: list[Controller] = []

    def start(security: str = "starttls", *, auth: bool = False) -> SmtpServer:
        mailbox = Mailbox()
        kwargs: dict[str, Any] = {"hostname": "127.0.0.1", "port": 0}
        if security == "starttls":
            kwargs |= {"tls_context": tls.server_context, "require_starttls": True}
        elif security == "tls":
            kwargs["ssl_context"] = tls.server_context
        if auth:
            kwargs |= {"authenticator": _authenticate, "auth_required": True}
        controller = EphemeralController(mailbox, **kwargs)
        controller.start()
        controllers.append(controller)
        return mailbox, controller.port

    try:
        yield start
    finally:
        for controller in controllers:
            controller.stop()


def smtp_settings(port: int, security: str = "starttls", tls: Tls | None = None, **kw: Any):
    return Settings(
        _env_file=None,
        email_provider="smtp",
        email_from=SENDER,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security=security,
        smtp_ca_file=str(tls.ca_file) if tls else None,
        provider_timeout_seconds=5,
        **kw,
    )


def outgoing(**overrides: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "idempotency_key": f"nudge_{uuid.uuid4().hex}",
        "delivery_id": 7,
        "user_id": "ada",
        "campaign_id": "cart",
        "campaign_version": 1,
        "step_id": "remind",
        "channel": "email",
        "subject": "Ada, still thinking?",
        "body": "Your umbrella waits.",
        "html": "<p>Your <b>umbrella</b> waits.</p>",
        "traits": {"email": "ada@example.com"},
    }
    return OutgoingMessage(**(fields | overrides))


def closed_port() -> int:
    """A port that was just ours and is closed again: nothing listens there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parts(mime: EmailMessage) -> dict[str, str]:
    return {
        part.get_content_type(): part.get_content().strip()
        for part in mime.walk()
        if not part.is_multipart()
    }


# -- SMTP, the channel alone ----------------------------------------------------------------


@pytest.mark.parametrize("security", ["starttls", "tls", "none"])
async def test_smtp_sends_a_proper_mime_email(smtp_server, tls, security):
    mailbox, port = smtp_server(security)
    channel = SmtpProvider.from_settings(smtp_settings(port, security, tls))
    message = outgoing()

    receipt = await channel.send(message)

    [got] = mailbox.delivered
    mime = got.mime
    expected_id = f"<{message.idempotency_key}@shop.example>"
    assert got.tls is (security != "none")
    assert (got.mail_from, got.rcpt_tos) == ("hello@shop.example", ["ada@example.com"])
    assert mime["From"] == SENDER and mime["To"] == "ada@example.com"
    assert mime["Subject"] == "Ada, still thinking?"
    assert mime["Message-ID"] == expected_id and mime["Date"]
    assert mime.get_content_type() == "multipart/alternative"
    assert parts(mime) == {
        "text/plain": "Your umbrella waits.",
        "text/html": "<p>Your <b>umbrella</b> waits.</p>",
    }
    assert receipt.provider_message_id == expected_id
    assert "queued as Q1" in receipt.response["reply"]


async def test_smtp_text_only_unicode_and_auth(smtp_server, tls):
    mailbox, port = smtp_server("starttls", auth=True)
    settings = smtp_settings(port, "starttls", tls, smtp_username=USER, smtp_password=PASSWORD)
    await SmtpProvider.from_settings(settings).send(
        outgoing(html=None, subject="Grüße, Ada ✨", body="Ein Schirm wartet. ☂")
    )
    [got] = mailbox.delivered
    assert got.authenticated and got.tls
    assert got.mime.get_content_type() == "text/plain"
    assert got.mime["Subject"] == "Grüße, Ada ✨"
    assert got.mime.get_content().strip() == "Ein Schirm wartet. ☂"


async def test_smtp_wrong_password_is_final(smtp_server, tls):
    _, port = smtp_server("starttls", auth=True)
    settings = smtp_settings(port, "starttls", tls, smtp_username=USER, smtp_password="nope")
    with pytest.raises(ProviderError, match="535") as err:
        await SmtpProvider.from_settings(settings).send(outgoing())
    assert not err.value.retryable and err.value.status == 535


async def test_smtp_untrusted_certificate_never_sends(smtp_server):
    mailbox, port = smtp_server("starttls")
    channel = SmtpProvider.from_settings(smtp_settings(port, "starttls", tls=None))
    with pytest.raises(ProviderError, match="CERTIFICATE_VERIFY_FAILED") as err:
        await channel.send(outgoing())
    assert err.value.retryable
    assert mailbox.delivered == []


async def test_smtp_starttls_required_but_not_offered_is_final(smtp_server, tls):
    mailbox, port = smtp_server("none")
    with pytest.raises(ProviderError, match="STARTTLS") as err:
        await SmtpProvider.from_settings(smtp_settings(port, "starttls", tls)).send(outgoing())
    assert not err.value.retryable
    assert mailbox.delivered == []


async def test_smtp_extra_headers_hook_adds_list_unsubscribe(smtp_server, tls):
    mailbox, port = smtp_server("starttls")

    def unsubscribe(message: OutgoingMessage) -> dict[str, str]:
        return {
            "List-Unsubscribe": f"<https://nudge.example/u/{message.user_id}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    channel = SmtpProvider.from_settings(
        smtp_settings(port, "starttls", tls), extra_headers=unsubscribe
    )
    await channel.send(outgoing())
    mime = mailbox.delivered[0].mime
    assert mime["List-Unsubscribe"] == "<https://nudge.example/u/ada>"
    assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    channel.extra_headers = lambda m: {"Message-ID": "<forged@x>"}
    with pytest.raises(ProviderError, match="Message-ID") as err:
        await channel.send(outgoing())
    assert not err.value.retryable
    channel.extra_headers = lambda m: {"X-Evil": "a\r\nBcc: all@example.com"}
    with pytest.raises(ProviderError, match="line break"):
        await channel.send(outgoing())
    assert len(mailbox.delivered) == 1


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [
        ("550 5.1.1 mailbox unavailable", False),
        ("553 5.1.3 bad address syntax", False),
        ("451 4.3.0 try again later", True),
        ("452 4.2.2 mailbox full", True),
    ],
)
async def test_smtp_rcpt_replies_are_classified(smtp_server, tls, reply, retryable):
    mailbox, port = smtp_server("starttls")
    mailbox.rcpt_replies.append(reply)
    with pytest.raises(ProviderError, match=re.escape(reply)) as err:
        await SmtpProvider.from_settings(smtp_settings(port, "starttls", tls)).send(outgoing())
    assert err.value.retryable is retryable
    assert err.value.status == int(reply[:3])
    assert mailbox.delivered == []


async def test_smtp_server_down_is_retryable():
    channel = SmtpProvider.from_settings(smtp_settings(closed_port(), "none"))
    with pytest.raises(ProviderError, match="unreachable") as err:
        await channel.send(outgoing())
    assert err.value.retryable


async def test_settings_are_checked_when_the_channel_is_built(tmp_path):
    def build(**kw: Any) -> None:
        settings = Settings(_env_file=None, **kw)
        build_providers(settings, http=http, sessions=None)  # type: ignore[arg-type]

    http = httpx.AsyncClient()
    await http.aclose()

    with pytest.raises(
        ValueError, match="NUDGE_EMAIL_PROVIDER=sendgrid needs NUDGE_SENDGRID_API_KEY"
    ):
        build(email_provider="sendgrid")
    with pytest.raises(ValueError, match="NUDGE_EMAIL_FROM"):
        build(email_provider="sendgrid", sendgrid_api_key="SG.x", email_from="nobody")
    with pytest.raises(ValueError, match="NUDGE_SMTP_PASSWORD"):
        build(email_provider="smtp", smtp_username="me")
    with pytest.raises(ValueError, match="unencrypted"):
        build(email_provider="smtp", smtp_security="none", smtp_username="me", smtp_password="p")
    with pytest.raises(ValueError, match="NUDGE_SMTP_CA_FILE"):
        build(email_provider="smtp", smtp_ca_file=str(tmp_path / "missing.pem"))


# -- through the real `deliver` activity ----------------------------------------------------

DEFINITION = parse_campaign(
    {
        "id": "welcome",
        "name": "Welcome",
        "entry": {"event": "Signed Up"},
        "steps": [{"id": "hello", "type": "send", "channel": "email", "template": "hello"}],
        # The HTML is compared as rendered: no pixel, no tracked links (tests/api/
        # test_engagement_tracking.py is about those).
        "tracking": {"opens": False, "clicks": False},
        "templates": {
            "hello": {
                "subject": "Welcome, {{ traits.first_name }}",
                "body": "Hi {{ traits.first_name }}, your plan: {{ event.properties.plan }}.",
                "html": "<h1>Hi {{ traits.first_name }}</h1><p>{{ event.properties.plan }}</p>",
            }
        },
    }
)


def welcome(user_id: str = "ada") -> DeliverRequest:
    """The welcome campaign's email to `user_id`."""
    return deliver_request(
        campaign_id="welcome",
        step_id="hello",
        channel="email",
        template="hello",
        user_id=user_id,
        entry=entry_event("Signed Up", {"plan": "Pro"}),
    )


@pytest.fixture
async def seeded(sessions):
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=DEFINITION)
        await merge_traits(
            session=session, user_id="ada", traits={"first_name": "Ada", "email": "ada@example.com"}
        )
        await merge_traits(session=session, user_id="bob", traits={"first_name": "Bob"})
    return sessions


@pytest.fixture
async def smtp_activities(
    seeded, smtp_server, tls
) -> AsyncIterator[tuple[JourneyActivities, Mailbox]]:
    mailbox, port = smtp_server("starttls")
    async with httpx.AsyncClient(timeout=5) as http:
        channels = build_providers(smtp_settings(port, "starttls", tls), http=http, sessions=seeded)
        yield JourneyActivities(sessions=seeded, providers=channels), mailbox


async def row(sessions, key: str):
    async with sessions() as session:
        return await deliveries.get_delivery(session=session, idempotency_key=key)


async def test_deliver_sends_one_email_and_a_retry_sends_nothing(smtp_activities, sessions):
    activities, mailbox = smtp_activities
    env = ActivityEnvironment()
    req = welcome()

    first = await env.run(activities.deliver, req)
    again = await env.run(activities.deliver, req)

    assert first.status is DeliveryStatus.sent and not first.duplicate
    assert again.status is DeliveryStatus.sent and again.duplicate
    [got] = mailbox.delivered
    assert got.mime["To"] == "ada@example.com" and got.mime["Subject"] == "Welcome, Ada"
    assert got.mime["Message-ID"] == f"<{req.idempotency_key}@shop.example>"
    assert parts(got.mime) == {
        "text/plain": "Hi Ada, your plan: Pro.",
        "text/html": "<h1>Hi Ada</h1><p>Pro</p>",
    }
    assert first.provider_message_id == got.mime["Message-ID"]
    recorded = await row(sessions, req.idempotency_key)
    assert recorded.status == "sent" and "queued as" in recorded.provider_response["reply"]


async def test_deliver_to_a_profile_without_email_fails_naming_the_trait(smtp_activities):
    activities, mailbox = smtp_activities
    result = await ActivityEnvironment().run(activities.deliver, welcome("bob"))
    assert result.status is DeliveryStatus.failed
    assert "'email' trait" in (result.reason or "")
    assert mailbox.rcpt_attempts == 0


async def test_deliver_550_is_failed_and_tried_once(smtp_activities, sessions):
    activities, mailbox = smtp_activities
    mailbox.rcpt_replies.append("550 5.1.1 mailbox unavailable")
    env = ActivityEnvironment()
    req = welcome()
    result = await env.run(activities.deliver, req)
    again = await env.run(activities.deliver, req)
    assert result.status is DeliveryStatus.failed and "550" in (result.reason or "")
    assert again.status is DeliveryStatus.failed and again.duplicate
    assert mailbox.rcpt_attempts == 1 and mailbox.delivered == []
    assert (await row(sessions, req.idempotency_key)).status == "failed"
    # A refused mailbox is a hard bounce: email to this user is suppressed from now on,
    # and the send policy says so for every later send, transactional included.
    async with sessions() as session:
        bounce = await get_suppression(session=session, user_id="ada", channel="email")
    assert bounce is not None and "550" in bounce.reason
    decision = await env.run(
        activities.check_policy,
        PolicyRequest(
            idempotency_key="later-send",
            workflow_id=req.workflow_id,
            campaign_id="welcome",
            campaign_version=1,
            step_id="hello",
            visit=2,
            channel="email",
            user_id="ada",
        ),
    )
    assert decision.action is PolicyAction.suppress


async def test_deliver_451_retries_then_sends_once(smtp_activities, sessions):
    activities, mailbox = smtp_activities
    mailbox.rcpt_replies.append("451 4.7.1 greylisted, try again")
    env = ActivityEnvironment()
    req = welcome()
    with pytest.raises(ApplicationError, match=r"451 4\.7\.1 greylisted") as err:
        await env.run(activities.deliver, req)
    assert err.value.type == PROVIDER_UNAVAILABLE and not err.value.non_retryable
    pending = await row(sessions, req.idempotency_key)
    assert pending.status == "pending" and "451" in pending.error

    result = await env.run(activities.deliver, req)
    assert result.status is DeliveryStatus.sent
    assert mailbox.rcpt_attempts == 2 and len(mailbox.delivered) == 1


async def test_deliver_with_smtp_server_down_is_retryable(seeded):
    async with httpx.AsyncClient() as http:
        channels = build_providers(smtp_settings(closed_port(), "none"), http=http, sessions=seeded)
        activities = JourneyActivities(sessions=seeded, providers=channels)
        with pytest.raises(ApplicationError, match="unreachable") as err:
            await ActivityEnvironment().run(activities.deliver, welcome())
    assert not err.value.non_retryable


# -- SendGrid ------------------------------------------------------------------------------


@pytest.fixture
def sendgrid_double() -> Iterator[ProviderDouble]:
    """SendGrid takes no idempotency key: its double counts every mail it accepts."""
    double = keyless(SendGridResponder()).start()
    try:
        yield double
    finally:
        double.close()


@pytest.fixture
async def sendgrid(seeded, sendgrid_double: ProviderDouble):
    settings = Settings(
        _env_file=None,
        email_provider="sendgrid",
        email_from=SENDER,
        sendgrid_url=sendgrid_double.url,
        sendgrid_api_key="SG.test-key",
    )
    async with httpx.AsyncClient(timeout=0.5) as http:
        channels = build_providers(settings, http=http, sessions=seeded)
        yield JourneyActivities(sessions=seeded, providers=channels), sendgrid_double


async def test_sendgrid_posts_v3_mail_send_once(sendgrid, sessions):
    activities, double = sendgrid
    env = ActivityEnvironment()
    req = welcome()
    first = await env.run(activities.deliver, req)
    again = await env.run(activities.deliver, req)

    assert first.status is DeliveryStatus.sent and again.duplicate
    [hit] = double.received  # the retry found the send done and did not call SendGrid
    assert taken(double) == [hit]
    assert first.provider_message_id == double.respond.ids[0]  # SendGrid's X-Message-Id
    assert hit.headers["authorization"] == "Bearer SG.test-key"
    assert hit.headers["idempotency-key"] == req.idempotency_key
    assert hit.headers["content-type"] == "application/json"
    body = hit.json()
    delivery_id = (await row(sessions, req.idempotency_key)).id
    # A marketing campaign: one-click unsubscribe (tests/policy covers the link itself).
    unsubscribe = body["headers"].pop("List-Unsubscribe")
    assert unsubscribe.startswith("<http://127.0.0.1:8000/u/") and unsubscribe.endswith(">")
    assert body["headers"].pop("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert body == {
        "personalizations": [
            {
                "to": [{"email": "ada@example.com"}],
                "custom_args": {
                    "delivery_id": str(delivery_id),
                    "idempotency_key": req.idempotency_key,
                },
            }
        ],
        "from": {"email": "hello@shop.example", "name": "Nudge Shop"},
        "subject": "Welcome, Ada",
        "content": [
            {"type": "text/plain", "value": "Hi Ada, your plan: Pro."},
            {"type": "text/html", "value": "<h1>Hi Ada</h1><p>Pro</p>"},
        ],
        "headers": {"Message-ID": f"<{req.idempotency_key}@shop.example>"},
        # Nudge tracks opens and clicks itself.
        "tracking_settings": {
            "click_tracking": {"enable": False, "enable_text": False},
            "open_tracking": {"enable": False},
        },
    }


async def test_sendgrid_extra_headers_hook(sendgrid_double):
    async with httpx.AsyncClient(timeout=5) as http:
        channel = SendGridProvider(
            http,
            url=sendgrid_double.url,
            api_key="SG.k",
            sender="hello@shop.example",
            extra_headers=lambda m: {"List-Unsubscribe": "<mailto:u@shop.example>"},
        )
        receipt = await channel.send(outgoing(html=None))
    [hit] = sendgrid_double.received
    body = hit.json()
    assert body["from"] == {"email": "hello@shop.example"}
    assert body["content"] == [{"type": "text/plain", "value": "Your umbrella waits."}]
    assert body["headers"]["List-Unsubscribe"] == "<mailto:u@shop.example>"
    assert receipt.provider_message_id == sendgrid_double.respond.ids[0]


async def test_sendgrid_hang_past_the_timeout_is_retryable(sendgrid):
    activities, double = sendgrid
    # Silent past the client's 0.5 s timeout, then hangs up rather than answering nobody.
    double.faults.append(Fault(hang=1.5, drop=True))
    with pytest.raises(ApplicationError, match="timed out") as err:
        await ActivityEnvironment().run(activities.deliver, welcome())
    assert not err.value.non_retryable
