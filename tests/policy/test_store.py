"""Subscriptions, suppressions and the send ledger on real SQLite and PostgreSQL — above
all: concurrent checks for one user cannot both take the last slot of a cap."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from core.policy import CapCheck
from store.caps import Reservation, count_sends, release_send, reserve_send
from store.models import Profile, SendReservation
from store.profiles import merge_traits
from store.subscriptions import (
    ALL_GROUPS,
    SubscriptionSource,
    SubscriptionStatus,
    add_suppression,
    get_suppression,
    list_subscriptions,
    remove_suppression,
    resubscribe_channel,
    set_subscription,
    unsubscribed_from,
    users_with_trait,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ONE_A_DAY = CapCheck(limit=1, window=timedelta(hours=24), label="cap: 1 message per 24h")


async def reserve(sessions, key: str, *, caps=(ONE_A_DAY,), at=NOW, **fields) -> Reservation:
    values = {"user_id": "ada", "channel": "email", "campaign_id": "cart", "group": "marketing"}
    async with sessions() as session, session.begin():
        return await reserve_send(
            session=session,
            idempotency_key=key,
            priority="normal",
            caps=list(caps),
            at=at,
            **(values | fields),
        )


async def ledger_rows(sessions, user_id: str = "ada") -> int:
    async with sessions() as session:
        stmt = select(func.count()).where(SendReservation.user_id == user_id)
        return int((await session.execute(stmt)).scalar_one())


async def test_concurrent_checks_cannot_both_take_the_last_slot(sessions) -> None:
    for round_ in range(5):
        user = f"racer-{round_}"
        results = await asyncio.gather(
            *(reserve(sessions, f"{user}-k{i}", user_id=user) for i in range(6))
        )
        assert sum(r.allowed for r in results) == 1, results
        assert {r.hit for r in results if not r.allowed} == {ONE_A_DAY}
        assert await ledger_rows(sessions, user) == 1


async def test_concurrent_checks_fill_a_cap_exactly(sessions) -> None:
    three = CapCheck(limit=3, window=timedelta(hours=24), label="cap: 3 per 24h")
    results = await asyncio.gather(*(reserve(sessions, f"k{i}", caps=[three]) for i in range(10)))
    assert sum(r.allowed for r in results) == 3
    assert await ledger_rows(sessions) == 3


async def test_other_users_are_not_counted_or_blocked(sessions) -> None:
    results = await asyncio.gather(
        *(reserve(sessions, f"u{i}", user_id=f"user-{i}") for i in range(6))
    )
    assert all(r.allowed for r in results)


async def test_a_retried_check_finds_its_reservation(sessions) -> None:
    first = await reserve(sessions, "k1")
    again = await reserve(sessions, "k1")
    other = await reserve(sessions, "k2")
    assert first.allowed and not first.existing
    assert again.allowed and again.existing
    assert not other.allowed and other.hit == ONE_A_DAY
    assert await ledger_rows(sessions) == 1


async def test_the_window_slides_and_narrowed_caps_count_only_their_sends(sessions) -> None:
    assert (await reserve(sessions, "old", at=NOW - timedelta(hours=25))).allowed
    assert (await reserve(sessions, "now")).allowed  # the old one is outside the window

    sms = CapCheck(limit=1, window=timedelta(hours=24), label="sms", channel="sms")
    news = CapCheck(limit=1, window=timedelta(hours=24), label="news", group="news")
    campaign = CapCheck(limit=1, window=timedelta(days=7), label="camp", campaign_id="promo")
    narrowed = [sms, news, campaign]
    assert (await reserve(sessions, "a", caps=narrowed, channel="push", campaign_id="x")).allowed
    assert (await reserve(sessions, "b", caps=narrowed, channel="sms", campaign_id="y")).allowed
    hit = await reserve(sessions, "c", caps=narrowed, channel="sms", campaign_id="z")
    assert hit.hit == sms
    assert (await reserve(sessions, "d", caps=narrowed, group="news", campaign_id="z")).allowed
    hit = await reserve(sessions, "d2", caps=narrowed, group="news", campaign_id="z")
    assert hit.hit == news
    assert (await reserve(sessions, "e", caps=narrowed, campaign_id="promo")).allowed
    hit = await reserve(sessions, "f", caps=narrowed, campaign_id="promo")
    assert hit.hit == campaign
    async with sessions() as session:
        assert await count_sends(session=session, user_id="ada", cap=campaign, at=NOW) == 1
        assert await release_send(session=session, idempotency_key="e")
        await session.commit()
    assert (await reserve(sessions, "g", caps=narrowed, campaign_id="promo")).allowed


async def test_subscriptions_default_to_subscribed_and_upsert_idempotently(sessions) -> None:
    async with sessions() as session:
        assert (
            await unsubscribed_from(
                session=session, user_id="ada", channel="email", group="marketing"
            )
            is None
        )
        changed = await set_subscription(
            session=session,
            user_id="ada",
            channel="email",
            group="marketing",
            status=SubscriptionStatus.unsubscribed,
            source=SubscriptionSource.link,
            at=NOW,
        )
        repeated = await set_subscription(
            session=session,
            user_id="ada",
            channel="email",
            group="marketing",
            status=SubscriptionStatus.unsubscribed,
            source=SubscriptionSource.api,
            at=NOW + timedelta(days=1),
        )
        await session.commit()
        assert changed and not repeated
        [row] = await list_subscriptions(session=session, user_id="ada")
        assert (row.status, row.source, row.updated_at) == ("unsubscribed", "link", NOW)
        assert await unsubscribed_from(
            session=session, user_id="ada", channel="email", group="marketing"
        )
        assert not await unsubscribed_from(
            session=session, user_id="ada", channel="email", group="product_news"
        )
        assert not await unsubscribed_from(
            session=session, user_id="ada", channel="sms", group="marketing"
        )


async def test_concurrent_unsubscribes_leave_one_row(sessions) -> None:
    async def unsubscribe() -> None:
        async with sessions() as session, session.begin():
            await set_subscription(
                session=session,
                user_id="ada",
                channel="email",
                group="marketing",
                status=SubscriptionStatus.unsubscribed,
                source=SubscriptionSource.link,
            )

    await asyncio.gather(*(unsubscribe() for _ in range(5)))
    async with sessions() as session:
        assert len(await list_subscriptions(session=session, user_id="ada")) == 1


async def test_channel_wide_stop_and_start(sessions) -> None:
    async with sessions() as session:
        for group in ("news", ALL_GROUPS):
            await set_subscription(
                session=session,
                user_id="ada",
                channel="sms",
                group=group,
                status=SubscriptionStatus.unsubscribed,
                source=SubscriptionSource.sms_stop,
            )
        await session.commit()
        row = await unsubscribed_from(session=session, user_id="ada", channel="sms", group="x")
        assert row is not None and row.subscription_group == ALL_GROUPS
        row = await unsubscribed_from(session=session, user_id="ada", channel="sms", group="news")
        assert row is not None and row.subscription_group == "news"

        await resubscribe_channel(
            session=session, user_id="ada", channel="sms", source=SubscriptionSource.sms_start
        )
        await session.commit()
        rows = await list_subscriptions(session=session, user_id="ada")
        assert {(r.subscription_group, r.status, r.source) for r in rows} == {
            ("*", "subscribed", "sms_start"),
            ("news", "subscribed", "sms_start"),
        }


async def test_suppressions(sessions) -> None:
    async with sessions() as session:
        await add_suppression(session=session, user_id="ada", channel="email", reason="550 gone")
        await add_suppression(session=session, user_id="ada", channel="email", reason="again")
        await session.commit()
        row = await get_suppression(session=session, user_id="ada", channel="email")
        assert row is not None and row.reason == "550 gone"
        assert await get_suppression(session=session, user_id="ada", channel="sms") is None
        assert await remove_suppression(session=session, user_id="ada", channel="email")
        await session.commit()
        assert not await remove_suppression(session=session, user_id="ada", channel="email")


async def test_users_by_phone_trait(sessions) -> None:
    async with sessions() as session:
        await merge_traits(session=session, user_id="ada", traits={"phone": "+15550001"})
        await merge_traits(session=session, user_id="bob", traits={"phone": "+15550001"})
        await merge_traits(session=session, user_id="cy", traits={"phone": "+15550002"})
        await merge_traits(session=session, user_id="dee", traits={"phone": 15550001})
        await merge_traits(session=session, user_id="eve", traits={})
        await session.commit()
        found = await users_with_trait(session=session, trait="phone", value="+15550001")
        assert sorted(found) == ["ada", "bob"]
        assert await session.scalar(select(func.count()).select_from(Profile)) == 5
