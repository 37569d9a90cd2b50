"""Email open and click tracking over real HTTP: a campaign's email sent by the real
`deliver` activity through SMTP to a real aiosmtpd server, its pixel and links fetched
from the real API (uvicorn on 127.0.0.1), and what was counted read back from the
database, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.testing import ActivityEnvironment

from activities.channels.registry import build_providers
from activities.journey import JourneyActivities
from core.journey import DeliveryStatus
from core.links import b64decode, b64encode
from core.stats import ALL_TIME
from core.tracking import click_token
from store.models import CampaignCount, Delivery, Event
from store.profiles import merge_traits
from temporal.servers import free_port
from tests.channels.test_email import EphemeralController, Mailbox, smtp_settings
from tests.fixtures.api import ADMIN, RunningApi, make_settings, running_api
from tests.fixtures.sends import deliver_request, entry_event

BROWSER = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Safari/605.1.15"
)
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
CART = "https://shop.example/cart?item=umbrella&utm_source=nudge"
SALE = "https://shop.example/sale"
HELP = "https://shop.example/help"

HTML = """<!doctype html><html><body>
<h1>Hi {{ traits.first_name }}</h1>
<p><a href="https://shop.example/cart?item=umbrella&amp;utm_source=nudge">Your cart</a></p>
<p><a class="button" href="https://shop.example/sale">The sale</a></p>
<p><a href="https://shop.example/help" data-nudge-track="off">Help</a>
or <a href="mailto:help@shop.example">write to us</a>.</p>
</body></html>"""


def campaign(campaign_id: str, **tracking: bool) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "name": "Welcome",
        "entry": {"event": "Signed Up"},
        "steps": [{"id": "hello", "type": "send", "channel": "email", "template": "hello"}],
        "templates": {
            "hello": {"subject": "Welcome, {{ traits.first_name }}", "body": "Hi.", "html": HTML}
        },
        **({"tracking": tracking} if tracking else {}),
    }


class Links(HTMLParser):
    """Every `<a href>` and `<img src>` of an HTML part, as a mail client reads them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.images: list[str] = []
        self.attributes: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.attributes += [name for name, _ in attrs]
        if tag == "a" and values.get("href"):
            self.hrefs.append(values["href"] or "")
        if tag == "img" and values.get("src"):
            self.images.append(values["src"] or "")


@dataclass
class Sent:
    delivery_id: int
    mime: EmailMessage

    @property
    def html(self) -> str:
        part = self.mime.get_body(("html",))
        assert part is not None
        return str(part.get_content())  # type: ignore[attr-defined]

    @property
    def links(self) -> Links:
        return Links(self.html)


@dataclass
class Tracking:
    """The API, and a sender whose links point at it."""

    api: RunningApi
    activities: JourneyActivities
    mailbox: Mailbox

    async def send(self, campaign_id: str = "welcome", user_id: str = "ada") -> Sent:
        request = deliver_request(
            campaign_id=campaign_id,
            step_id="hello",
            channel="email",
            template="hello",
            user_id=user_id,
            entry=entry_event("Signed Up"),
        )
        result = await ActivityEnvironment().run(self.activities.deliver, request)
        assert result.status is DeliveryStatus.sent, result.reason
        return Sent(result.delivery_id, self.mailbox.delivered[-1].mime)

    async def get(self, url: str, agent: str = BROWSER, method: str = "GET") -> httpx.Response:
        assert url.startswith(self.api.url + "/t/"), url
        return await self.api.http.request(method, url, headers={"User-Agent": agent})

    async def delivery(self, delivery_id: int) -> Delivery:
        async with self.api.services.sessions() as session:
            row = await session.get(Delivery, delivery_id)
        assert row is not None
        return row

    async def counts(self, campaign_id: str = "welcome") -> dict[str, int]:
        """The campaign's all-time aggregates, by metric."""
        statement = (
            select(CampaignCount.metric, func.sum(CampaignCount.count))
            .where(CampaignCount.campaign_id == campaign_id, CampaignCount.hour == ALL_TIME)
            .group_by(CampaignCount.metric)
        )
        async with self.api.services.sessions() as session:
            rows = (await session.execute(statement)).all()
        return {metric: int(count) for metric, count in rows}

    async def events(self, name: str) -> list[dict[str, Any]]:
        statement = select(Event.payload).where(Event.name == name).order_by(Event.id)
        async with self.api.services.sessions() as session:
            return list((await session.scalars(statement)).all())

    async def funnel(self, campaign_id: str = "welcome") -> dict[str, Any]:
        response = await self.api.http.get(f"/v1/campaigns/{campaign_id}/stats", headers=ADMIN)
        assert response.status_code == 200, response.text
        funnel: dict[str, Any] = response.json()["funnel"]
        return funnel


