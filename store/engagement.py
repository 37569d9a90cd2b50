"""store: engagement — an open, a click or a provider's report about one delivery, recorded
once: the delivery's columns, the stats aggregates, the suppression list, and the user
event (Segment's Email spec names) written to the outbox to be routed like any other.

Tracking links and provider webhooks both come here, so each kind is counted one way."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from core.engagement import SUPPRESSES, EngagementKind, event_message_id, event_name
from core.stats import CLICKED_HUMAN, CLICKS, OPENED_HUMAN, OPENS, engagement_metric
from store.events import NewEvent, record_events
from store.identities import canonical_user
from store.models import Delivery
from store.stats import Bump, bump
from store.subscriptions import SubscriptionSource, SubscriptionStatus, add_suppression
from store.subscriptions import set_subscription as set_subscription_status

FIRST_AT: dict[EngagementKind, InstrumentedAttribute[Any]] = {
    EngagementKind.delivered: Delivery.delivered_at,
    EngagementKind.opened: Delivery.opened_at,
    EngagementKind.clicked: Delivery.clicked_at,
    EngagementKind.bounced: Delivery.bounced_at,
    EngagementKind.dropped: Delivery.bounced_at,
    EngagementKind.spam: Delivery.complained_at,
}
"""The column that holds a kind's first time: set once, and counted when it is."""
HUMAN_AT = {
    EngagementKind.opened: Delivery.human_opened_at,
    EngagementKind.clicked: Delivery.human_clicked_at,
}
HUMAN_METRIC = {EngagementKind.opened: OPENED_HUMAN, EngagementKind.clicked: CLICKED_HUMAN}
TOTALS = {
    EngagementKind.opened: (Delivery.opens, OPENS),
    EngagementKind.clicked: (Delivery.clicks, CLICKS),
}


@dataclass(frozen=True)
class Engagement:
    """Something that happened to one delivery after it left."""

    kind: EngagementKind
    delivery_id: int
    at: datetime
    machine: bool = False
    """An open or click by a proxy or a scanner (core.engagement.is_machine)."""
    key: str = ""
    """Tells apart events of one kind on one delivery, e.g. which link was clicked."""
    properties: dict[str, Any] = field(default_factory=dict)
    """Added to the event's properties (`link_url`, the provider's `reason`, …)."""
    source: str = ""
    """Who reported it: `pixel`, `link`, `sendgrid`, `twilio`."""
    subscription_group: str | None = None
    """For `unsubscribed`: the group the user left (None: every group on the channel)."""


@dataclass(frozen=True)
class Recorded:
    found: bool
    """False when no delivery has that id (nothing recorded)."""
    first: bool = False
    """The first of its kind on this delivery (it counted)."""
    event_written: bool = False
    user_id: str | None = None


