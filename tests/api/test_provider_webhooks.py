"""Provider status webhooks — SendGrid's signed Event Webhook and Twilio's status callbacks —
over real HTTP (uvicorn on 127.0.0.1), on SQLite and PostgreSQL: good and bad signatures,
what each report records, and a bounce suppressing the address for the next send.
Temporal is not needed and not reachable."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from activities.channels.base import OutgoingMessage
from activities.channels.sendgrid import SendGridProvider
from activities.channels.twilio import TwilioProvider
from activities.policy import check_send_policy
from api.routes.provider_webhooks import (
    MAX_SIGNATURE_AGE,
    SENDGRID_SIGNATURE,
    SENDGRID_TIMESTAMP,
    Report,
    sendgrid_kind,
    twilio_reports,
)
from api.twilio import twilio_signature
from core.definition import parse_campaign
from core.engagement import EngagementKind
from core.journey import DeliveryStatus, PolicyAction
from store import deliveries
from store.campaigns import save_campaign
from store.models import Delivery
from store.profiles import merge_traits
from store.stats import count_rows
from store.subscriptions import get_suppression, list_subscriptions, unsubscribed_from
from temporal.servers import free_port
from tests.fixtures.api import RunningApi, make_settings, running_api
from tests.fixtures.providers import ACCOUNT_SID, SENDER, TwilioResponder, keyless
from tests.fixtures.sends import deliver_request, policy_request

PUBLIC_URL = "https://nudge.example"
TWILIO_TOKEN = "test-twilio-auth-token"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
"""What SendGrid signs with; the API is given its public half, as the console shows it."""


def public_key_b64(private: ec.EllipticCurvePrivateKey) -> str:
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


CAMPAIGNS = {
    "promo": {"channel": "email", "subscription_group": "product_news"},
    "texts": {"channel": "sms"},
}


def campaign(campaign_id: str):
    spec = CAMPAIGNS[campaign_id]
    return parse_campaign(
        {
            "id": campaign_id,
            "name": campaign_id,
            "entry": {"event": "Signed Up"},
            "steps": [{"id": "send", "type": "send", "channel": spec["channel"], "template": "t"}],
            "templates": {"t": {"subject": "Hello", "body": "Hello {{ user_id }}"}},
            **{k: v for k, v in spec.items() if k != "channel"},
        }
    )


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[RunningApi]:
    settings = make_settings(
        database_url,
        f"127.0.0.1:{free_port()}",
        sendgrid_webhook_public_key=public_key_b64(SENDGRID_KEY),
        twilio_auth_token=TWILIO_TOKEN,
        public_url=PUBLIC_URL,
    )
    async with running_api(settings) as running:
        async with running.services.sessions() as session, session.begin():
            for campaign_id in CAMPAIGNS:
                await save_campaign(session=session, definition=campaign(campaign_id))
            await merge_traits(
                session=session,
                user_id="ada",
                traits={"email": "ada@example.com", "phone": "+4915112345678"},
            )
        yield running


@dataclass(frozen=True)
class Sent:
    id: int
    idempotency_key: str
    provider_message_id: str | None
    campaign_id: str


async def sent(
    api: RunningApi,
    campaign_id: str = "promo",
    *,
    provider_message_id: str | None = "auto",
    user_id: str = "ada",
) -> Sent:
    """A delivery the provider accepted, as `deliver` leaves it (`sent`, with its id)."""
    channel = CAMPAIGNS[campaign_id]["channel"]
    if provider_message_id == "auto":
        provider_message_id = (
            f"sg{uuid.uuid4().hex[:20]}" if channel == "email" else f"SM{uuid.uuid4().hex}"
        )
    request = deliver_request(
        campaign_id=campaign_id, step_id="send", channel=channel, template="t", user_id=user_id
    )
    async with api.services.sessions() as session, session.begin():
        row = await deliveries.claim_delivery(session=session, request=request)
        await deliveries.complete_delivery(
            session=session,
            delivery_id=row.id,
            status=DeliveryStatus.sent,
            provider_message_id=provider_message_id,
        )
    return Sent(row.id, request.idempotency_key, provider_message_id, campaign_id)


def sg_event(delivery: Sent, event: str, **fields: Any) -> dict[str, Any]:
    """One event as SendGrid posts it, our custom args at the top level."""
    body: dict[str, Any] = {
        "email": "ada@example.com",
        "timestamp": int(time.time()),
        "event": event,
        "sg_event_id": uuid.uuid4().hex,
        "sg_message_id": f"{delivery.provider_message_id}.filter0001.16648.5515E0B88.0",
        "delivery_id": str(delivery.id),
        "idempotency_key": delivery.idempotency_key,
        **fields,
    }
    return {k: v for k, v in body.items() if v is not None}


def sign(body: bytes, timestamp: str, key: ec.EllipticCurvePrivateKey = SENDGRID_KEY) -> str:
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode()


async def post_sendgrid(
    api: RunningApi,
    events: Any,
    *,
    key: ec.EllipticCurvePrivateKey = SENDGRID_KEY,
    timestamp: str | None = None,
    signed_body: bytes | None = None,
    drop: tuple[str, ...] = (),
) -> httpx.Response:
    body = events if isinstance(events, bytes) else json.dumps(events).encode()
    stamp = timestamp or str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        SENDGRID_TIMESTAMP: stamp,
        SENDGRID_SIGNATURE: sign(signed_body if signed_body is not None else body, stamp, key),
    }
    for name in drop:
        headers.pop(name)
    return await api.http.post("/v1/webhooks/sendgrid", content=body, headers=headers)


async def row_of(api: RunningApi, delivery: Sent) -> Delivery:
    async with api.services.sessions() as session:
        row = await session.get(Delivery, delivery.id, populate_existing=True)
    assert row is not None
    return row


async def metrics(api: RunningApi, campaign_id: str = "promo") -> dict[str, int]:
    async with api.services.sessions() as session:
        rows = await count_rows(session, campaign_id=campaign_id)
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        totals[row.metric] += row.count
    return dict(totals)


async def named(api: RunningApi, name: str) -> list[dict[str, Any]]:
    return [event.payload for event in await api.events() if event.name == name]


async def suppressed(api: RunningApi, channel: str, user_id: str = "ada") -> str | None:
    async with api.services.sessions() as session:
        row = await get_suppression(session=session, user_id=user_id, channel=channel)
    return None if row is None else row.reason


async def next_send(api: RunningApi, campaign_id: str):
    """The send policy's answer for the user's next message of the campaign."""
    channel = CAMPAIGNS[campaign_id]["channel"]
    request = deliver_request(
        campaign_id=campaign_id, step_id="send", channel=channel, template="t"
    )
    return await check_send_policy(
        sessions=api.services.sessions,
        settings=api.settings,
        request=policy_request(request),
        now=datetime.now(UTC),
    )


# -- SendGrid ---------------------------------------------------------------------------------


async def test_a_signed_delivered_event_is_recorded_once(api: RunningApi) -> None:
    delivery = await sent(api)
    batch = [sg_event(delivery, "processed"), sg_event(delivery, "delivered", response="250 OK")]
    for _ in range(2):  # SendGrid retries a batch it thinks we missed: nothing counts twice
        answer = await post_sendgrid(api, batch)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "received": 2,
            "recorded": 1,
            "ignored": 1,
            "unknown": 0,
            "invalid": 0,
        }
    row = await row_of(api, delivery)
    assert row.delivered_at is not None
    assert int(row.delivered_at.timestamp()) == batch[1]["timestamp"]  # SendGrid's time
    assert (await metrics(api)).get("delivered") == 1
    [event] = await named(api, "Email Delivered")
    assert event["userId"] == "ada"
    assert event["messageId"] == f"nudge:delivered:{delivery.id}"
    assert event["properties"]["delivery_id"] == delivery.id
    assert event["properties"]["campaign_id"] == "promo"
    assert event["properties"]["source"] == "sendgrid"
    assert event["properties"]["provider_event_id"] == batch[1]["sg_event_id"]


async def test_bad_signatures_are_refused_and_record_nothing(api: RunningApi) -> None:
    delivery = await sent(api)
    batch = [sg_event(delivery, "delivered"), sg_event(delivery, "bounce", type="bounce")]
    body = json.dumps(batch).encode()
    tampered = body.replace(b'"bounce"', b'"spamreport"', 1)
    stale = str(int(time.time() - MAX_SIGNATURE_AGE.total_seconds() - 60))
    someone_else = ec.generate_private_key(ec.SECP256R1())
    refusals = {
        "tampered body": await post_sendgrid(api, tampered, signed_body=body),
        "missing signature": await post_sendgrid(api, batch, drop=(SENDGRID_SIGNATURE,)),
        "missing timestamp": await post_sendgrid(api, batch, drop=(SENDGRID_TIMESTAMP,)),
        "wrong key": await post_sendgrid(api, batch, key=someone_else),
        "stale timestamp": await post_sendgrid(api, batch, timestamp=stale),
        "not a timestamp": await post_sendgrid(api, batch, timestamp="yesterday"),
    }
    for case, answer in refusals.items():
        assert answer.status_code == 403, (case, answer.text)
    assert "does not match" in refusals["tampered body"].json()["detail"]
    assert SENDGRID_SIGNATURE in refusals["missing signature"].json()["detail"]
    assert "replays" in refusals["stale timestamp"].json()["detail"]

    row = await row_of(api, delivery)
    assert (row.delivered_at, row.bounced_at, row.complained_at) == (None, None, None)
    assert set(await metrics(api)) <= {"sent"}  # counted by `deliver`, not by a webhook
    assert [e for e in await api.events() if e.name.startswith("Email")] == []
    assert await suppressed(api, "email") is None


async def test_a_bounce_suppresses_the_address_for_the_next_send(api: RunningApi) -> None:
    assert (await next_send(api, "promo")).action is PolicyAction.allow
    delivery = await sent(api)
    bounce = sg_event(
        delivery,
        "bounce",
        type="bounce",
        reason="550 5.1.1 The email account that you tried to reach does not exist",
        status="5.1.1",
        bounce_classification="Invalid Address",
    )
    answer = await post_sendgrid(api, [bounce])
    assert answer.status_code == 200, answer.text
    assert answer.json()["recorded"] == 1

    [event] = await named(api, "Email Bounced")
    assert event["properties"]["reason"].startswith("550 5.1.1")
    assert event["properties"]["bounce_classification"] == "Invalid Address"
    assert (await row_of(api, delivery)).bounced_at is not None
    assert (await metrics(api)).get("bounced") == 1
    reason = await suppressed(api, "email")
    assert reason is not None and str(delivery.id) in reason

    decision = await next_send(api, "promo")
    assert decision.action is PolicyAction.suppress
    assert decision.reason is not None and decision.reason.startswith("suppressed on email")
    # The address is what bounced: the user's phone still gets SMS.
    assert await suppressed(api, "sms") is None
    assert (await next_send(api, "texts")).action is PolicyAction.allow


async def test_a_spam_report_suppresses_and_a_blocked_bounce_does_not(api: RunningApi) -> None:
    blocked = await sent(api)
    answer = await post_sendgrid(
        api, [sg_event(blocked, "bounce", type="blocked", reason="421 try later")]
    )
    assert answer.status_code == 200 and answer.json()["recorded"] == 1
    assert len(await named(api, "Email Dropped")) == 1
    assert await named(api, "Email Bounced") == []
    assert await suppressed(api, "email") is None
    assert (await next_send(api, "promo")).action is PolicyAction.allow

    reported = await sent(api)
    answer = await post_sendgrid(api, [sg_event(reported, "spamreport")])
    assert answer.status_code == 200 and answer.json()["recorded"] == 1
    [event] = await named(api, "Email Marked as Spam")
    assert event["properties"]["delivery_id"] == reported.id
    assert (await row_of(api, reported)).complained_at is not None
    assert await suppressed(api, "email") is not None
    assert (await next_send(api, "promo")).action is PolicyAction.suppress
    counted = await metrics(api)
    assert (counted.get("dropped"), counted.get("spam")) == (1, 1)


async def test_unsubscribes_leave_the_campaigns_group_or_every_group(api: RunningApi) -> None:
    async def unsubscribed(group: str) -> bool:
        async with api.services.sessions() as session:
            row = await unsubscribed_from(
                session=session, user_id="ada", channel="email", group=group
            )
        return row is not None

    delivery = await sent(api)
    # SendGrid's group id means nothing to Nudge: the campaign's own group is left.
    answer = await post_sendgrid(api, [sg_event(delivery, "group_unsubscribe", asm_group_id=7)])
    assert answer.status_code == 200 and answer.json()["recorded"] == 1
    assert await unsubscribed("product_news")
    assert not await unsubscribed("marketing")
    assert len(await named(api, "Unsubscribed")) == 1

    # A global unsubscribe (SendGrid drops all mail to the address from now on) leaves all.
    answer = await post_sendgrid(api, [sg_event(await sent(api), "unsubscribe")])
    assert answer.status_code == 200 and answer.json()["recorded"] == 1
    assert await unsubscribed("marketing")
    async with api.services.sessions() as session:
        groups = {
            r.subscription_group for r in await list_subscriptions(session=session, user_id="ada")
        }
    assert groups == {"product_news", "*"}
    assert await suppressed(api, "email") is None  # a choice, not a dead address


async def test_events_find_their_delivery_or_are_counted_and_skipped(api: RunningApi) -> None:
    by_args = await sent(api)
    by_message_id = await sent(api)
    pending = await sent(api, provider_message_id=None)  # the webhook beat `deliver`
    staging = await sent(api)  # another Nudge on the same SendGrid account numbers too
    no_timestamp = sg_event(by_args, "open")
    del no_timestamp["timestamp"]
    batch = [
        sg_event(by_args, "delivered"),
        sg_event(by_message_id, "delivered", delivery_id=None, idempotency_key=None),
        sg_event(pending, "delivered", sg_message_id="sgpending.filter0001.1"),
        sg_event(staging, "delivered", idempotency_key="journey/elsewhere:1", sg_message_id=None),
        sg_event(by_args, "delivered", delivery_id="DROP TABLE", sg_message_id="nope.f.1"),
        sg_event(by_args, "deferred", response="400 try again later", attempt="1"),
        sg_event(by_args, "group_resubscribe"),
        {"event": "delivered", "timestamp": int(time.time())},  # no ids at all
        no_timestamp,
    ]
    answer = await post_sendgrid(api, batch)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": 9, "recorded": 3, "ignored": 2, "unknown": 3, "invalid": 1}
    for recorded in (by_args, by_message_id, pending):
        assert (await row_of(api, recorded)).delivered_at is not None
    assert (await row_of(api, staging)).delivered_at is None
    assert (await metrics(api)).get("delivered") == 3


async def test_sendgrids_own_opens_and_clicks_are_recorded(api: RunningApi) -> None:
    delivery = await sent(api)
    person = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Safari/605.1"
    opened = int(time.time()) + 60
    batch = [  # Apple's privacy proxy opens first (SendGrid flags it), then the person
        sg_event(delivery, "open", useragent=person, timestamp=opened + 1, sg_machine_open=False),
        sg_event(delivery, "open", useragent=person, timestamp=opened, sg_machine_open=True),
        sg_event(delivery, "click", useragent=person, timestamp=opened + 5, url="https://x.io/a"),
    ]
    answer = await post_sendgrid(api, batch)
    assert answer.status_code == 200 and answer.json()["recorded"] == 3
    row = await row_of(api, delivery)
    assert (row.opens, row.clicks) == (2, 1)
    assert row.human_opened_at is not None and row.human_clicked_at is not None
    opens = await named(api, "Email Opened")
    assert sorted(e["properties"]["machine"] for e in opens) == [False, True]
    [click] = await named(api, "Email Link Clicked")
    assert click["properties"]["link_url"] == "https://x.io/a"
    assert click["properties"]["source"] == "sendgrid"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not JSON"),
        (b'{"event": "delivered"}', "JSON array of SendGrid events, not an object"),
        (b'[{"event": "delivered"}, "delivered"]', "event 1 of the array is a string"),
    ],
)
async def test_a_body_that_is_not_an_array_of_events_is_refused(
    api: RunningApi, body: bytes, says: str
) -> None:
    answer = await post_sendgrid(api, body)  # well signed: the signature is not the problem
    assert answer.status_code == 400
    assert says in answer.json()["detail"]


# -- Twilio -----------------------------------------------------------------------------------


async def post_status(
    api: RunningApi,
    form: dict[str, str],
    *,
    delivery_id: int | None,
    token: str = TWILIO_TOKEN,
) -> httpx.Response:
    path = "/v1/webhooks/twilio/status"
    if delivery_id is not None:
        path += f"?delivery_id={delivery_id}"
    params = {"AccountSid": ACCOUNT_SID, "ApiVersion": "2010-04-01", **form}
    return await api.http.post(
        path,
        content=urlencode(params),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            # Twilio signs the URL it was given: the public one.
            "X-Twilio-Signature": twilio_signature(token, f"{PUBLIC_URL}{path}", params.items()),
        },
    )


def status_form(delivery: Sent, status: str, error_code: str | None = None) -> dict[str, str]:
    form = {"MessageSid": delivery.provider_message_id or "", "MessageStatus": status}
    if error_code:
        form["ErrorCode"] = error_code
    return form


async def test_twilio_delivered_is_recorded_once(api: RunningApi) -> None:
    delivery = await sent(api, "texts")
    for status in ("queued", "sent"):
        answer = await post_status(api, status_form(delivery, status), delivery_id=delivery.id)
        assert answer.json() == {**ZERO, "received": 1, "ignored": 1}
    for _ in range(2):
        answer = await post_status(api, status_form(delivery, "delivered"), delivery_id=delivery.id)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {**ZERO, "received": 1, "recorded": 1}
    [event] = await named(api, "SMS Delivered")
    assert event["properties"]["source"] == "twilio"
    assert (await row_of(api, delivery)).delivered_at is not None
    assert (await metrics(api, "texts")).get("delivered") == 1


ZERO = {"received": 0, "recorded": 0, "ignored": 0, "unknown": 0, "invalid": 0}


async def test_twilio_unknown_number_bounces_and_suppresses_it(api: RunningApi) -> None:
    delivery = await sent(api, "texts")
    answer = await post_status(
        api, status_form(delivery, "undelivered", "30005"), delivery_id=delivery.id
    )
    assert answer.status_code == 200 and answer.json()["recorded"] == 1
    [event] = await named(api, "SMS Bounced")
    assert event["properties"]["error_code"] == "30005"
    assert await suppressed(api, "sms") is not None
    assert (await next_send(api, "texts")).action is PolicyAction.suppress
    assert (await next_send(api, "promo")).action is PolicyAction.allow


async def test_twilio_passing_failures_drop_without_suppressing(api: RunningApi) -> None:
    delivery = await sent(api, "texts")
    answer = await post_status(
        api, status_form(delivery, "undelivered", "30003"), delivery_id=delivery.id
    )
    assert answer.status_code == 200 and answer.json()["recorded"] == 1
    assert len(await named(api, "SMS Dropped")) == 1
    assert await suppressed(api, "sms") is None
    assert (await next_send(api, "texts")).action is PolicyAction.allow


async def test_twilio_opted_out_recipient_is_unsubscribed_from_sms(api: RunningApi) -> None:
    delivery = await sent(api, "texts")
    answer = await post_status(
        api, status_form(delivery, "failed", "21610"), delivery_id=delivery.id
    )
    assert answer.status_code == 200 and answer.json()["recorded"] == 1
    async with api.services.sessions() as session:
        row = await unsubscribed_from(session=session, user_id="ada", channel="sms", group="any")
    assert row is not None
    assert await suppressed(api, "sms") is None  # START lifts an opt-out; nothing to lift here


async def test_twilio_finds_the_delivery_by_sid_and_checks_the_one_named(api: RunningApi) -> None:
    one = await sent(api, "texts")
    other = await sent(api, "texts")
    pending = await sent(api, "texts", provider_message_id=None)
    # No delivery_id (a callback configured by hand): the SID finds it.
    answer = await post_status(api, status_form(one, "delivered"), delivery_id=None)
    assert answer.json()["recorded"] == 1
    # The URL names `pending`, whose SID is not recorded yet: the URL is signed, it counts.
    form = {"MessageSid": "SM" + "f" * 32, "MessageStatus": "delivered"}
    assert (await post_status(api, form, delivery_id=pending.id)).json()["recorded"] == 1
    # The URL names `other` but the SID is another message's, of no delivery of ours.
    form = {"MessageSid": "SM" + "e" * 32, "MessageStatus": "delivered"}
    assert (await post_status(api, form, delivery_id=other.id)).json()["unknown"] == 1
    # An email delivery is never what Twilio reports on.
    email = await sent(api)
    form = {"MessageSid": "SM" + "d" * 32, "MessageStatus": "delivered"}
    assert (await post_status(api, form, delivery_id=email.id)).json()["unknown"] == 1
    assert (await row_of(api, one)).delivered_at is not None
    assert (await row_of(api, pending)).delivered_at is not None
    assert (await row_of(api, other)).delivered_at is None
    assert (await row_of(api, email)).delivered_at is None


async def test_twilio_bad_signature_is_refused_and_records_nothing(api: RunningApi) -> None:
    delivery = await sent(api, "texts")
    form = status_form(delivery, "undelivered", "30005")
    wrong = await post_status(api, form, delivery_id=delivery.id, token="someone-elses")
    assert wrong.status_code == 403
    # The delivery id is in the signed URL: another id with the same signature is refused.
    good = await api.http.post(
        f"/v1/webhooks/twilio/status?delivery_id={delivery.id + 1}",
        content=urlencode(form),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(
                TWILIO_TOKEN,
                f"{PUBLIC_URL}/v1/webhooks/twilio/status?delivery_id={delivery.id}",
                form.items(),
            ),
        },
    )
    assert good.status_code == 403
    unsigned = await api.http.post(
        f"/v1/webhooks/twilio/status?delivery_id={delivery.id}",
        content=urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert unsigned.status_code == 403
    assert (await row_of(api, delivery)).bounced_at is None
    assert await suppressed(api, "sms") is None


# -- without a key or token -------------------------------------------------------------------

PRODUCTION_SECRETS = {
    "webhook_secret": "whsec_" + base64.b64encode(b"prod-webhook-secret").decode(),
    "link_secret": "prod-link-secret",
    "payload_keys": "k1:" + base64.b64encode(b"p" * 32).decode(),
}


@pytest.mark.parametrize("environment", ["production", "dev"])
async def test_without_key_or_token_production_refuses_and_dev_takes_unsigned(
    sqlite_url: str, environment: str
) -> None:
    secrets = PRODUCTION_SECRETS if environment == "production" else {}
    settings = make_settings(
        sqlite_url,
        f"127.0.0.1:{free_port()}",
        environment=environment,
        public_url=PUBLIC_URL,
        **secrets,
    )
    async with running_api(settings) as api:
        sendgrid = await api.http.post("/v1/webhooks/sendgrid", json=[])
        twilio = await api.http.post(
            "/v1/webhooks/twilio/status?delivery_id=1",
            data={"MessageSid": "SM1", "MessageStatus": "delivered"},
        )
    if environment == "production":
        assert sendgrid.status_code == 403
        assert "NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY" in sendgrid.json()["detail"]
        assert twilio.status_code == 403
        assert "NUDGE_TWILIO_AUTH_TOKEN" in twilio.json()["detail"]
    else:
        assert sendgrid.status_code == 200 and sendgrid.json() == ZERO
        assert twilio.status_code == 200 and twilio.json()["unknown"] == 1


async def test_a_key_that_is_not_a_key_is_the_operators_error(sqlite_url: str) -> None:
    settings = make_settings(
        sqlite_url, f"127.0.0.1:{free_port()}", sendgrid_webhook_public_key="bm90IGEga2V5"
    )
    async with running_api(settings) as api:
        answer = await api.http.post("/v1/webhooks/sendgrid", json=[])
    assert answer.status_code == 500
    assert "NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY is not a public key" in answer.json()["detail"]


# -- the providers --------------------------------------------------------------------------


def message(delivery_id: int) -> OutgoingMessage:
    return OutgoingMessage(
        idempotency_key=f"key-{delivery_id}",
        delivery_id=delivery_id,
        user_id="ada",
        campaign_id="texts",
        campaign_version=1,
        step_id="send",
        channel="sms",
        subject=None,
        body="Hello",
        traits={"phone": "+4915112345678"},
    )


async def test_twilio_is_asked_to_report_to_the_status_webhook(api: RunningApi) -> None:
    """The provider's StatusCallback, posted back as Twilio would sign it, is recorded."""
    delivery = await sent(api, "texts", provider_message_id=None)
    double = keyless(TwilioResponder()).start()
    try:
        settings = api.settings.model_copy(
            update={
                "twilio_url": double.base_url,
                "twilio_account_sid": ACCOUNT_SID,
                "sms_from": SENDER,
            }
        )
        async with httpx.AsyncClient(timeout=5) as http:
            configured = TwilioProvider.from_settings(settings, http)
            await configured.send(message(delivery.id))
            unconfigured = TwilioProvider(
                http,
                base_url=double.base_url,
                account_sid=ACCOUNT_SID,
                auth_token=TWILIO_TOKEN,
                sender=SENDER,
            )
            await unconfigured.send(message(delivery.id))
            # Delivery is left to the callback only when one is asked for; likewise
            # SendGrid's to its Event Webhook, only when its key is set.
            assert configured.reports_delivery and not unconfigured.reports_delivery
            sendgrid = {
                "sendgrid_api_key": "k",
                "sendgrid_url": double.base_url,
                "sendgrid_webhook_public_key": None,
            }
            assert not SendGridProvider.from_settings(
                settings.model_copy(update=sendgrid), http
            ).reports_delivery
            keyed = {**sendgrid, "sendgrid_webhook_public_key": "a-key"}
            assert SendGridProvider.from_settings(
                settings.model_copy(update=keyed), http
            ).reports_delivery
    finally:
        double.close()
    first, second = (parse_qs(r.body.decode()) for r in double.received)
    [callback] = first["StatusCallback"]
    assert callback == f"{PUBLIC_URL}/v1/webhooks/twilio/status?delivery_id={delivery.id}"
    assert "StatusCallback" not in second  # no public URL given: no callback asked for

    url = urlsplit(callback)
    params = {"MessageSid": double.respond.sids[0], "MessageStatus": "delivered"}
    answer = await api.http.post(
        f"{url.path}?{url.query}",
        content=urlencode(params),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, callback, params.items()),
        },
    )
    assert answer.status_code == 200 and answer.json()["recorded"] == 1
    assert (await row_of(api, delivery)).delivered_at is not None