@asynccontextmanager
async def tracking_stack(database_url: str, **overrides: Any) -> AsyncIterator[Tracking]:
    """The API on `database_url` (Temporal unreachable: tracking needs none), the campaigns
    saved through it, and the real `deliver` activity sending through SMTP to a real
    aiosmtpd server, with `public_url` the API's address."""
    settings = make_settings(database_url, f"127.0.0.1:{free_port()}", **overrides)
    mailbox = Mailbox()
    smtp = EphemeralController(mailbox, hostname="127.0.0.1", port=0)
    smtp.start()
    try:
        async with running_api(settings) as api, httpx.AsyncClient(timeout=5) as http:
            await api.campaign(campaign("welcome"), activate=False)
            await api.campaign(campaign("no-clicks", clicks=False), activate=False)
            sessions = api.services.sessions
            async with sessions() as session, session.begin():
                for user in ("ada", "bob"):
                    traits = {"first_name": user.title(), "email": f"{user}@example.com"}
                    await merge_traits(session=session, user_id=user, traits=traits)
            sender = smtp_settings(
                smtp.port, "none", public_url=api.url, link_secret=settings.link_secret
            )
            providers = build_providers(sender, http=http, sessions=sessions)
            activities = JourneyActivities(sessions=sessions, providers=providers, settings=sender)
            yield Tracking(api, activities, mailbox)
    finally:
        smtp.stop()


@pytest.fixture
async def tracking(database_url: str) -> AsyncIterator[Tracking]:
    """Timing never makes a machine here (thresholds 0): only the user agent does."""
    async with tracking_stack(
        database_url, machine_click_seconds=0, machine_open_seconds=0
    ) as stack:
        yield stack


