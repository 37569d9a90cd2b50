"""tests.store: the stats aggregates and conversion attribution, on SQLite and PostgreSQL —
a goal within the window after a delivered message is the campaign's conversion (once); a
goal with no message before it is recorded as such; the holdout's goals count from the
moment its message would have gone."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.stats import campaign_funnel
from core.definition import CampaignDefinition, parse_campaign
from core.engagement import EngagementKind
from core.events import JourneyEvent
from core.experiments import HOLDOUT
from core.journey import (
    DeliverRequest,
    DeliveryStatus,
    JourneyOutcome,
    JourneyStatus,
    PolicyRequest,
    Send,
    VariantTaken,
    journey_id,
)
from core.stats import Funnel
from store import deliveries
from store.attribution import Attributed, Goal, attribute
from store.campaigns import save_campaign
from store.engagement import Engagement, record_engagement
from store.entries import record_entry, record_outcome, record_variant
from store.models import Conversion, now

Sessions = async_sessionmaker[AsyncSession]


def campaign(**changes: Any) -> CampaignDefinition:
    return parse_campaign(
        {
            "id": "cart",
            "name": "Cart",
            "entry": {"event": "Product Added"},
            "goals": [{"event": "Order Completed"}],
            "attribution": {"window": "2d", "after": "delivered"},
            "steps": [{"id": "remind", "type": "send", "channel": "sandbox", "template": "t"}],
            "templates": {"t": {"body": "hi"}},
            **changes,
        }
    )


async def setup(sessions: Sessions, definition: CampaignDefinition | None = None) -> None:
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=definition or campaign())


def send_for(user: str, *, variant: str | None = None, step: str = "remind") -> Send:
    workflow_id = journey_id("cart", user)
    return Send(
        idempotency_key=f"key-{uuid.uuid4().hex[:12]}",
        workflow_id=workflow_id,
        campaign_id="cart",
        campaign_version=1,
        step_id=step,
        visit=1,
        channel="sandbox",
        user_id=user,
        variant=variant,
    )


async def sent(sessions: Sessions, user: str, *, variant: str | None = None) -> int:
    """A message to `user`, sent and delivered (the sandbox reports nothing more)."""
    send = send_for(user, variant=variant)
    request = DeliverRequest(
        **dict(send),
        template="t",
        entry_event=JourneyEvent(message_id="e", name="Product Added", timestamp=now()),
    )
    async with sessions() as session, session.begin():
        row = await deliveries.claim_delivery(session=session, request=request)
        await deliveries.complete_delivery(
            session=session,
            delivery_id=row.id,
            status=DeliveryStatus.sent,
            provider_message_id=f"sandbox-{row.id}",
            delivered=True,
        )
    return row.id


def goal(at_offset: timedelta = timedelta(hours=1), **properties: Any) -> Goal:
    return Goal(uuid.uuid4().hex, "Order Completed", now() + at_offset, properties)


async def credit(sessions: Sessions, user: str, the_goal: Goal, definition=None) -> Attributed:
    async with sessions() as session, session.begin():
        return await attribute(
            session,
            campaign_id="cart",
            attribution=(definition or campaign()).attribution,
            user_ids=[user],
            goal=the_goal,
        )


async def funnel(sessions: Sessions) -> Funnel:
    async with sessions() as session:
        return (await campaign_funnel(session, campaign_id="cart")).funnel


async def test_a_goal_after_delivery_inside_the_window_counts_once(sessions: Sessions) -> None:
    await setup(sessions)
    await sent(sessions, "ada")
    order = goal(revenue=42.5, currency="EUR")
    assert await credit(sessions, "ada", order) is Attributed.now
    assert await credit(sessions, "ada", order) is Attributed.already
    # A second order is not a second conversion of the same message.
    assert await credit(sessions, "ada", goal(timedelta(hours=2), total=10)) is Attributed.already
    found = await funnel(sessions)
    assert (found.sent, found.delivered, found.converted, found.revenue) == (1, 1, 1, 42.5)
    async with sessions() as session:
        [row] = (await session.scalars(select(Conversion))).all()
    assert (row.step_id, row.revenue, row.currency, row.goal) == (
        "remind",
        42.5,
        "EUR",
        "Order Completed",
    )


async def test_a_goal_before_any_send_or_after_the_window_does_not(sessions: Sessions) -> None:
    await setup(sessions)
    assert await credit(sessions, "bob", goal()) is Attributed.none  # nothing sent yet
    await sent(sessions, "bob")
    assert await credit(sessions, "bob", goal(-timedelta(minutes=5))) is Attributed.none
    assert await credit(sessions, "bob", goal(timedelta(days=2, hours=1))) is Attributed.none
    assert await credit(sessions, "someone-else", goal()) is Attributed.none
    assert (await funnel(sessions)).converted == 0


async def test_attribution_after_an_open_needs_the_open(sessions: Sessions) -> None:
    definition = campaign(attribution={"window": "1d", "after": "opened"})
    await setup(sessions, definition)
    delivery = await sent(sessions, "cy")
    assert await credit(sessions, "cy", goal(), definition) is Attributed.none
    async with sessions() as session, session.begin():
        await record_engagement(
            session,
            Engagement(kind=EngagementKind.opened, delivery_id=delivery, at=now(), source="test"),
        )
    assert await credit(sessions, "cy", goal(), definition) is Attributed.now


async def outcome(
    user: str, message_id: str, status: JourneyStatus, **extra: Any
) -> JourneyOutcome:
    return JourneyOutcome(
        workflow_id=journey_id("cart", user),
        run_id=f"run-{user}-{message_id}",
        campaign_id="cart",
        campaign_version=1,
        user_id=user,
        entry_message_id=message_id,
        status=status,
        ended_at=now() + timedelta(hours=1),
        **extra,
    )


async def test_a_journey_that_converts_without_a_message_is_recorded_as_such(
    sessions: Sessions,
) -> None:
    await setup(sessions)
    goal_event = JourneyEvent(message_id="order-1", name="Order Completed", timestamp=now())
    ended = await outcome("dee", "entry-1", JourneyStatus.converted, goal_event=goal_event)
    for _ in range(2):  # a retried activity counts once
        async with sessions() as session, session.begin():
            await record_outcome(session=session, outcome=ended)
    found = await funnel(sessions)
    assert (found.entered, found.converted, found.goal_without_message) == (1, 0, 1)
    async with sessions() as session:
        journeys = (await campaign_funnel(session, campaign_id="cart")).journeys
    assert (journeys.converted, journeys.running) == (1, 0)


async def test_a_journey_that_converts_after_its_message_is_credited(sessions: Sessions) -> None:
    await setup(sessions)
    async with sessions() as session, session.begin():
        await record_entry(
            session=session,
            campaign_id="cart",
            campaign_version=1,
            user_id="eve",
            workflow_id=journey_id("cart", "eve"),
            run_id="run-eve",
            entry_message_id="entry-eve",
        )
    await sent(sessions, "eve")
    goal_event = JourneyEvent(
        message_id="order-eve",
        name="Order Completed",
        timestamp=now() + timedelta(minutes=30),
        properties={"revenue": 20},
    )
    # The relay credited it as the event arrived; the journey's end agrees.
    assert (
        await credit(
            sessions,
            "eve",
            Goal("order-eve", "Order Completed", goal_event.timestamp, {"revenue": 20}),
        )
        is Attributed.now
    )
    async with sessions() as session, session.begin():
        await record_outcome(
            session=session,
            outcome=await outcome(
                "eve", "entry-eve", JourneyStatus.converted, goal_event=goal_event
            ),
        )
    found = await funnel(sessions)
    assert (found.entered, found.converted, found.goal_without_message, found.revenue) == (
        1,
        1,
        0,
        20.0,
    )


async def test_holdout_and_variants_are_counted_in_their_groups(sessions: Sessions) -> None:
    definition = campaign(
        holdout=0.5,
        steps=[
            {
                "id": "split",
                "type": "split",
                "variants": [{"name": "a", "next": "remind"}, {"name": "b", "next": "remind"}],
            },
            {"id": "remind", "type": "send", "channel": "sandbox", "template": "t"},
        ],
    )
    await setup(sessions, definition)
    # The holdout: no message, a held-out send at the moment it would have gone.
    async with sessions() as session, session.begin():
        await deliveries.record_held_out(
            session=session, send=send_for("hal", variant=HOLDOUT), at=now()
        )
    assert await credit(sessions, "hal", goal(revenue=5), definition) is Attributed.now
    async with sessions() as session, session.begin():  # hal's journey ends, recorded first
        ended = await outcome("hal", "entry-hal", JourneyStatus.completed, variant=HOLDOUT)
        await record_outcome(session=session, outcome=ended)
    # A variant: its entrant counted once, however often the split is recorded.
    taken = VariantTaken(
        workflow_id=journey_id("cart", "val"),
        run_id="run-val",
        campaign_id="cart",
        campaign_version=1,
        user_id="val",
        entry_message_id="entry-val",
        step_id="split",
        variant="b",
        at=now(),
    )
    for _ in range(2):
        async with sessions() as session, session.begin():
            await record_variant(session=session, taken=taken, names=["a", "b"])
    await sent(sessions, "val", variant="b")
    assert await credit(sessions, "val", goal(revenue=7), definition) is Attributed.now
    async with sessions() as session:
        found = await campaign_funnel(session, campaign_id="cart")
    groups = {g.group: g for g in found.groups}
    assert groups[HOLDOUT].funnel.converted == 1 and groups[HOLDOUT].funnel.held_out == 1
    assert groups[HOLDOUT].funnel.sent == 0
    assert groups["b"].funnel.entered == 1 and groups["b"].funnel.converted == 1
    assert groups["b"].split == "split" and groups["b"].funnel.revenue == 7
    assert groups[HOLDOUT].funnel.entered == 1
    [lift] = groups["b"].lift  # over the holdout; `a` has no entrant to compare with
    assert lift.baseline == HOLDOUT and lift.verdict == "collecting data"
    split = next(s for s in found.steps if s.step_id == "split")
    assert split.type == "split" and split.funnel.entered == 1
    assert found.funnel.entered == 2 and found.journeys.completed == 1


async def test_suppressions_are_counted_by_reason(sessions: Sessions) -> None:
    await setup(sessions)
    reasons = ["unsubscribed from marketing on sandbox", "cap: 3 messages per 24h", "cap: 1 per 7d"]
    for reason in reasons:
        request = PolicyRequest(**dict(send_for("fay")))
        for _ in range(2):  # a retried check records once
            async with sessions() as session, session.begin():
                await deliveries.record_suppressed(session=session, request=request, reason=reason)
    found = await funnel(sessions)
    assert found.suppressed == 3
    assert found.suppressed_by_reason == {"unsubscribed": 1, "frequency_cap": 2}
    async with sessions() as session:
        rows = await session.scalar(select(func.count()).select_from(Conversion))
    assert rows == 0