# -- the mappings, as plain values ----------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ({"event": "delivered"}, EngagementKind.delivered),
        ({"event": "bounce", "type": "bounce"}, EngagementKind.bounced),
        ({"event": "bounce"}, EngagementKind.bounced),  # older events carry no type
        ({"event": "bounce", "type": "blocked"}, EngagementKind.dropped),
        ({"event": "dropped", "reason": "Bounced Address"}, EngagementKind.dropped),
        ({"event": "spamreport"}, EngagementKind.spam),
        ({"event": "unsubscribe"}, EngagementKind.unsubscribed),
        ({"event": "group_unsubscribe"}, EngagementKind.unsubscribed),
        ({"event": "open"}, EngagementKind.opened),
        ({"event": "click"}, EngagementKind.clicked),
        ({"event": "processed"}, None),
        ({"event": "deferred"}, None),
        ({"event": "group_resubscribe"}, None),
        ({"event": 7}, None),
    ],
)
def test_sendgrid_events_mean(event: dict[str, Any], kind: EngagementKind | None) -> None:
    assert sendgrid_kind(event) is kind


def test_twilio_statuses_mean() -> None:
    def kinds(status: str, code: str = "") -> list[EngagementKind]:
        return [report.kind for report in twilio_reports(status, code)]

    assert kinds("delivered") == [EngagementKind.delivered]
    assert kinds("read") == [EngagementKind.opened]
    for passing in ("queued", "sending", "sent", "accepted", "scheduled", "canceled"):
        assert kinds(passing) == []
    for permanent in ("30005", "30006", "21211", "21614", "21635"):
        assert kinds("undelivered", permanent) == [EngagementKind.bounced]
        assert kinds("failed", permanent) == [EngagementKind.bounced]
    for passing_failure in ("30003", "30004", "30007", "30008", ""):
        assert kinds("undelivered", passing_failure) == [EngagementKind.dropped]
    opted_out = twilio_reports("failed", "21610")
    assert opted_out == [
        Report(EngagementKind.dropped, properties=opted_out[0].properties),
        Report(EngagementKind.unsubscribed, properties=opted_out[0].properties),
    ]