async def test_opens_and_clicks_count_once_per_delivery_and_redirect_to_the_link(
    tracking: Tracking,
):
    sent = await tracking.send()
    base = tracking.api.url
    links = sent.links

    # The email: two links go through Nudge, the one marked off and the mailto do not,
    # nor does the List-Unsubscribe link; one pixel.
    cart_url, sale_url, help_url, mail_url = links.hrefs
    assert cart_url.startswith(f"{base}/t/c/") and sale_url.startswith(f"{base}/t/c/")
    assert (help_url, mail_url) == (HELP, "mailto:help@shop.example")
    assert "data-nudge-track" not in links.attributes
    [pixel_url] = links.images
    assert pixel_url.startswith(f"{base}/t/o/")
    assert sent.mime["List-Unsubscribe"].startswith(f"<{base}/u/")
    assert re.search(r'</p>\s*<img src="[^"]+"[^>]*/></body></html>\s*$', sent.html)

    # A person opens it twice and clicks the cart twice and the sale once.
    for _ in range(2):
        pixel = await tracking.get(pixel_url)
        assert pixel.status_code == 200
        assert pixel.headers["content-type"] == "image/gif"
        assert pixel.headers["cache-control"] == "no-store, private"
        assert len(pixel.content) == 43 and pixel.content.startswith(b"GIF89a")
    for url, original in ((cart_url, CART), (cart_url, CART), (sale_url, SALE)):
        response = await tracking.get(url)
        assert response.status_code == 302
        assert response.headers["location"] == original
        assert response.headers["referrer-policy"] == "no-referrer"

    row = await tracking.delivery(sent.delivery_id)
    assert row.opened_at is not None and row.human_opened_at == row.opened_at
    assert row.clicked_at is not None and row.human_clicked_at == row.clicked_at
    assert (row.opens, row.clicks) == (2, 3)
    counts = await tracking.counts()
    assert {k: counts.get(k) for k in ("opened", "opened_human", "opens")} == {
        "opened": 1,
        "opened_human": 1,
        "opens": 2,
    }
    assert {k: counts.get(k) for k in ("clicked", "clicked_human", "clicks")} == {
        "clicked": 1,
        "clicked_human": 1,
        "clicks": 3,
    }
    funnel = await tracking.funnel()
    assert (funnel["opened"], funnel["opened_human"], funnel["opens"]) == (1, 1, 2)
    assert (funnel["clicked"], funnel["clicked_human"], funnel["clicks"]) == (1, 1, 3)

    # One Email Opened event for the delivery, one Email Link Clicked per link.
    [opened] = await tracking.events("Email Opened")
    assert opened["userId"] == "ada"
    assert opened["properties"] | {"machine": False, "source": "pixel"} == opened["properties"]
    assert opened["properties"]["delivery_id"] == sent.delivery_id
    assert opened["properties"]["campaign_id"] == "welcome"
    clicks = await tracking.events("Email Link Clicked")
    assert sorted((c["properties"]["link_url"], c["properties"]["link_id"]) for c in clicks) == [
        (CART, "0"),
        (SALE, "1"),
    ]
    assert all(c["properties"]["machine"] is False for c in clicks)
    assert all(c["properties"]["source"] == "link" for c in clicks)


async def test_a_mail_proxy_opens_as_a_machine_and_a_person_after_it_counts(
    tracking: Tracking,
):
    sent = await tracking.send(user_id="bob")
    [pixel_url] = sent.links.images

    assert (await tracking.get(pixel_url, GMAIL_PROXY)).status_code == 200
    row = await tracking.delivery(sent.delivery_id)
    assert row.opened_at is not None and row.human_opened_at is None and row.opens == 1
    counts = await tracking.counts()
    assert (counts.get("opened"), counts.get("opened_human"), counts.get("opens")) == (1, None, 1)
    [machine_open] = await tracking.events("Email Opened")
    assert machine_open["properties"]["machine"] is True

    # Then Bob opens it himself: a person's open, on the same (already opened) message.
    assert (await tracking.get(pixel_url)).status_code == 200
    row = await tracking.delivery(sent.delivery_id)
    assert row.human_opened_at is not None and row.human_opened_at > row.opened_at
    counts = await tracking.counts()
    assert (counts.get("opened"), counts.get("opened_human"), counts.get("opens")) == (1, 1, 2)
    events = await tracking.events("Email Opened")
    assert [e["properties"]["machine"] for e in events] == [True, False]
    funnel = await tracking.funnel()
    assert (funnel["opened"], funnel["opened_human"], funnel["opens"]) == (1, 1, 2)


async def test_a_head_request_is_answered_and_counted_as_a_machine(tracking: Tracking):
    sent = await tracking.send()
    cart_url = sent.links.hrefs[0]
    [pixel_url] = sent.links.images

    click = await tracking.get(cart_url, method="HEAD")
    assert click.status_code == 302 and click.headers["location"] == CART
    pixel = await tracking.get(pixel_url, method="HEAD")
    assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"

    row = await tracking.delivery(sent.delivery_id)
    assert row.clicked_at is not None and row.human_clicked_at is None
    assert row.opened_at is not None and row.human_opened_at is None
    assert (row.opens, row.clicks) == (1, 1)


