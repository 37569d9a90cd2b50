"""tests.store: journey entries — one row per journey started, however often the router asks."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.entries import count_entries, entered, record_entry, started_by
from store.models import JourneyEntry

Sessions = async_sessionmaker[AsyncSession]


async def enter(
    sessions: Sessions,
    *,
    user_id: str = "u1",
    run_id: str = "run-1",
    message_id: str = "m1",
    campaign_id: str = "cart",
) -> bool:
    async with sessions() as session:
        written = await record_entry(
            session=session,
            campaign_id=campaign_id,
            campaign_version=1,
            user_id=user_id,
            workflow_id=f"journey/{campaign_id}/{user_id}",
            run_id=run_id,
            entry_message_id=message_id,
        )
        await session.commit()
        return written


async def test_a_new_journey_is_recorded(sessions: Sessions) -> None:
    both = ["cart", "other"]
    async with sessions() as session:
        assert await entered(session=session, user_id="u1", campaign_ids=both) == set()
        assert await count_entries(session=session, campaign_id="cart") == 0
    assert await enter(sessions) is True
    async with sessions() as session:
        assert await entered(session=session, user_id="u1", campaign_ids=both) == {"cart"}
        assert await entered(session=session, user_id="u2", campaign_ids=both) == set()
        assert await entered(session=session, user_id="u1", campaign_ids=[]) == set()
        assert await started_by(session=session, entry_message_id="m1", campaign_ids=both) == {
            "cart"
        }
        assert await started_by(session=session, entry_message_id="m2", campaign_ids=both) == set()
        assert await count_entries(session=session, campaign_id="cart") == 1
        entry = await session.scalar(select(JourneyEntry))
    assert entry is not None
    assert (entry.workflow_id, entry.run_id, entry.campaign_version) == (
        "journey/cart/u1",
        "run-1",
        1,
    )
    assert entry.entered_at.tzinfo is not None


async def test_joining_a_running_journey_adds_no_row(sessions: Sessions) -> None:
    assert await enter(sessions, run_id="run-1", message_id="m1") is True
    # A later event's signal-with-start found the journey running: same run id.
    assert await enter(sessions, run_id="run-1", message_id="m2") is False
    async with sessions() as session:
        assert await count_entries(session=session, campaign_id="cart") == 1


async def test_a_retried_entry_event_adds_no_row(sessions: Sessions) -> None:
    assert await enter(sessions, run_id="run-1", message_id="m1") is True
    assert await enter(sessions, run_id="run-2", message_id="m1") is False
    # The same event may start journeys in other campaigns.
    assert await enter(sessions, run_id="run-3", message_id="m1", campaign_id="welcome") is True


async def test_re_entry_after_exit_is_a_second_row(sessions: Sessions) -> None:
    assert await enter(sessions, run_id="run-1", message_id="m1") is True
    assert await enter(sessions, run_id="run-2", message_id="m2") is True
    assert await enter(sessions, user_id="u2", run_id="run-3", message_id="m3") is True
    async with sessions() as session:
        assert await count_entries(session=session, campaign_id="cart") == 3
        assert await count_entries(session=session, campaign_id="welcome") == 0


async def test_concurrent_routers_record_one_entry(sessions: Sessions) -> None:
    results = await asyncio.gather(*(enter(sessions) for _ in range(6)))
    assert sorted(results) == [False] * 5 + [True]
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(JourneyEntry)) == 1
