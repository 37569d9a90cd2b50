"""tests.store: the journeys running a campaign version, and moving them to another (what a
migration reads and records), on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.entries import record_entry
from store.journey_versions import move_to_version, running_on_version_page
from store.models import JourneyEntry

Sessions = async_sessionmaker[AsyncSession]


async def on_version(session: AsyncSession, campaign_id: str, version: int) -> list[str]:
    """Every journey recorded as running on the version: one page as large as the test."""
    return await running_on_version_page(
        session=session, campaign_id=campaign_id, version=version, after=None, limit=100
    )


async def test_running_journeys_of_a_version_and_moving_them(sessions: Sessions) -> None:
    async with sessions() as session:
        for i, (campaign, version, user) in enumerate(
            [
                ("cart", 1, "a"),
                ("cart", 1, "b"),
                ("cart", 2, "c"),
                ("other", 1, "d"),
                ("cart", 1, "e"),
            ]
        ):
            await record_entry(
                session=session,
                campaign_id=campaign,
                campaign_version=version,
                user_id=user,
                workflow_id=f"journey/{campaign}/{user}",
                run_id=f"run-{i}",
                entry_message_id=f"m-{i}",
            )
        # e's journey ended: not running, never moved.
        await session.execute(
            update(JourneyEntry).where(JourneyEntry.user_id == "e").values(status="converted")
        )
        await session.commit()
    async with sessions() as session:
        found = await on_version(session, "cart", 1)
        assert found == ["journey/cart/a", "journey/cart/b"]
        moved = await move_to_version(
            session=session,
            campaign_id="cart",
            workflow_ids=["journey/cart/a", "journey/cart/e", "journey/other/d"],
            from_version=1,
            to_version=2,
        )
        await session.commit()
    assert moved == 1
    async with sessions() as session:
        assert await on_version(session, "cart", 1) == ["journey/cart/b"]
        assert await on_version(session, "cart", 2) == [
            "journey/cart/a",
            "journey/cart/c",
        ]
        assert await on_version(session, "other", 1) == ["journey/other/d"]


async def test_a_version_read_a_keyset_page_at_a_time(sessions: Sessions) -> None:
    """Pages by workflow id after the cursor, each journey once (a re-entry's second row
    too), whether the page before moved its journeys or left them."""
    async with sessions() as session:
        for i, user in enumerate(["a", "b", "c", "d", "e", "b"]):
            await record_entry(
                session=session,
                campaign_id="cart",
                campaign_version=1,
                user_id=user,
                workflow_id=f"journey/cart/{user}",
                run_id=f"run-{i}",
                entry_message_id=f"m-{i}",
            )
        await session.commit()

    async def page(after: str | None) -> list[str]:
        async with sessions() as session:
            return await running_on_version_page(
                session=session, campaign_id="cart", version=1, after=after, limit=2
            )

    first = await page(None)
    assert first == ["journey/cart/a", "journey/cart/b"]
    async with sessions() as session:
        await move_to_version(
            session=session, campaign_id="cart", workflow_ids=first, from_version=1, to_version=2
        )
        await session.commit()
    second = await page(first[-1])
    assert second == ["journey/cart/c", "journey/cart/d"]  # c and d stay on version 1
    assert await page(second[-1]) == ["journey/cart/e"]
    assert await page("journey/cart/e") == []