async def test_only_signed_links_redirect_and_forgeries_get_400(tracking: Tracking):
    sent = await tracking.send()
    base = tracking.api.url
    cart_url, sale_url, *_ = sent.links.hrefs
    [pixel_url] = sent.links.images
    token = cart_url.removeprefix(f"{base}/t/c/")

    # The payload changed to another URL, the signature kept.
    payload, _, signature = token.partition(".")
    document = json.loads(b64decode(payload)) | {"u": "https://evil.example/login"}
    forged_payload = b64encode(json.dumps(document, separators=(",", ":")).encode())
    unsubscribe_token = sent.mime["List-Unsubscribe"].strip("<>").rpartition("/u/")[2]
    attempts = {
        "forged URL": f"{base}/t/c/{forged_payload}.{signature}",
        "forged signature": f"{base}/t/c/{payload}.{signature[::-1]}",
        "random": f"{base}/t/c/not-a-token",
        "cut off": f"{base}/t/c/{payload}",
        "unsubscribe token": f"{base}/t/c/{unsubscribe_token}",
        "pixel token as a link": f"{base}/t/c/{pixel_url.rpartition('/')[2]}",
    }
    for what, url in attempts.items():
        response = await tracking.get(url)
        assert response.status_code == 400, what
        assert "location" not in response.headers, what
        assert "not valid" in response.text or "altered" in response.text, what
    for bad_pixel in (f"{base}/t/o/{token}", f"{base}/t/o/garbage"):
        response = await tracking.get(bad_pixel)
        assert response.status_code == 400
        assert "detail" in response.json()

    # Nothing was counted for any of them.
    row = await tracking.delivery(sent.delivery_id)
    assert (row.opens, row.clicks, row.clicked_at, row.opened_at) == (0, 0, None, None)
    assert await tracking.events("Email Link Clicked") == []

    # A real link still goes exactly where it went in the message.
    response = await tracking.get(sale_url)
    assert (response.status_code, response.headers["location"]) == (302, SALE)


async def test_a_link_of_a_delivery_that_is_gone_still_redirects_and_counts_nothing(
    tracking: Tracking,
):
    secret = tracking.api.settings.link_secret
    token = click_token(secret=secret, delivery_id=987654, link=0, url=SALE)
    response = await tracking.get(f"{tracking.api.url}/t/c/{token}")
    assert (response.status_code, response.headers["location"]) == (302, SALE)
    # One the database cannot even look up (past BIGINT): the person still gets there.
    token = click_token(secret=secret, delivery_id=2**70, link=0, url=SALE)
    response = await tracking.get(f"{tracking.api.url}/t/c/{token}")
    assert (response.status_code, response.headers["location"]) == (302, SALE)
    assert await tracking.counts() == {}
    assert await tracking.events("Email Link Clicked") == []


async def test_a_campaign_without_click_tracking_keeps_its_links(tracking: Tracking):
    sent = await tracking.send("no-clicks")
    links = sent.links
    assert links.hrefs == [CART, SALE, HELP, "mailto:help@shop.example"]
    # `&amp;` stays as it was written; only the pixel was added.
    assert 'href="https://shop.example/cart?item=umbrella&amp;utm_source=nudge"' in sent.html
    [pixel_url] = links.images
    assert (await tracking.get(pixel_url)).status_code == 200
    assert (await tracking.delivery(sent.delivery_id)).opens == 1


async def test_a_click_right_after_sending_is_a_link_scanner(database_url: str):
    # The scanner threshold set far above how long this test takes, so nothing waits.
    async with tracking_stack(database_url, machine_click_seconds=600) as stack:
        sent = await stack.send()
        response = await stack.get(sent.links.hrefs[0])
        assert (response.status_code, response.headers["location"]) == (302, CART)
        row = await stack.delivery(sent.delivery_id)
        assert row.clicked_at is not None and row.human_clicked_at is None
        counts = await stack.counts()
        assert (counts.get("clicked"), counts.get("clicked_human")) == (1, None)
        [event] = await stack.events("Email Link Clicked")
        assert event["properties"]["machine"] is True
