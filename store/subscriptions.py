"""store: consent — subscriptions per user, channel and group, and hard-bounce suppressions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.db import dialect_insert
from store.models import Profile, Subscription, Suppression, now

ALL_GROUPS = "*"
"""The group that stands for every group on a channel (an SMS STOP opts out of all)."""


class SubscriptionStatus(StrEnum):
    subscribed = "subscribed"
    unsubscribed = "unsubscribed"


class SubscriptionSource(StrEnum):
    """Who changed a subscription last: what an operator reads when a user asks why."""

    link = "link"
    """The unsubscribe link in an email (page or RFC 8058 one-click)."""
    sms_stop = "sms_stop"
    """STOP (or UNSUBSCRIBE, CANCEL, …) texted to our number."""
    sms_start = "sms_start"
    """START or UNSTOP texted to our number."""
    api = "api"
    """An operator or another system, through the admin API."""


async def set_subscription(
    *,
    session: AsyncSession,
    user_id: str,
    channel: str,
    group: str,
    status: SubscriptionStatus,
    source: SubscriptionSource,
    at: datetime | None = None,
) -> bool:
    """Record a user's choice; True when it changed anything.

    One upsert, race-safe: two requests at once leave one row. Repeating the same choice
    changes nothing, so `updated_at` and `source` keep saying when and how it was made.
    """
    table = Subscription.__table__
    stmt = dialect_insert(session, table).values(
        user_id=user_id,
        channel=channel,
        subscription_group=group,
        status=status.value,
        source=source.value,
        updated_at=at or now(),
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["user_id", "channel", "subscription_group"],
        set_={
            "status": stmt.excluded.status,
            "source": stmt.excluded.source,
            "updated_at": stmt.excluded.updated_at,
        },
        where=table.c.status != stmt.excluded.status,
    )
    result = await session.execute(stmt)
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def resubscribe_channel(
    *, session: AsyncSession, user_id: str, channel: str, source: SubscriptionSource
) -> None:
    """Subscribe a user again to every group on a channel (an SMS START)."""
    await set_subscription(
        session=session,
        user_id=user_id,
        channel=channel,
        group=ALL_GROUPS,
        status=SubscriptionStatus.subscribed,
        source=source,
    )
    await session.execute(
        update(Subscription)
        .where(
            Subscription.user_id == user_id,
            Subscription.channel == channel,
            Subscription.status == SubscriptionStatus.unsubscribed.value,
        )
        .values(status=SubscriptionStatus.subscribed.value, source=source.value, updated_at=now())
    )


async def list_subscriptions(*, session: AsyncSession, user_id: str) -> list[Subscription]:
    """The user's recorded choices (anything not listed is subscribed)."""
    result = await session.scalars(
        select(Subscription)
        .where(Subscription.user_id == user_id)
        .order_by(Subscription.channel, Subscription.subscription_group)
        .execution_options(populate_existing=True)
    )
    return list(result.all())


async def unsubscribed_from(
    *, session: AsyncSession, user_id: str, channel: str, group: str
) -> Subscription | None:
    """The row that opts this user out of `group` on `channel` (the group's own, or the
    channel-wide `*`), or None: subscribed, the default."""
    result = await session.scalars(
        select(Subscription)
        .where(
            Subscription.user_id == user_id,
            Subscription.channel == channel,
            Subscription.subscription_group.in_([group, ALL_GROUPS]),
            Subscription.status == SubscriptionStatus.unsubscribed.value,
        )
        .order_by(Subscription.subscription_group.desc())  # the group's own row first
        .limit(1)
    )
    return result.first()


async def users_with_trait(*, session: AsyncSession, trait: str, value: str) -> list[str]:
    """Ids of the profiles whose string trait `trait` equals `value` (e.g. a phone number).

    A scan of the JSON column: fine for STOP messages, which are rare; an expression index
    on `traits->>'phone'` is the step up when profiles number in the millions.
    """
    result = await session.scalars(
        select(Profile.user_id).where(Profile.traits[trait].as_string() == value)
    )
    return list(result.all())


async def add_suppression(
    *, session: AsyncSession, user_id: str, channel: str, reason: str
) -> None:
    """Never send on `channel` to this user again (a hard bounce); the first reason stays."""
    await session.execute(
        dialect_insert(session, Suppression.__table__)
        .values(user_id=user_id, channel=channel, reason=reason[:2000], created_at=now())
        .on_conflict_do_nothing(index_elements=["user_id", "channel"])
    )


async def remove_suppression(*, session: AsyncSession, user_id: str, channel: str) -> bool:
    """Lift a suppression (the user fixed their address); True when there was one."""
    row = await session.get(Suppression, (user_id, channel))
    if row is None:
        return False
    await session.delete(row)
    await session.flush()
    return True


async def get_suppression(
    *, session: AsyncSession, user_id: str, channel: str
) -> Suppression | None:
    return await session.get(Suppression, (user_id, channel), populate_existing=True)


async def list_suppressions(*, session: AsyncSession, user_id: str) -> Sequence[Suppression]:
    result = await session.scalars(
        select(Suppression).where(Suppression.user_id == user_id).order_by(Suppression.channel)
    )
    return list(result.all())
