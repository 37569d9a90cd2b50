"""List-Unsubscribe on real email: marketing messages carry a signed one-click link (RFC
8058) that the API honours; transactional ones carry none. SMTP is a real aiosmtpd server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import ActivityEnvironment

from activities.channels.base import OutgoingMessage
from activities.channels.email import list_unsubscribe_hook
from activities.channels.registry import build_providers
from activities.journey import JourneyActivities
from core.config import Settings
from core.definition import parse_campaign
from core.events import JourneyEvent
from core.journey import DeliverRequest, DeliveryStatus, PolicyAction, PolicyRequest
from core.journey import idempotency_key as make_key
from core.links import read_token
from store.campaigns import save_campaign
from store.db import create_engine, session_factory
from store.profiles import merge_traits
from temporal.servers import free_port
from tests.channels.test_email import EphemeralController, Mailbox
from tests.fixtures.api import make_settings, running_api

LINK_SECRET = "test-link-secret"
PUBLIC_URL = "https://nudge.example"


def campaign(campaign_id: str, **fields: Any):
    return parse_campaign(
        {
            "id": campaign_id,
            "name": campaign_id,
            "entry": {"event": "Paid"},
            "steps": [{"id": "mail", "type": "send", "channel": "email", "template": "t"}],
            "templates": {"t": {"subject": "Hi {{ user_id }}", "body": "Hello"}},
            **fields,
        }
    )


class RawMailbox(Mailbox):
    """Keeps the bytes as they came over the wire, too."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.raw.append(envelope.original_content or envelope.content)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def mailbox() -> Iterator[tuple[RawMailbox, int]]:
    box = RawMailbox()
    controller = EphemeralController(box, hostname="127.0.0.1", port=0)
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


@pytest.fixture
async def sessions_at(
    database_url: str,
) -> AsyncIterator[tuple[str, async_sessionmaker[AsyncSession]]]:
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=campaign("promo"))
        await save_campaign(
            session=session, definition=campaign("receipt", priority="transactional")
        )
        await save_campaign(
            session=session, definition=campaign("digest", subscription_group="product_news")
        )
        await merge_traits(session=session, user_id="ada", traits={"email": "ada@example.com"})
    try:
        yield database_url, sessions
    finally:
        await engine.dispose()


def deliver_request(campaign_id: str) -> DeliverRequest:
    wid = f"journey/{campaign_id}/ada"
    entry = JourneyEvent(message_id=f"m-{uuid.uuid4()}", name="Paid", timestamp=datetime.now(UTC))
    return DeliverRequest(
        idempotency_key=make_key(wid, entry.message_id, "mail", 1),
        workflow_id=wid,
        campaign_id=campaign_id,
        campaign_version=1,
        step_id="mail",
        visit=1,
        channel="email",
        template="t",
        user_id="ada",
        entry_event=entry,
    )


async def test_marketing_mail_carries_one_click_unsubscribe_and_it_works(
    sessions_at, mailbox
) -> None:
    database_url, sessions = sessions_at
    box, port = mailbox
    settings = Settings(
        _env_file=None,
        environment="test",
        email_provider="smtp",
        email_from="Shop <hello@shop.example>",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        public_url=PUBLIC_URL,
        link_secret=LINK_SECRET,
        quiet_hours_start=None,
    )
    async with httpx.AsyncClient() as http:
        channels = build_providers(settings, http=http, sessions=sessions)
        acts = JourneyActivities(sessions=sessions, providers=channels, settings=settings)
        for campaign_id in ("promo", "receipt", "digest"):
            result = await ActivityEnvironment().run(acts.deliver, deliver_request(campaign_id))
            assert result.status is DeliveryStatus.sent, result

    promo, receipt, digest = (d.mime for d in box.delivered)
    assert receipt["List-Unsubscribe"] is None and receipt["List-Unsubscribe-Post"] is None
    assert promo["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    header = promo["List-Unsubscribe"]
    assert header.startswith(f"<{PUBLIC_URL}/u/") and header.endswith(">")
    # On the wire: one line, the URL as it is (not folded into RFC 2047 encoded words).
    assert f"List-Unsubscribe: {header}\r\n".encode() in box.raw[0]
    url = header[1:-1]
    link = read_token(secret=LINK_SECRET, token=url.rsplit("/", 1)[1])
    assert (link.user_id, link.channel, link.group) == ("ada", "email", "marketing")
    digest_link = read_token(
        secret=LINK_SECRET, token=digest["List-Unsubscribe"][1:-1].rsplit("/", 1)[1]
    )
    assert digest_link.group == "product_news"

    # The mailbox provider's one-click POST, to the API serving PUBLIC_URL.
    api_settings = make_settings(
        database_url, f"127.0.0.1:{free_port()}", link_secret=LINK_SECRET, public_url=PUBLIC_URL
    )
    async with running_api(api_settings) as api:
        answer = await api.http.post(
            urlsplit(url).path,
            content="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert answer.status_code == 200, answer.text

    acts = JourneyActivities(sessions=sessions, providers={}, settings=settings)
    req = deliver_request("promo")
    decision = await ActivityEnvironment().run(
        acts.check_policy,
        PolicyRequest(**req.model_dump(include=set(PolicyRequest.model_fields))),
    )
    assert decision.action is PolicyAction.suppress
    assert decision.reason == "unsubscribed from marketing on email"


def test_hook_adds_nothing_without_a_subscription_group() -> None:
    hook = list_unsubscribe_hook(Settings(_env_file=None, public_url=PUBLIC_URL))
    message = OutgoingMessage(
        idempotency_key="k",
        delivery_id=1,
        user_id="ada",
        campaign_id="receipt",
        campaign_version=1,
        step_id="mail",
        channel="email",
        subject="s",
        body="b",
    )
    assert hook(message) == {}
    marketing = OutgoingMessage(**{**message.__dict__, "subscription_group": "marketing"})
    assert set(hook(marketing)) == {"List-Unsubscribe", "List-Unsubscribe-Post"}
