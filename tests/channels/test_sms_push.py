"""The `sms` (Twilio) and `push` (FCM HTTP v1) channels against real HTTP doubles, through
the real `deliver` activity on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.channels.base import OutgoingMessage, ProviderError
from activities.channels.fcm import FcmProvider, data_strings, fingerprint
from activities.channels.registry import build_providers
from activities.channels.twilio import TwilioProvider, count_segments
from activities.journey import JourneyActivities
from core.config import Settings
from core.definition import parse_campaign
from core.journey import DeliverRequest, DeliveryStatus
from store import deliveries
from store.campaigns import save_campaign
from store.profiles import get_profile, merge_traits, remove_push_token
from tests.fixtures.providers import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FCM_PROJECT,
    FCM_TOKEN,
    INVALID,
    SENDER,
    FcmResponder,
    TwilioResponder,
    keyless,
    taken,
)
from tests.fixtures.sends import deliver_request, entry_event
from tests.fixtures.servers import Fault, ProviderDouble

DEFINITION = parse_campaign(
    {
        "id": "cart",
        "name": "Cart abandonment",
        "entry": {"event": "Product Added"},
        "steps": [
            {"id": "text", "type": "send", "channel": "sms", "template": "sms", "next": "notify"},
            {"id": "notify", "type": "send", "channel": "push", "template": "push"},
        ],
        "templates": {
            "sms": {"body": "Hi {{ traits.first_name }}, your {{ event.properties.name }} waits"},
            "push": {
                "subject": "Still thinking, {{ traits.first_name }}?",
                "body": "Your {{ event.properties.name }} waits",
                "data": {"sku": "{{ event.properties.sku }}", "qty": 2, "flags": {"vip": True}},
            },
        },
    }
)


@pytest.fixture
def doubles() -> Iterator[tuple[ProviderDouble, ProviderDouble]]:
    """Twilio's and FCM's doubles, closed side by side (each close waits out a poll). Neither
    provider takes an idempotency key: each counts every message it accepts."""
    pair = (keyless(TwilioResponder()).start(), keyless(FcmResponder()).start())
    try:
        yield pair
    finally:
        closing = [threading.Thread(target=double.close) for double in pair]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join()


@pytest.fixture
def twilio(doubles) -> ProviderDouble:
    return doubles[0]


@pytest.fixture
def fcm(doubles) -> ProviderDouble:
    return doubles[1]


def settings_for(twilio: ProviderDouble, fcm: ProviderDouble, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "sms_provider": "twilio",
        "sms_from": SENDER,
        "twilio_url": twilio.base_url,
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "public_url": "https://nudge.example",
        "push_provider": "fcm",
        "fcm_url": fcm.base_url,
        "fcm_project_id": FCM_PROJECT,
        "fcm_access_token": FCM_TOKEN,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def activities(sessions, twilio, fcm) -> AsyncIterator[JourneyActivities]:
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=DEFINITION)
        await merge_traits(
            session=session,
            user_id="ada",
            traits={"first_name": "Ada", "phone": "+4915112345678", "push_tokens": ["tok-a"]},
        )
    async with httpx.AsyncClient(timeout=5) as http:
        channels = build_providers(settings_for(twilio, fcm), http=http, sessions=sessions)
        yield JourneyActivities(sessions=sessions, providers=channels)


def request(step_id: str, channel: str, template: str, user_id: str = "ada") -> DeliverRequest:
    entry = entry_event("Product Added", {"name": "Umbrella", "sku": "U-1"})
    return deliver_request(
        campaign_id="cart",
        step_id=step_id,
        channel=channel,
        template=template,
        user_id=user_id,
        entry=entry,
    )


def sms(user_id: str = "ada") -> DeliverRequest:
    return request("text", "sms", "sms", user_id)


def push(user_id: str = "ada") -> DeliverRequest:
    return request("notify", "push", "push", user_id)


async def set_traits(sessions, user_id: str, traits: dict[str, Any]) -> None:
    async with sessions() as session, session.begin():
        await merge_traits(session=session, user_id=user_id, traits=traits)


async def traits_of(sessions, user_id: str) -> dict[str, Any]:
    async with sessions() as session:
        profile = await get_profile(session=session, user_id=user_id)
    assert profile is not None
    return dict(profile.traits)


async def delivery_row(sessions, req: DeliverRequest):
    async with sessions() as session:
        row = await deliveries.get_delivery(session=session, idempotency_key=req.idempotency_key)
    assert row is not None
    return row


# -- SMS: Twilio's Messages API ----------------------------------------------------------


async def test_sms_is_a_form_post_with_basic_auth_and_a_receipt(activities, twilio, sessions):
    req = sms()
    result = await ActivityEnvironment().run(activities.deliver, req)

    assert result.status is DeliveryStatus.sent
    [hit] = twilio.received
    assert hit.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert hit.headers["content-type"] == "application/x-www-form-urlencoded"
    basic = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert hit.headers["authorization"] == f"Basic {basic}"
    assert hit.headers["idempotency-key"] == req.idempotency_key
    assert parse_qs(hit.body.decode()) == {
        "To": ["+4915112345678"],
        "From": [SENDER],
        "Body": ["Hi Ada, your Umbrella waits"],
        # Twilio reports delivery to Nudge's status webhook, at the public URL.
        "StatusCallback": [
            f"https://nudge.example/v1/webhooks/twilio/status?delivery_id={result.delivery_id}"
        ],
    }
    assert result.provider_message_id == twilio.respond.sids[0]
    row = await delivery_row(sessions, req)
    assert row.provider_response == {
        "http_status": 201,
        "status": "queued",
        "segments": 1,
        "encoding": "GSM-7",
    }


async def test_sms_429_honours_retry_after(activities, twilio):
    body = json.dumps({"code": 20429, "message": "Too Many Requests", "status": 429})
    twilio.faults.append(Fault(429, headers={"Retry-After": "7"}, body=body))
    with pytest.raises(ApplicationError, match="20429") as err:
        await ActivityEnvironment().run(activities.deliver, sms())
    assert not err.value.non_retryable
    assert err.value.next_retry_delay == timedelta(seconds=7)


async def test_sms_invalid_number_is_final_with_twilios_code(activities, twilio):
    body = json.dumps(
        {
            "code": 21211,
            "message": "The 'To' number +4915112345678 is not a valid phone number.",
            "more_info": "https://www.twilio.com/docs/errors/21211",
            "status": 400,
        }
    )
    twilio.faults.append(Fault(400, body=body, headers={"content-type": "application/json"}))
    env = ActivityEnvironment()
    req = sms()
    result = await env.run(activities.deliver, req)
    again = await env.run(activities.deliver, req)

    assert result.status is DeliveryStatus.failed
    assert "Twilio error 21211" in (result.reason or "")
    assert "is not a valid phone number" in (result.reason or "")
    assert again.status is DeliveryStatus.failed and again.duplicate
    assert len(twilio.received) == 1


async def test_sms_accepted_then_answer_lost_is_sent_again_with_the_same_key(
    activities, twilio, sessions
):
    """Twilio took the SMS, its answer never arrived: the retry sends it again with the
    same key, and Twilio, which takes no idempotency key, sends a second SMS (the README's
    window). The delivery is recorded once, with the SID of the second."""
    twilio.faults.append(Fault(drop=True, after_processing=True))
    env = ActivityEnvironment()
    req = sms()
    with pytest.raises(ApplicationError, match="unreachable") as err:
        await env.run(activities.deliver, req)
    assert not err.value.non_retryable
    result = await env.run(activities.deliver, req)

    assert result.status is DeliveryStatus.sent
    assert len(twilio.received) == 2
    assert {r.headers["idempotency-key"] for r in twilio.received} == {req.idempotency_key}
    assert len(taken(twilio)) == 2  # two SMS reached the phone
    assert result.provider_message_id == twilio.respond.sids[1]
    row = await delivery_row(sessions, req)
    assert (row.status, row.attempts, row.provider_message_id) == (
        "sent",
        2,
        twilio.respond.sids[1],
    )


async def test_sms_without_phone_fails_naming_the_trait(activities, twilio, sessions):
    await set_traits(sessions, "bob", {"first_name": "Bob"})
    result = await ActivityEnvironment().run(activities.deliver, sms("bob"))
    assert result.status is DeliveryStatus.failed
    assert "'phone'" in (result.reason or "")
    assert twilio.received == []


def message(**overrides: Any) -> OutgoingMessage:
    values: dict[str, Any] = {
        "idempotency_key": f"nudge_{uuid.uuid4().hex}",
        "delivery_id": 1,
        "user_id": "ada",
        "campaign_id": "cart",
        "campaign_version": 1,
        "step_id": "text",
        "channel": "sms",
        "subject": None,
        "body": "hello",
        "traits": {"phone": "+4915112345678"},
        **overrides,
    }
    return OutgoingMessage(**values)


async def test_sms_provider_hanging_past_the_timeout_is_retryable(twilio):
    twilio.faults.append(Fault(hang=1.5))
    async with httpx.AsyncClient(timeout=0.3) as http:
        channel = TwilioProvider(
            http, base_url=twilio.base_url, account_sid=ACCOUNT_SID, auth_token="t", sender=SENDER
        )
        with pytest.raises(ProviderError, match="timed out") as err:
            await channel.send(message())
    assert err.value.retryable


async def test_sms_messaging_service_sid_is_sent_as_such(twilio):
    async with httpx.AsyncClient(timeout=5) as http:
        channel = TwilioProvider(
            http, base_url=twilio.base_url, account_sid=ACCOUNT_SID, auth_token="t", sender="MG1"
        )
        await channel.send(message())
    form = parse_qs(twilio.received[0].body.decode())
    assert form["MessagingServiceSid"] == ["MG1"] and "From" not in form


@pytest.mark.parametrize(
    ("body", "encoding", "segments"),
    [
        ("", "GSM-7", 0),
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # extension characters take two septets
        ("€" * 81, "GSM-7", 2),
        ("a" * 152 + "€" * 77, "GSM-7", 3),  # 306 septets, but no part splits an escape
        ("Grüße, Ñandù! @£$¥ {[~]}", "GSM-7", 1),
        ("Ñandú", "UCS-2", 1),  # ú is not GSM-7 (ù is)
        ("ж" * 70, "UCS-2", 1),
        ("ж" * 71, "UCS-2", 2),
        ("ж" * 134, "UCS-2", 2),
        ("ж" * 135, "UCS-2", 3),
        ("a" * 69 + "ç", "UCS-2", 1),  # ç is not GSM-7 (only Ç is): the whole text is UCS-2
        ("😀" * 35, "UCS-2", 1),  # a surrogate pair is two UTF-16 units
        ("😀" * 36, "UCS-2", 2),
        ("a" * 66 + "😀" * 34, "UCS-2", 3),  # 134 units, but no part splits a pair
    ],
)
def test_segment_counting(body: str, encoding: str, segments: int):
    counted = count_segments(body)
    assert (counted.encoding, counted.segments) == (encoding, segments)


# -- Push: FCM HTTP v1 --------------------------------------------------------------------


async def test_push_json_shape_and_bearer_token(activities, fcm, sessions):
    await set_traits(sessions, "ada", {"push_tokens": ["tok-a", "tok-b"], "push_token": "tok-a"})
    req = push()
    result = await ActivityEnvironment().run(activities.deliver, req)

    assert result.status is DeliveryStatus.sent
    assert result.provider_message_id == f"projects/{FCM_PROJECT}/messages/1"
    assert len(fcm.received) == 2  # tok-a once, though both traits name it
    for hit, token in zip(fcm.received, ["tok-a", "tok-b"], strict=True):
        assert hit.path == f"/v1/projects/{FCM_PROJECT}/messages:send"
        assert hit.headers["authorization"] == f"Bearer {FCM_TOKEN}"
        assert hit.headers["content-type"] == "application/json"
        assert hit.headers["idempotency-key"] == f"{req.idempotency_key}:{fingerprint(token)}"
        assert hit.json() == {
            "message": {
                "token": token,
                "notification": {"title": "Still thinking, Ada?", "body": "Your Umbrella waits"},
                "data": {"sku": "U-1", "qty": "2", "flags": '{"vip":true}'},
            }
        }
    row = await delivery_row(sessions, req)
    assert row.provider_response is not None and row.provider_response["sent"] == 2


def test_data_values_become_strings():
    assert data_strings({"a": "x", "n": 1.5, "b": False, "none": None, "l": [1, "2"]}) == {
        "a": "x",
        "n": "1.5",
        "b": "false",
        "none": "null",
        "l": '[1,"2"]',
    }


async def test_push_unregistered_token_is_removed_and_not_retried(activities, fcm, sessions):
    fcm.respond.dead.add("tok-dead")
    await set_traits(sessions, "ada", {"push_tokens": ["tok-dead", "tok-a"]})
    env = ActivityEnvironment()
    req = push()
    result = await env.run(activities.deliver, req)
    await env.run(activities.deliver, req)

    assert result.status is DeliveryStatus.sent
    assert [r.status for r in fcm.received] == [404, 200]
    assert await traits_of(sessions, "ada") == {
        "first_name": "Ada",
        "phone": "+4915112345678",
        "push_tokens": ["tok-a"],
    }
    row = await delivery_row(sessions, req)
    assert row.provider_response is not None
    assert row.provider_response["tokens"][0] == {
        "token": fingerprint("tok-dead"),
        "status": "unregistered",
        "removed": True,
    }


async def test_push_to_only_unregistered_tokens_fails_and_forgets_them(activities, fcm, sessions):
    fcm.respond.dead.add("tok-dead")
    await set_traits(sessions, "cy", {"push_token": "tok-dead", "plan": "pro"})
    env = ActivityEnvironment()
    req = push("cy")
    result = await env.run(activities.deliver, req)
    again = await env.run(activities.deliver, req)

    assert result.status is DeliveryStatus.failed
    assert "unregistered (removed from the profile)" in (result.reason or "")
    assert again.duplicate and len(fcm.received) == 1
    assert await traits_of(sessions, "cy") == {"plan": "pro"}


async def test_push_invalid_argument_is_final(activities, fcm):
    fcm.faults.append(Fault(400, body=INVALID))
    env = ActivityEnvironment()
    req = push()
    result = await env.run(activities.deliver, req)
    again = await env.run(activities.deliver, req)

    assert result.status is DeliveryStatus.failed
    assert "INVALID_ARGUMENT" in (result.reason or "")
    assert again.duplicate and len(fcm.received) == 1


async def test_push_retry_after_partial_success_notifies_the_first_device_again(
    activities, fcm, sessions
):
    """tok-a accepted, tok-b answered 503: the retry starts again from the first token.
    FCM takes no idempotency key, so tok-a's device gets the notification twice — the
    window FcmProvider documents (per-token progress is not recorded)."""
    fcm.respond.flaky["tok-b"] = [503]
    await set_traits(sessions, "ada", {"push_tokens": ["tok-a", "tok-b"]})
    env = ActivityEnvironment()
    req = push()
    with pytest.raises(ApplicationError, match="1 of the user's devices accepted") as err:
        await env.run(activities.deliver, req)
    assert not err.value.non_retryable
    result = await env.run(activities.deliver, req)

    assert result.status is DeliveryStatus.sent
    assert [r.status for r in fcm.received] == [200, 503, 200, 200]
    # Each device's requests carried one key, the same on the retry...
    keys = {r.json()["message"]["token"]: r.headers["idempotency-key"] for r in fcm.received}
    assert len(set(keys.values())) == 2
    # ...which FCM ignores: what the devices got.
    assert [r.json()["message"]["token"] for r in taken(fcm)] == ["tok-a", "tok-a", "tok-b"]


async def test_push_without_tokens_fails_naming_the_trait(activities, fcm, sessions):
    await set_traits(sessions, "dee", {"push_tokens": []})
    result = await ActivityEnvironment().run(activities.deliver, push("dee"))
    assert result.status is DeliveryStatus.failed
    assert "'push_tokens'" in (result.reason or "")
    assert fcm.received == []


async def test_remove_push_token_keeps_other_traits(sessions):
    await set_traits(sessions, "eve", {"push_tokens": ["x", "y"], "push_token": "y", "n": 1})
    async with sessions() as session, session.begin():
        first = await remove_push_token(session=session, user_id="eve", token="y")
        second = await remove_push_token(session=session, user_id="eve", token="y")
        nobody = await remove_push_token(session=session, user_id="nobody", token="y")
    assert (first, second, nobody) == (True, False, False)
    assert await traits_of(sessions, "eve") == {"push_tokens": ["x"], "n": 1}


# -- Configuration ------------------------------------------------------------------------


async def test_channels_refuse_to_build_without_their_settings(twilio, fcm):
    sessions = async_sessionmaker()  # never used: building fails first
    async with httpx.AsyncClient() as http:
        with pytest.raises(ValueError, match="NUDGE_TWILIO_AUTH_TOKEN"):
            build_providers(
                settings_for(twilio, fcm, twilio_auth_token=None), http=http, sessions=sessions
            )
        with pytest.raises(ValueError, match="NUDGE_SMS_FROM"):
            TwilioProvider.from_settings(settings_for(twilio, fcm, sms_from=" "), http)
        with pytest.raises(ValueError, match="NUDGE_FCM_PROJECT_ID, NUDGE_FCM_ACCESS_TOKEN"):
            FcmProvider.from_settings(
                settings_for(twilio, fcm, fcm_project_id=None, fcm_access_token=None),
                http,
                sessions,
            )
