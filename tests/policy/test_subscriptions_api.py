"""Unsubscribe links, the SMS STOP webhook and the admin view, over real HTTP (uvicorn on
127.0.0.1), on SQLite and PostgreSQL. Temporal is not needed and not reachable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest

from api.routes.subscriptions import EMPTY_TWIML
from api.twilio import twilio_signature
from core.links import make_token
from store.profiles import merge_traits
from store.subscriptions import add_suppression, list_subscriptions, unsubscribed_from
from temporal.servers import free_port
from tests.fixtures.api import ADMIN, RunningApi, make_settings, running_api

LINK_SECRET = "test-link-secret"
TWILIO_TOKEN = "test-twilio-auth-token"


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[RunningApi]:
    settings = make_settings(
        database_url,
        f"127.0.0.1:{free_port()}",
        link_secret=LINK_SECRET,
        twilio_auth_token=TWILIO_TOKEN,
        public_url="https://nudge.example",
    )
    async with running_api(settings) as running:
        yield running


def link_token(user_id: str = "ada", group: str = "marketing", days: float = 60) -> str:
    return make_token(
        secret=LINK_SECRET,
        user_id=user_id,
        channel="email",
        group=group,
        expires_at=datetime.now(UTC) + timedelta(days=days),
    )


async def is_unsubscribed(api: RunningApi, user_id: str, channel: str, group: str) -> bool:
    async with api.services.sessions() as session:
        row = await unsubscribed_from(
            session=session, user_id=user_id, channel=channel, group=group
        )
    return row is not None


async def test_get_shows_a_confirmation_page_and_does_not_unsubscribe(api: RunningApi) -> None:
    token = link_token()
    for _ in range(2):  # a mail scanner fetching the link, then the user
        page = await api.http.get(f"/u/{token}")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert 'method="post"' in page.text and f'action="/u/{token}"' in page.text
        assert "marketing messages by email" in page.text
        assert "set-cookie" not in page.headers
        assert page.headers["cache-control"] == "no-store"
    assert not await is_unsubscribed(api, "ada", "email", "marketing")


async def test_one_click_post_unsubscribes_idempotently(api: RunningApi) -> None:
    token = link_token()
    # What a mailbox provider sends (RFC 8058): no cookies, no auth, this exact body.
    for _ in range(2):
        done = await api.http.post(
            f"/u/{token}",
            content="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert done.status_code == 200, done.text  # never a redirect
        assert "You are unsubscribed" in done.text
        assert "set-cookie" not in done.headers
    assert await is_unsubscribed(api, "ada", "email", "marketing")
    assert not await is_unsubscribed(api, "ada", "email", "product_news")
    async with api.services.sessions() as session:
        [row] = await list_subscriptions(session=session, user_id="ada")
    assert (row.status, row.source) == ("unsubscribed", "link")


async def test_the_pages_form_post_unsubscribes_too(api: RunningApi) -> None:
    token = link_token(user_id="bob", group="product_news")
    done = await api.http.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    assert await is_unsubscribed(api, "bob", "email", "product_news")


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_tampered_or_expired_links_are_refused(api: RunningApi, method: str) -> None:
    good = link_token(user_id="ada")
    payload, _, signature = good.partition(".")
    forged = link_token(user_id="mallory").partition(".")[0] + "." + signature
    expired = link_token(days=-1)
    other_secret = make_token(
        secret="not-ours",
        user_id="ada",
        channel="email",
        group="marketing",
        expires_at=datetime.now(UTC) + timedelta(days=1),
    )
    for token, says in (
        (forged, "not valid"),
        (other_secret, "not valid"),
        (expired, "expired"),
        (payload, "not valid"),
    ):
        page = await api.http.request(method, f"/u/{token}")
        assert page.status_code == 400, token
        assert says in page.text
    assert not await is_unsubscribed(api, "ada", "email", "marketing")
    assert not await is_unsubscribed(api, "mallory", "email", "marketing")


async def test_admin_reads_and_sets_subscriptions(api: RunningApi) -> None:
    url = "/v1/profiles/ada/subscriptions"
    assert (await api.http.get(url)).status_code == 401
    empty = await api.http.get(url, headers=ADMIN)
    assert empty.json() == {"user_id": "ada", "subscriptions": [], "suppressions": []}

    body = {
        "subscriptions": [
            {"channel": "email", "group": "marketing", "status": "unsubscribed"},
            {"channel": "sms", "group": "*", "status": "unsubscribed"},
        ]
    }
    put = await api.http.put(url, json=body, headers=ADMIN)
    assert put.status_code == 200, put.text
    got = {
        (s["channel"], s["group"], s["status"], s["source"]) for s in put.json()["subscriptions"]
    }
    assert got == {
        ("email", "marketing", "unsubscribed", "api"),
        ("sms", "*", "unsubscribed", "api"),
    }
    assert await is_unsubscribed(api, "ada", "sms", "anything")

    back = {"subscriptions": [{"channel": "email", "group": "marketing", "status": "subscribed"}]}
    assert (await api.http.put(url, json=back, headers=ADMIN)).status_code == 200
    assert not await is_unsubscribed(api, "ada", "email", "marketing")

    bad = {"subscriptions": [{"channel": "fax", "group": "Marketing!", "status": "maybe"}]}
    refused = await api.http.put(url, json=bad, headers=ADMIN)
    assert refused.status_code == 422
    fields = {tuple(e["loc"][-1:]) for e in refused.json()["detail"]}
    assert fields == {("channel",), ("group",), ("status",)}


async def test_admin_lifts_a_hard_bounce_once_the_address_is_fixed(api: RunningApi) -> None:
    async with api.services.sessions() as session, session.begin():
        await add_suppression(
            session=session, user_id="ada", channel="email", reason="hard bounce: 550"
        )
    url = "/v1/profiles/ada/suppressions/email"
    assert (await api.http.delete(url)).status_code == 401
    listed = (await api.http.get("/v1/profiles/ada/subscriptions", headers=ADMIN)).json()
    assert [s["channel"] for s in listed["suppressions"]] == ["email"]

    lifted = await api.http.delete(url, headers=ADMIN)
    assert lifted.status_code == 200, lifted.text
    assert lifted.json()["suppressions"] == []
    again = await api.http.delete(url, headers=ADMIN)
    assert again.status_code == 404
    assert again.json()["detail"] == "user 'ada' is not suppressed on email"
    unknown = await api.http.delete("/v1/profiles/ada/suppressions/fax", headers=ADMIN)
    assert unknown.status_code == 422


# -- SMS STOP through Twilio's webhook -------------------------------------------------------


def test_twilio_signature_matches_the_documented_example() -> None:
    # The worked example in Twilio's "Webhooks security" documentation.
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, params.items()) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


async def sms(
    api: RunningApi,
    body: str,
    sender: str = "+15550001",
    *,
    sign_url: str | None = None,
    token: str = TWILIO_TOKEN,
):
    params = {
        "MessageSid": "SM" + "0" * 32,
        "AccountSid": "AC" + "0" * 32,
        "From": sender,
        "To": "+15559999",
        "Body": body,
        "NumMedia": "0",
    }
    path = "/v1/webhooks/twilio/sms"
    url = sign_url or f"{api.url}{path}"
    return await api.http.post(
        path,
        content=urlencode(params),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(token, url, params.items()),
        },
    )


async def phones(api: RunningApi) -> None:
    async with api.services.sessions() as session, session.begin():
        await merge_traits(session=session, user_id="ada", traits={"phone": "+15550001"})
        await merge_traits(session=session, user_id="ada-2", traits={"phone": "+15550001"})
        await merge_traits(session=session, user_id="bob", traits={"phone": "+15550002"})


async def test_stop_unsubscribes_every_user_with_that_number_from_sms(api: RunningApi) -> None:
    await phones(api)
    answer = await sms(api, "  stop ")
    assert answer.status_code == 200, answer.text
    assert answer.text == EMPTY_TWIML
    assert answer.headers["content-type"].startswith("application/xml")
    for user in ("ada", "ada-2"):
        assert await is_unsubscribed(api, user, "sms", "marketing")
        assert await is_unsubscribed(api, user, "sms", "product_news")
        assert not await is_unsubscribed(api, user, "email", "marketing")
    assert not await is_unsubscribed(api, "bob", "sms", "marketing")

    # START opts back in; any other text changes nothing.
    assert (await sms(api, "Start")).status_code == 200
    assert not await is_unsubscribed(api, "ada", "sms", "marketing")
    assert (await sms(api, "stop please")).status_code == 200
    assert not await is_unsubscribed(api, "ada", "sms", "marketing")
    for word in ("STOPALL", "unsubscribe", "Cancel", "END", "quit"):
        assert (await sms(api, word)).status_code == 200
        assert await is_unsubscribed(api, "ada", "sms", "marketing"), word
        assert (await sms(api, "UNSTOP")).status_code == 200
        assert not await is_unsubscribed(api, "ada", "sms", "marketing")


async def test_stop_finds_a_number_however_it_was_written(api: RunningApi) -> None:
    """Profiles keep `phone` as E.164 where it can be; STOP's sender is normalised too."""
    identify = {"userId": "cy", "messageId": "cy-1", "traits": {"phone": "+44 7700 900123"}}
    assert (await api.post("/v1/identify", identify)).status_code == 200
    assert (await api.traits("cy")) == {"phone": "+447700900123"}
    async with api.services.sessions() as session, session.begin():
        await merge_traits(session=session, user_id="dee", traits={"phone": "0044-7700-900123"})
    assert (await sms(api, "STOP", sender="+447700900123")).status_code == 200
    for user in ("cy", "dee"):
        assert await is_unsubscribed(api, user, "sms", "marketing"), user
    # A provider that sends the number formatted reaches the same users.
    assert (await sms(api, "START", sender="+44 7700 900123")).status_code == 200
    assert not await is_unsubscribed(api, "cy", "sms", "marketing")


async def test_the_url_twilio_was_given_signs_too(api: RunningApi) -> None:
    # Behind a proxy Twilio signs the public URL, not the one the API sees.
    await phones(api)
    answer = await sms(api, "STOP", sign_url="https://nudge.example/v1/webhooks/twilio/sms")
    assert answer.status_code == 200
    assert await is_unsubscribed(api, "ada", "sms", "marketing")


async def test_a_bad_signature_is_refused_and_changes_nothing(api: RunningApi) -> None:
    await phones(api)
    wrong_token = await sms(api, "STOP", token="someone-elses-token")
    assert wrong_token.status_code == 403
    missing = await api.http.post(
        "/v1/webhooks/twilio/sms",
        content=urlencode({"From": "+15550001", "Body": "STOP"}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert missing.status_code == 403
    assert not await is_unsubscribed(api, "ada", "sms", "marketing")
