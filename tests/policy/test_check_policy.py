"""The `check_policy` activity through ActivityEnvironment, on real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.channels.sandbox import SandboxProvider
from activities.journey import VERSION_UNAVAILABLE, JourneyActivities
from core.config import Settings
from core.definition import parse_campaign
from core.events import JourneyEvent
from core.journey import (
    DeliverRequest,
    DeliveryStatus,
    PolicyAction,
    PolicyRequest,
    idempotency_key,
)
from store import deliveries
from store.campaigns import save_campaign
from store.models import CampaignVersion, SendReservation
from store.profiles import merge_traits
from store.subscriptions import (
    ALL_GROUPS,
    SubscriptionSource,
    SubscriptionStatus,
    add_suppression,
    set_subscription,
)


def campaign(campaign_id: str, channel: str = "email", **fields: Any):
    return parse_campaign(
        {
            "id": campaign_id,
            "name": campaign_id,
            "entry": {"event": "Signed Up"},
            "steps": [{"id": "send", "type": "send", "channel": channel, "template": "t"}],
            "templates": {"t": {"subject": "Hello", "body": "Hello {{ user_id }}"}},
            **fields,
        }
    )


CAMPAIGNS = [
    campaign("promo"),
    campaign("promo_sms", "sms"),
    campaign("digest", subscription_group="product_news"),
    campaign("receipt", priority="transactional"),
    campaign("flash", priority="high", caps=[{"limit": 1, "window": "7d"}]),
    campaign("sandboxed", "sandbox"),
]


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"environment": "test", "quiet_hours_start": None} | overrides
    return Settings(_env_file=None, **values)


@pytest.fixture
async def seeded(sessions):
    async with sessions() as session, session.begin():
        for definition in CAMPAIGNS:
            await save_campaign(session=session, definition=definition)
        await merge_traits(session=session, user_id="ada", traits={"email": "ada@example.com"})
    return sessions


def activities(sessions, **overrides: Any) -> JourneyActivities:
    return JourneyActivities(
        sessions=sessions,
        providers={"sandbox": SandboxProvider(sessions)},
        settings=settings(**overrides),
    )


def request(campaign_id: str, channel: str = "email", user_id: str = "ada") -> PolicyRequest:
    wid = f"journey/{campaign_id}/{user_id}"
    visit_key = idempotency_key(wid, f"m-{uuid.uuid4()}", "send", 1)
    return PolicyRequest(
        idempotency_key=visit_key,
        workflow_id=wid,
        campaign_id=campaign_id,
        campaign_version=1,
        step_id="send",
        visit=1,
        channel=channel,
        user_id=user_id,
    )


async def unsubscribe(sessions, channel: str, group: str, user_id: str = "ada") -> None:
    async with sessions() as session, session.begin():
        await set_subscription(
            session=session,
            user_id=user_id,
            channel=channel,
            group=group,
            status=SubscriptionStatus.unsubscribed,
            source=SubscriptionSource.api,
        )


async def ledger(sessions) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(SendReservation)) or 0)


async def test_unsubscribed_is_suppressed_and_recorded(seeded) -> None:
    acts = activities(seeded)
    await unsubscribe(seeded, "email", "marketing")
    req = request("promo")

    decision = await ActivityEnvironment().run(acts.check_policy, req)
    again = await ActivityEnvironment().run(acts.check_policy, req)  # a retry

    assert decision.action is PolicyAction.suppress
    assert decision.reason == "unsubscribed from marketing on email"
    assert again == decision
    async with seeded() as session:
        row = await deliveries.get_delivery(session=session, idempotency_key=req.idempotency_key)
        counts = await deliveries.count_deliveries(session=session, campaign_id="promo")
    assert row is not None
    assert (row.status, row.error, row.channel, row.user_id) == (
        "suppressed",
        "unsubscribed from marketing on email",
        "email",
        "ada",
    )
    assert counts == {"suppressed": 1}
    assert await ledger(seeded) == 0

    # Another group on the same channel is still allowed.
    digest = await ActivityEnvironment().run(acts.check_policy, request("digest"))
    assert digest.action is PolicyAction.allow


async def test_deliver_never_sends_a_suppressed_send(seeded) -> None:
    acts = activities(seeded)
    await unsubscribe(seeded, "sandbox", "marketing")
    req = request("sandboxed", "sandbox")
    decision = await ActivityEnvironment().run(acts.check_policy, req)
    assert decision.action is PolicyAction.suppress

    # Should a journey call `deliver` anyway, the recorded row stops it.
    entry = JourneyEvent(message_id="m-1", name="Signed Up", timestamp=datetime.now(UTC))
    result = await ActivityEnvironment().run(
        acts.deliver,
        DeliverRequest(
            **req.model_dump(exclude={"channel"}),
            channel="sandbox",
            template="t",
            entry_event=entry,
        ),
    )
    assert result.status is DeliveryStatus.suppressed and result.duplicate


async def test_sms_stop_suppresses_every_group_on_sms(seeded) -> None:
    acts = activities(seeded)
    await unsubscribe(seeded, "sms", ALL_GROUPS)
    decision = await ActivityEnvironment().run(acts.check_policy, request("promo_sms", "sms"))
    assert decision.action is PolicyAction.suppress
    assert decision.reason == "unsubscribed from marketing on sms"
    email = await ActivityEnvironment().run(acts.check_policy, request("promo"))
    assert email.action is PolicyAction.allow


async def test_transactional_ignores_opt_outs_but_not_a_hard_bounce(seeded) -> None:
    acts = activities(seeded)
    await unsubscribe(seeded, "email", "marketing")
    await unsubscribe(seeded, "email", ALL_GROUPS)

    decision = await ActivityEnvironment().run(acts.check_policy, request("receipt"))
    assert decision.action is PolicyAction.allow
    assert await ledger(seeded) == 0  # transactional sends are not counted by caps

    async with seeded() as session, session.begin():
        await add_suppression(
            session=session, user_id="ada", channel="email", reason="hard bounce: 550 5.1.1"
        )
    req = request("receipt")
    bounced = await ActivityEnvironment().run(acts.check_policy, req)
    assert bounced.action is PolicyAction.suppress
    assert bounced.reason == "suppressed on email: hard bounce: 550 5.1.1"
    async with seeded() as session:
        row = await deliveries.get_delivery(session=session, idempotency_key=req.idempotency_key)
    assert row is not None and row.status == "suppressed"


async def test_cap_reached_is_suppressed_naming_the_cap(seeded) -> None:
    acts = activities(seeded)  # default caps: 3 marketing per 24h, 1 sms per 24h
    decisions = [
        await ActivityEnvironment().run(acts.check_policy, request("promo")) for _ in range(3)
    ]
    assert [d.action for d in decisions] == [PolicyAction.allow] * 3
    req = request("promo")
    capped = await ActivityEnvironment().run(acts.check_policy, req)
    assert capped.action is PolicyAction.suppress
    assert capped.reason == "cap: 3 marketing messages per 24h"
    async with seeded() as session:
        row = await deliveries.get_delivery(session=session, idempotency_key=req.idempotency_key)
    assert row is not None and (row.status, row.error) == (
        "suppressed",
        "cap: 3 marketing messages per 24h",
    )
    # A group without a settings cap, and transactional messages, still go.
    digest = await ActivityEnvironment().run(acts.check_policy, request("digest"))
    receipt = await ActivityEnvironment().run(acts.check_policy, request("receipt"))
    assert digest.action is receipt.action is PolicyAction.allow


async def test_a_campaign_cap_and_a_retried_allow(seeded) -> None:
    acts = activities(seeded, caps=[])
    req = request("flash")
    first = await ActivityEnvironment().run(acts.check_policy, req)
    retried = await ActivityEnvironment().run(acts.check_policy, req)
    second = await ActivityEnvironment().run(acts.check_policy, request("flash"))
    assert first.action is retried.action is PolicyAction.allow
    assert second.action is PolicyAction.suppress
    assert second.reason == "cap: 1 message of campaign flash per 7d"
    assert await ledger(seeded) == 1


async def test_two_journeys_at_the_same_instant_share_one_sms_slot(seeded) -> None:
    acts = activities(seeded)  # 1 sms per 24h
    decisions = await asyncio.gather(
        *(
            ActivityEnvironment().run(acts.check_policy, request("promo_sms", "sms"))
            for _ in range(4)
        )
    )
    actions = sorted(d.action.value for d in decisions)
    assert actions == ["allow", "suppress", "suppress", "suppress"]
    assert {d.reason for d in decisions if d.action is PolicyAction.suppress} == {
        "cap: 1 sms message per 24h"
    }
    async with seeded() as session:
        counts = await deliveries.count_deliveries(session=session, campaign_id="promo_sms")
    assert counts == {"suppressed": 3}


async def test_quiet_hours_defer_to_their_end_in_the_users_zone(seeded) -> None:
    # The journey's time, not the wall clock's: 22:00 UTC tomorrow, inside the default quiet
    # hours (21:00-08:00) whatever the hour the test runs at. The policy decides at the later
    # of the journey's time and the clock, so a time ahead of the clock is the one used.
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    at_22 = datetime(tomorrow.year, tomorrow.month, tomorrow.day, 22, tzinfo=UTC)
    acts = activities(seeded, quiet_hours_start="21:00", quiet_hours_end="08:00")

    def asked(campaign_id: str) -> PolicyRequest:
        return request(campaign_id).model_copy(update={"now": at_22})

    async with seeded() as session, session.begin():
        await merge_traits(session=session, user_id="ada", traits={"timezone": "Etc/UTC"})
    decision = await ActivityEnvironment().run(acts.check_policy, asked("promo"))
    assert decision.action is PolicyAction.defer
    assert decision.defer_until == at_22 + timedelta(hours=10)  # 08:00 the next morning
    assert decision.reason == "quiet hours 21:00-08:00 in Etc/UTC"
    assert await ledger(seeded) == 0  # nothing reserved until it may go

    # Where it is 10:00 then (UTC-12), it goes; transactional ones go in any case.
    async with seeded() as session, session.begin():
        await merge_traits(session=session, user_id="ada", traits={"timezone": "Etc/GMT+12"})
    elsewhere = await ActivityEnvironment().run(acts.check_policy, asked("promo"))
    assert elsewhere.action is PolicyAction.allow
    async with seeded() as session, session.begin():
        await merge_traits(session=session, user_id="ada", traits={"timezone": "Etc/UTC"})
    receipt = await ActivityEnvironment().run(acts.check_policy, asked("receipt"))
    assert receipt.action is PolicyAction.allow


async def test_a_deferral_at_the_journeys_last_try_is_a_recorded_suppression(seeded) -> None:
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    at_22 = datetime(tomorrow.year, tomorrow.month, tomorrow.day, 22, tzinfo=UTC)
    acts = activities(seeded, quiet_hours_start="21:00", quiet_hours_end="08:00")
    asked = request("promo").model_copy(update={"now": at_22, "max_attempts": 30})

    early = await ActivityEnvironment().run(
        acts.check_policy, asked.model_copy(update={"attempt": 29})
    )
    assert early.action is PolicyAction.defer
    last = asked.model_copy(update={"attempt": 30})
    decision = await ActivityEnvironment().run(acts.check_policy, last)
    assert decision.action is PolicyAction.suppress
    assert decision.reason == "still deferred after 30 tries: quiet hours 21:00-08:00 in UTC"
    async with seeded() as session:
        row = await deliveries.get_delivery(session=session, idempotency_key=last.idempotency_key)
    assert row is not None and row.status == DeliveryStatus.suppressed.value  # it shows in /stats
    assert row.error == decision.reason
    # A retried check returns what was recorded.
    again = await ActivityEnvironment().run(acts.check_policy, last)
    assert again == decision


async def test_an_unknown_campaign_version_is_a_final_error(seeded) -> None:
    req = request("promo").model_copy(update={"campaign_version": 99})
    with pytest.raises(ApplicationError, match="campaign 'promo' version 99") as err:
        await ActivityEnvironment().run(activities(seeded).check_policy, req)
    assert err.value.non_retryable and err.value.type == VERSION_UNAVAILABLE


async def test_a_hard_bounce_is_suppressed_before_the_version_is_read(seeded) -> None:
    async with seeded() as session, session.begin():
        await add_suppression(session=session, user_id="ada", channel="email", reason="550")
        # A version today's rules refuse (after an upgrade): the bounce still decides first.
        await session.execute(
            update(CampaignVersion)
            .where(CampaignVersion.campaign_id == "promo")
            .values(definition={"id": "promo", "steps": []})
        )
    req = request("promo")
    decision = await ActivityEnvironment().run(activities(seeded).check_policy, req)
    assert (decision.action, decision.reason) == (PolicyAction.suppress, "suppressed on email: 550")
