"""tests.api: the relay's lane — a goal of one user is routed while thousands of other
users' entry events are still pending, and never before the user's own earlier events.

A real dev server and the real journey: the user with a running journey converts. The
backlog's events are routed slowly, one at a time, by a router that only waits for them
(they are other users', no journey of theirs matters here).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.campaign_index import CampaignIndexLoader
from api.relay import Relay, lane_names
from api.router import EventRouter, Outcome
from core.definition import CampaignDefinition, CampaignStatus
from core.journey import JourneyResult, JourneyStatus, journey_id
from store.campaigns import save_campaign, set_status
from store.events import NewEvent, record_events
from store.models import Event
from temporal.client import TemporalConnection, converter_for
from temporal.servers import DevServer
from tests.fixtures.api import eventually, make_settings
from worker.build import create_worker, worker_activities

Sessions = async_sessionmaker[AsyncSession]

ENTRY, GOAL = "Cart Filled", "Order Completed"
CAMPAIGN: dict[str, Any] = {
    "id": "lanes",
    "name": "A week's wait, unless the user pays",
    "entry": {"event": ENTRY},
    "goals": [{"event": GOAL}],
    "steps": [
        {"id": "wait", "type": "wait", "duration": "7d", "next": "remind"},
        {"id": "remind", "type": "send", "channel": "sandbox", "template": "reminder"},
    ],
    "templates": {"reminder": {"body": "Your cart misses you"}},
}
BACKLOG = 30
SLOW = 0.04
"""Seconds each backlog event takes to route: the backlog drains in BACKLOG * SLOW."""


class SlowBacklog(EventRouter):
    """The real router for `ada`; the others' events only take their time. Records the
    order in which routing began."""

    def __init__(self, *, calls: list[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.calls = calls

    async def route(self, event: Event) -> Outcome:
        self.calls.append(event.message_id)
        if event.user_id != "ada":
            await asyncio.sleep(SLOW)
            return Outcome.routed
        return await super().route(event)


def track(message_id: str, user_id: str, name: str) -> NewEvent:
    return NewEvent(
        message_id=message_id,
        type="track",
        name=name,
        user_id=user_id,
        timestamp=datetime.now(UTC),
        payload={"type": "track", "event": name, "userId": user_id},
    )


async def record(sessions: Sessions, events: list[NewEvent]) -> None:
    async with sessions() as session:
        await record_events(session=session, events=events)
        await session.commit()


async def statuses(sessions: Sessions) -> dict[str, str]:
    async with sessions() as session:
        return {e.message_id: e.status for e in await session.scalars(select(Event))}


async def test_a_goal_overtakes_other_users_backlog_never_its_own_users_entry(
    database_url: str, sessions: Sessions, dev_server: DevServer
) -> None:
    settings = make_settings(database_url, dev_server.address)
    definition = CampaignDefinition.model_validate(CAMPAIGN)
    async with sessions() as session:
        await save_campaign(session=session, definition=definition)
        await set_status(session=session, campaign_id="lanes", status=CampaignStatus.active)
        await session.commit()
    campaigns = CampaignIndexLoader(sessions=sessions, settings=settings)
    assert lane_names(await campaigns.reload()) == {GOAL}
    calls: list[str] = []
    router = SlowBacklog(
        calls=calls,
        sessions=sessions,
        temporal=TemporalConnection(
            settings.temporal_address,
            settings.temporal_namespace,
            converter=converter_for(settings),
        ),
        campaigns=campaigns,
        settings=settings,
    )
    relay = Relay(router=router, sessions=sessions, settings=settings, concurrency=1)

    async with worker_activities(settings, dev_server.client) as activities:
        async with create_worker(dev_server.client, activities, task_queue=settings.task_queue):
            await router.temporal.start()
            relay.start()
            try:
                await record(sessions, [track("ada-cart", "ada", ENTRY)])
                relay.wake()
                await eventually(lambda: _status_is(sessions, "ada-cart", "routed"), timeout=10)
                # Other users' entries, bob's among them, then bob's goal and ada's.
                backlog = [track(f"other-{i}", f"user-{i}", ENTRY) for i in range(BACKLOG)]
                backlog.insert(BACKLOG // 2, track("bob-cart", "bob", ENTRY))
                await record(
                    sessions,
                    [*backlog, track("bob-paid", "bob", GOAL), track("ada-paid", "ada", GOAL)],
                )
                relay.wake()
                await eventually(
                    lambda: _status_is(sessions, "ada-paid", "routed"), timeout=BACKLOG * SLOW
                )
                assert await _pending(sessions) > 0, "the backlog drained first"

                handle = dev_server.client.get_workflow_handle(
                    journey_id("lanes", "ada", settings.user_secret), result_type=JourneyResult
                )
                result = await asyncio.wait_for(handle.result(), 10)
                assert result.status is JourneyStatus.converted
                assert result.sends == 0

                await eventually(lambda: _all_settled(sessions), timeout=BACKLOG * SLOW + 10)
            finally:
                await relay.stop()
                await router.temporal.close()

    # bob's goal waited for bob's own entry, however far back in the backlog it was.
    assert calls.index("bob-paid") > calls.index("bob-cart")
    assert calls.index("ada-paid") < calls.index("bob-cart")
    assert sorted(calls) == sorted({*calls}), "an event was routed twice"
    assert set((await statuses(sessions)).values()) == {"routed"}


async def _status_is(sessions: Sessions, message_id: str, status: str) -> bool:
    return (await statuses(sessions)).get(message_id) == status


async def _pending(sessions: Sessions) -> int:
    async with sessions() as session:
        statement = select(func.count()).select_from(Event).where(Event.status == "pending")
        return await session.scalar(statement) or 0


async def _all_settled(sessions: Sessions) -> bool:
    return await _pending(sessions) == 0