async def record_engagement(session: AsyncSession, engagement: Engagement) -> Recorded:
    """Record one engagement in the caller's transaction; repeating it counts nothing twice
    (only `opens` and `clicks`, the totals, count every time)."""
    kind = engagement.kind
    totals = TOTALS.get(kind)
    values: dict[str, Any] = {}
    if totals is not None:
        values[totals[0].key] = totals[0] + 1
    first_at = FIRST_AT.get(kind)
    human_at = HUMAN_AT.get(kind) if not engagement.machine else None
    # The first statement locks the row until commit (PostgreSQL), so two engagements of
    # one delivery take turns; it returns when the kind was first seen (the UPDATE leaves
    # those columns alone), so a repeat costs this one statement and no more.
    touched = await session.execute(
        update(Delivery)
        .where(Delivery.id == engagement.delivery_id)
        .values(**values, updated_at=Delivery.updated_at)
        .returning(
            Delivery.campaign_id,
            Delivery.campaign_version,
            Delivery.step_id,
            Delivery.variant,
            Delivery.user_id,
            Delivery.channel,
            Delivery.provider_message_id,
            (first_at if first_at is not None else Delivery.id).label("first_at"),
            (human_at if human_at is not None else Delivery.id).label("human_at"),
        )
    )
    row = touched.first()
    if row is None:
        return Recorded(found=False)
    counts: list[Bump] = []

    def count(metric: str) -> None:
        counts.append(
            Bump(
                campaign_id=row.campaign_id,
                campaign_version=row.campaign_version,
                step_id=row.step_id,
                variant=row.variant,
                metric=metric,
                at=engagement.at,
            )
        )

    if totals is not None:
        count(totals[1])
    first = False
    if kind is EngagementKind.unsubscribed:
        first = True  # no column: each report is the user's choice, the event dedups it
    elif first_at is not None and row.first_at is None:
        first = await _first(session, engagement.delivery_id, first_at, engagement.at)
        if first:
            count(engagement_metric(kind))
    human_first = False
    if human_at is not None and row.human_at is None:
        human_first = await _first(session, engagement.delivery_id, human_at, engagement.at)
        if human_first:
            count(HUMAN_METRIC[kind])

    if (kind in SUPPRESSES and first) or kind is EngagementKind.unsubscribed:
        person = await canonical_user(session, row.user_id)
        if kind is EngagementKind.unsubscribed:
            await set_subscription_status(
                session=session,
                user_id=person,
                channel=row.channel,
                group=engagement.subscription_group or "*",
                status=SubscriptionStatus.unsubscribed,
                source=SubscriptionSource.link,
                at=engagement.at,
            )
        else:
            reason = event_name(row.channel, kind).lower()
            await add_suppression(
                session=session,
                user_id=person,
                channel=row.channel,
                reason=f"{reason} (delivery {engagement.delivery_id})",
            )

    written = False
    # A click event per link (a journey may wait for one link), an open event once: each
    # once for a person and once for a machine, by its messageId.
    if first or human_first or kind is EngagementKind.clicked:
        written = await _write_event(session, engagement, row)
    # Last: the aggregate rows are the ones every engagement of the campaign touches, so
    # their locks are held for as short a time as the transaction allows.
    await bump(session, *counts)
    return Recorded(
        found=True, first=first or human_first, event_written=written, user_id=row.user_id
    )


async def _write_event(session: AsyncSession, engagement: Engagement, row: Any) -> bool:
    """The user event of an engagement (Segment's Email spec name), into the outbox."""
    kind = engagement.kind
    who = "machine" if engagement.machine else "human"
    key = ":".join(part for part in (engagement.key, who if kind in HUMAN_AT else "") if part)
    message_id = event_message_id(engagement.delivery_id, kind, key)
    name = event_name(row.channel, kind)
    properties = {
        "delivery_id": engagement.delivery_id,
        "email_id": row.provider_message_id or str(engagement.delivery_id),
        "campaign_id": row.campaign_id,
        "campaign_version": row.campaign_version,
        "step_id": row.step_id,
        "variant": row.variant,
        "channel": row.channel,
        "machine": engagement.machine,
        "source": engagement.source,
        **engagement.properties,
    }
    stored = await record_events(
        session=session,
        events=[
            NewEvent(
                message_id=message_id,
                type="track",
                name=name,
                user_id=row.user_id,
                timestamp=engagement.at,
                payload={
                    "type": "track",
                    "event": name,
                    "userId": row.user_id,
                    "messageId": message_id,
                    "timestamp": engagement.at.isoformat(),
                    "properties": properties,
                },
            )
        ],
    )
    return stored[0][1]


async def _first(
    session: AsyncSession, delivery_id: int, column: InstrumentedAttribute[Any] | None, at: datetime
) -> bool:
    """Set the column if it is still empty; True when this call set it."""
    if column is None:
        return False
    result = await session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, column.is_(None))
        .values({column.key: at})
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def find_delivery_id(session: AsyncSession, provider_message_id: str) -> int | None:
    """The delivery a provider's report is about, by the id the provider gave it."""
    result = await session.execute(
        select(Delivery.id).where(Delivery.provider_message_id == provider_message_id).limit(1)
    )
    return result.scalar_one_or_none()
