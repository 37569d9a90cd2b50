"""The deliver activity against real SQLite/PostgreSQL and a real webhook server."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.channels.sandbox import SandboxProvider
from activities.channels.smtp import SmtpProvider
from activities.channels.webhook import WebhookProvider, verify
from activities.journey import VERSION_UNAVAILABLE, JourneyActivities
from core.config import DEV_WEBHOOK_SECRET, CapRule, Settings
from core.definition import parse_campaign
from core.journey import (
    DeliverRequest,
    DeliveryFailure,
    DeliveryStatus,
    PolicyAction,
    PolicyRequest,
)
from store import deliveries
from store.campaigns import save_campaign
from store.models import SandboxMessage, SendReservation
from store.profiles import merge_traits
from tests.fixtures.api import eventually
from tests.fixtures.sends import deliver_request, entry_event, policy_request
from tests.fixtures.servers import Fault, WebhookReceiver

DEFINITION = parse_campaign(
    {
        "id": "cart",
        "name": "Cart abandonment",
        "entry": {"event": "Product Added"},
        "steps": [
            {
                "id": "remind",
                "type": "send",
                "channel": "webhook",
                "template": "reminder",
                "next": "sandboxed",
            },
            {
                "id": "sandboxed",
                "type": "send",
                "channel": "sandbox",
                "template": "reminder",
                "next": "broken",
            },
            {"id": "broken", "type": "send", "channel": "sandbox", "template": "broken"},
        ],
        "templates": {
            "reminder": {
                "subject": "{{ traits.first_name | default('Hi') }}, still thinking?",
                "body": "Your {{ event.properties.name }} waits. Code {{ campaign.id | upper }}10",
                "data": {"sku": "{{ event.properties.sku }}", "fixed": 3},
            },
            "broken": {"body": "{{ 1 // 0 }}"},
        },
    }
)


@pytest.fixture
async def activities(
    sessions, webhook_receiver: WebhookReceiver
) -> AsyncIterator[JourneyActivities]:
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=DEFINITION)
        await merge_traits(session=session, user_id="ada", traits={"first_name": "Ada"})
    async with httpx.AsyncClient(timeout=5) as http:
        yield JourneyActivities(
            sessions=sessions,
            providers={
                "sandbox": SandboxProvider(sessions),
                "webhook": WebhookProvider(http, webhook_receiver.url, [DEV_WEBHOOK_SECRET]),
            },
        )


def request(
    step_id: str, channel: str, template: str = "reminder", visit: int = 1
) -> DeliverRequest:
    entry = entry_event("Product Added", {"name": "Umbrella", "sku": "U-1"})
    return deliver_request(
        campaign_id="cart",
        step_id=step_id,
        channel=channel,
        template=template,
        entry=entry,
        visit=visit,
    )


async def test_webhook_send_is_signed_rendered_and_never_repeated(activities, webhook_receiver):
    env = ActivityEnvironment()
    req = request("remind", "webhook")
    first = await env.run(activities.deliver, req)
    again = await env.run(activities.deliver, req)  # what an activity retry does

    assert first.status is DeliveryStatus.sent and not first.duplicate
    assert again.status is DeliveryStatus.sent and again.duplicate
    assert again.delivery_id == first.delivery_id
    assert len(webhook_receiver.received) == 1
    hit = webhook_receiver.received[0]
    assert hit.headers["webhook-id"] == req.idempotency_key
    assert hit.headers["idempotency-key"] == req.idempotency_key
    assert verify(DEV_WEBHOOK_SECRET, hit.headers, hit.body)
    assert not verify("whsec_" + "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA==", hit.headers, hit.body)
    data = hit.json()["data"]
    assert data["subject"] == "Ada, still thinking?"
    assert data["body"] == "Your Umbrella waits. Code CART10"
    assert data["data"] == {"sku": "U-1", "fixed": 3}


async def test_connection_refused_is_retryable(sessions):
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=DEFINITION)
    async with httpx.AsyncClient(timeout=2) as http:
        acts = JourneyActivities(
            sessions=sessions,
            providers={
                "webhook": WebhookProvider(http, "http://127.0.0.1:9/", [DEV_WEBHOOK_SECRET])
            },
        )
        with pytest.raises(ApplicationError) as err:
            await ActivityEnvironment().run(acts.deliver, request("remind", "webhook"))
    assert not err.value.non_retryable and "unreachable" in str(err.value)


async def test_sandbox_keeps_one_rendered_message(activities, sessions):
    env = ActivityEnvironment()
    req = request("sandboxed", "sandbox")
    first = await env.run(activities.deliver, req)
    await env.run(activities.deliver, req)
    assert first.status is DeliveryStatus.sent
    async with sessions() as session:
        messages = await deliveries.list_sandbox_messages(session=session, user_id="ada")
        count = await session.scalar(select(func.count()).select_from(SandboxMessage))
    assert count == 1
    assert messages[0].subject == "Ada, still thinking?"
    assert messages[0].body == "Your Umbrella waits. Code CART10"


async def test_render_error_fails_without_retry(activities):
    result = await ActivityEnvironment().run(
        activities.deliver, request("broken", "sandbox", "broken")
    )
    assert result.status is DeliveryStatus.failed
    assert "broken.body" in (result.reason or "") and "ZeroDivisionError" in (result.reason or "")


async def test_unknown_channel_fails_naming_it(activities):
    result = await ActivityEnvironment().run(
        activities.deliver, request("remind", "carrier-pigeon")
    )
    assert result.status is DeliveryStatus.failed
    assert "carrier-pigeon" in (result.reason or "")


async def test_load_profile(activities):
    from core.journey import ProfileRequest

    env = ActivityEnvironment()
    ada = await env.run(activities.load_profile, ProfileRequest(user_id="ada"))
    nobody = await env.run(activities.load_profile, ProfileRequest(user_id="nobody"))
    assert ada.traits == {"first_name": "Ada"}
    assert nobody.traits == {}


async def test_record_outcome_counts_in_the_funnel_even_before_the_entry_row(activities, sessions):
    from core.journey import JourneyOutcome, JourneyStatus
    from store.entries import count_outcomes, record_entry

    outcome = JourneyOutcome(
        workflow_id="journey/cart/ada",
        run_id="run-1",
        campaign_id="cart",
        campaign_version=1,
        user_id="ada",
        entry_message_id="m-1",
        status=JourneyStatus.converted,
        exit_reason="goal: Order Completed",
        ended_at=datetime.now(UTC),
    )
    env = ActivityEnvironment()
    await env.run(activities.record_outcome, outcome)
    await env.run(activities.record_outcome, outcome)  # a retry changes nothing
    async with sessions() as session, session.begin():
        # The router's entry row arrives late: it must not reset the outcome.
        wrote = await record_entry(
            session=session,
            campaign_id="cart",
            campaign_version=1,
            user_id="ada",
            workflow_id="journey/cart/ada",
            run_id="run-1",
            entry_message_id="m-1",
        )
    async with sessions() as session:
        counts = await count_outcomes(session=session, campaign_id="cart")
    assert wrote is False
    assert counts == {"converted": 1}


async def test_fail_delivery_closes_a_pending_send_but_never_a_sent_one(
    activities, webhook_receiver, sessions
):
    from core.journey import DeliveryFailure

    env = ActivityEnvironment()
    webhook_receiver.faults.append(Fault(503))
    stuck = request("remind", "webhook")
    with pytest.raises(ApplicationError):
        await env.run(activities.deliver, stuck)
    done = request("remind", "webhook")
    await env.run(activities.deliver, done)
    for req in (stuck, done):
        await env.run(
            activities.fail_delivery,
            DeliveryFailure(idempotency_key=req.idempotency_key, reason="gave up after a day"),
        )
    async with sessions() as session:
        closed = await deliveries.get_delivery(
            session=session, idempotency_key=stuck.idempotency_key
        )
        kept = await deliveries.get_delivery(session=session, idempotency_key=done.idempotency_key)
    assert closed is not None and (closed.status, closed.error) == ("failed", "gave up after a day")
    assert kept is not None and kept.status == "sent"


async def test_webhook_secret_rotation_signs_with_every_secret(sessions, webhook_receiver):
    old, new = DEV_WEBHOOK_SECRET, "whsec_" + "bmV3LXNlY3JldC1mb3Itcm90YXRpb24tdGVzdHM="
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=DEFINITION)
    async with httpx.AsyncClient(timeout=5) as http:
        acts = JourneyActivities(
            sessions=sessions,
            providers={"webhook": WebhookProvider(http, webhook_receiver.url, [new, old])},
        )
        await ActivityEnvironment().run(acts.deliver, request("remind", "webhook"))
    [hit] = webhook_receiver.received
    assert len(hit.headers["webhook-signature"].split()) == 2
    # A receiver still on the old secret and one already on the new both accept it.
    assert verify(old, hit.headers, hit.body) and verify(new, hit.headers, hit.body)


async def test_a_version_that_cannot_be_used_is_a_final_failure_and_never_tried(
    activities, sessions, webhook_receiver
):
    req = request("remind", "webhook").model_copy(update={"campaign_version": 9})
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activities.deliver, req)
    assert err.value.non_retryable and err.value.type == VERSION_UNAVAILABLE
    assert err.value.message == "campaign 'cart' version 9 is not in the store"
    async with sessions() as session:
        assert (
            await deliveries.get_delivery(session=session, idempotency_key=req.idempotency_key)
            is None
        )
    assert webhook_receiver.received == []


CAPPED = parse_campaign(
    {
        "id": "mailing",
        "name": "Weekly mailing",
        "entry": {"event": "Signed Up"},
        "steps": [{"id": "mail", "type": "send", "channel": "email", "template": "t"}],
        "templates": {"t": {"subject": "News", "body": "This week"}},
    }
)
NEXT = parse_campaign(
    {**CAPPED.model_dump(mode="json", by_alias=True), "id": "promo", "name": "Promotion"}
)


def one_send(campaign_id: str) -> tuple[PolicyRequest, DeliverRequest]:
    """The policy's and deliver's requests for one email send of a journey."""
    deliver = deliver_request(
        campaign_id=campaign_id,
        step_id="mail",
        channel="email",
        template="t",
        user_id="bo",
        entry=entry_event("Signed Up"),
    )
    return policy_request(deliver), deliver


async def capped_to_one_a_day(sessions) -> JourneyActivities:
    """One marketing message a day for Bo, who has no email address."""
    async with sessions() as session, session.begin():
        for definition in (CAPPED, NEXT):
            await save_campaign(session=session, definition=definition)
        await merge_traits(session=session, user_id="bo", traits={"first_name": "Bo"})
    caps = [CapRule(group="marketing", limit=1, window=timedelta(hours=24))]
    settings = Settings(_env_file=None, quiet_hours_start=None, caps=caps)
    smtp = SmtpProvider(host="127.0.0.1", port=9, security="none", sender="n@example.com")
    return JourneyActivities(sessions=sessions, providers={"email": smtp}, settings=settings)


async def reserved(sessions) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(SendReservation)) or 0)


async def test_a_send_that_never_went_out_gives_its_cap_slot_back(sessions):
    acts = await capped_to_one_a_day(sessions)
    env = ActivityEnvironment()
    policy, deliver = one_send("mailing")
    assert (await env.run(acts.check_policy, policy)).action is PolicyAction.allow
    assert await reserved(sessions) == 1
    result = await env.run(acts.deliver, deliver)
    assert result.status is DeliveryStatus.failed
    assert "no 'email' trait" in (result.reason or "")
    assert await reserved(sessions) == 0

    # The next campaign's message is not held back by one that never went out.
    policy, _ = one_send("promo")
    decision = await env.run(acts.check_policy, policy)
    assert decision.action is PolicyAction.allow, decision.reason


async def test_a_send_given_up_after_its_retries_keeps_its_cap_slot(sessions):
    acts = await capped_to_one_a_day(sessions)
    env = ActivityEnvironment()
    policy, deliver = one_send("mailing")
    assert (await env.run(acts.check_policy, policy)).action is PolicyAction.allow
    # Attempts failed retryably (one may have reached the provider) until the journey gave up.
    async with sessions() as session, session.begin():
        await deliveries.claim_delivery(session=session, request=deliver)
    failure = DeliveryFailure(idempotency_key=deliver.idempotency_key, reason="gave up")
    await env.run(acts.fail_delivery, failure)
    async with sessions() as session:
        row = await deliveries.get_delivery(
            session=session, idempotency_key=deliver.idempotency_key
        )
    assert row is not None and (row.status, row.error) == ("failed", "gave up")
    assert await reserved(sessions) == 1

    policy, _ = one_send("promo")
    decision = await env.run(acts.check_policy, policy)
    assert decision.action is PolicyAction.suppress
    assert decision.reason == "cap: 1 marketing message per 24h"


# -- templates that would hold the worker ------------------------------------------------

HOSTILE = parse_campaign(
    {
        "id": "hostile",
        "name": "A template that would compute for ever",
        "entry": {"event": "Product Added"},
        "steps": [{"id": "send", "type": "send", "channel": "sandbox", "template": "power"}],
        # One step of big-integer arithmetic: 12 s holding the GIL before the sandbox
        # refused it, long past the 5 s heartbeat timeout.
        "templates": {"power": {"subject": "Hi", "body": "{{ ((((9**64)**64)**64)**64) > 1 }}"}},
    }
)


async def hostile_activities(sessions) -> JourneyActivities:
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=HOSTILE)
    return JourneyActivities(sessions=sessions, providers={"sandbox": SandboxProvider(sessions)})


def hostile_request() -> DeliverRequest:
    return deliver_request(
        campaign_id="hostile", step_id="send", channel="sandbox", template="power"
    )


async def test_a_template_that_would_compute_for_ever_fails_at_once_and_for_good(sessions):
    acts = await hostile_activities(sessions)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=5))
    req = hostile_request()
    started = time.monotonic()
    first = await env.run(acts.deliver, req)
    took = time.monotonic() - started
    again = await env.run(acts.deliver, req)  # what a retry of the activity would find

    reason = first.reason or ""
    assert first.status is DeliveryStatus.failed and not first.duplicate
    assert reason.startswith("template 'power.body' line 1: `**` would be a number of about")
    assert "limited to 1000 digits" in reason
    assert again.status is DeliveryStatus.failed and again.duplicate and again.reason == reason
    async with sessions() as session:
        row = await deliveries.get_delivery(session=session, idempotency_key=req.idempotency_key)
        kept = await session.scalar(select(func.count()).select_from(SandboxMessage))
    assert row is not None and (row.status, row.error, row.attempts) == ("failed", reason, 1)
    assert kept == 0
    assert took < 2, f"{took:.1f} s"


async def test_a_render_failure_is_recorded_even_if_the_activity_is_cancelled_meanwhile(
    sessions, monkeypatch
):
    # A cancellation (a heartbeat that timed out, a journey that ended) arriving while the
    # failure is written used to roll the write back: the send stayed `pending`, and every
    # retry rendered and failed again until the day was over.
    acts = await hostile_activities(sessions)
    writing = asyncio.Event()
    write = deliveries.fail_delivery

    async def slow_fail_delivery(**kwargs: Any) -> bool:
        writing.set()
        await asyncio.sleep(0.3)
        return await write(**kwargs)

    monkeypatch.setattr(deliveries, "fail_delivery", slow_fail_delivery)
    env = ActivityEnvironment()
    req = hostile_request()
    attempt = asyncio.create_task(env.run(acts.deliver, req))
    await asyncio.wait_for(writing.wait(), timeout=10)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt

    async def failed() -> bool:
        async with sessions() as session:
            row = await deliveries.get_delivery(
                session=session, idempotency_key=req.idempotency_key
            )
        return row is not None and row.status == "failed"

    await eventually(failed, timeout=10)
    retry = await ActivityEnvironment().run(acts.deliver, req)
    assert retry.status is DeliveryStatus.failed and retry.duplicate
