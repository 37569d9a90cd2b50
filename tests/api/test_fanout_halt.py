"""tests.api: a fan-out's page stops entering users once its campaign is paused or
archived — found so at the start of the page, or between two chunks — and starts nobody
more: no row, no journey; a new version published meanwhile changes nothing (the page
keeps the version it fired with); a retried page that finds its campaign paused still
records the journey its dead attempt started, and starts none.

Real parts: the `start_audience_page` activity (ActivityEnvironment) against the session's
dev server and SQLite or PostgreSQL; the operator's change is made with the store's own
functions by a temporalio client interceptor (`AtJourneyStart`) at the Nth journey start,
so it lands between two chunks deterministically.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment

from activities.fanout import FanOutActivities
from core.config import Settings
from core.definition import CampaignDefinition, CampaignStatus
from core.fanout import FanOutTarget, PageRequest, PageResult, entry_event
from core.journey import JourneyInput, journey_id
from store.campaigns import get_campaign, publish_version, save_campaign, set_status
from store.entries import reserve_entries
from store.models import JourneyEntry, Profile, now
from temporal.journeys import start_journey
from temporal.servers import DevServer
from tests.api.conftest import end_journeys_left
from tests.fixtures.api import make_settings
from tests.fixtures.temporal import AtJourneyStart

MEMBERS = 5
CHUNK = 2
"""The page's chunk (RECORD_EVERY): 5 members are 3 chunks, 2 + 2 + 1."""

Action = Callable[[AsyncSession, str], Awaitable[None]]


def storm(campaign_id: str, duration: str = "24h") -> dict[str, Any]:
    return {
        "id": campaign_id,
        "name": "Storm warning",
        "entry": {
            "trigger": "storm",
            "audience": {"conditions": [{"path": "traits.city", "value": "Bergen"}]},
        },
        "steps": [{"id": "later", "type": "wait", "duration": duration}],
    }


async def pause(session: AsyncSession, campaign_id: str) -> None:
    await set_status(session=session, campaign_id=campaign_id, status=CampaignStatus.paused)


async def archive(session: AsyncSession, campaign_id: str) -> None:
    await set_status(session=session, campaign_id=campaign_id, status=CampaignStatus.archived)


async def publish_v2(session: AsyncSession, campaign_id: str) -> None:
    """Save a changed definition (a draft version 2) and publish it: the campaign stays
    active, new journeys would enter version 2."""
    changed = CampaignDefinition.model_validate(storm(campaign_id, duration="48h"))
    await save_campaign(session=session, definition=changed)
    await publish_version(session=session, campaign_id=campaign_id, version=2)


def change_at_start(
    sessions: async_sessionmaker[AsyncSession], action: Action | None, at: int = 1
) -> AtJourneyStart:
    """Every journey the page starts, in `started`; at the `at`-th, before it goes on, the
    operator's `action` is done to the campaign and committed."""

    async def before(journey: JourneyInput) -> None:
        if action is not None and len(watcher.started) == at:
            async with sessions() as session:
                await action(session, journey.campaign_id)
                await session.commit()

    watcher = AtJourneyStart(before)
    return watcher


def started(watcher: AtJourneyStart) -> list[tuple[str, int]]:
    """(user, version) of every journey the page started."""
    return [(j.user_id, j.campaign_version) for j in watcher.started]


@dataclasses.dataclass
class Page:
    campaign_id: str
    members: list[str]
    request: PageRequest
    client: Client
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]

    def activities(self, watcher: AtJourneyStart) -> FanOutActivities:
        return FanOutActivities(
            sessions=self.sessions,
            client=watcher.wrap(self.client),
            settings=self.settings,
            record_every=CHUNK,
        )

    async def rows(self) -> list[tuple[str, int, str | None]]:
        """(user, version, run id) of the campaign's entry rows, by user."""
        async with self.sessions() as session:
            found = await session.execute(
                select(JourneyEntry.user_id, JourneyEntry.campaign_version, JourneyEntry.run_id)
                .where(JourneyEntry.campaign_id == self.campaign_id)
                .order_by(JourneyEntry.user_id)
            )
            return [(u, v, r) for u, v, r in found.all()]

    async def journey_exists(self, user: str) -> bool:
        try:
            await self.client.get_workflow_handle(journey_id(self.campaign_id, user)).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True


@pytest.fixture
async def page(sessions: async_sessionmaker[AsyncSession], dev_server: DevServer) -> Any:
    """An active campaign of version 1 whose audience is MEMBERS users of Bergen (and one
    of Oslo, left out), and the request of its first page, as a trigger fired it."""
    run = uuid.uuid4().hex[:8]
    campaign_id = f"halt-{run}"
    definition = CampaignDefinition.model_validate(storm(campaign_id))
    members = [f"{run}-{i}" for i in range(MEMBERS)]
    async with sessions() as session:
        await save_campaign(session=session, definition=definition)
        await set_status(session=session, campaign_id=campaign_id, status=CampaignStatus.active)
        session.add_all(Profile(user_id=u, traits={"city": "Bergen"}) for u in members)
        session.add(Profile(user_id=f"{run}-oslo", traits={"city": "Oslo"}))
        await session.commit()
    target = FanOutTarget(
        campaign_id=campaign_id,
        campaign_version=1,
        campaign_name=definition.name,
        plan=definition.plan(),
        audience=definition.entry.audience,  # type: ignore[union-attr]
    )
    request = PageRequest(
        occurrence=f"trigger/storm/{run}", entry_name="storm", fired_at=now(), target=target
    )
    # No worker on its task queue: the journeys wait, and are ended after.
    settings = make_settings("sqlite://", dev_server.address)
    try:
        yield Page(campaign_id, members, request, dev_server.client, settings, sessions)
    finally:
        await end_journeys_left(dev_server.client, settings.task_queue)


@pytest.mark.parametrize("action", [pause, archive])
async def test_a_campaign_stopped_before_the_page_enters_nobody(page: Page, action: Action) -> None:
    async with page.sessions() as session:
        await action(session, page.campaign_id)
        await session.commit()
    watcher = change_at_start(page.sessions, None)
    result = await ActivityEnvironment().run(
        page.activities(watcher).start_audience_page, page.request
    )
    status = "paused" if action is pause else "archived"
    assert result == PageResult(after=None, halted=status)
    assert started(watcher) == []
    assert await page.rows() == []
    assert not await page.journey_exists(page.members[0])


@pytest.mark.parametrize("action", [pause, archive])
async def test_a_campaign_stopped_during_a_chunk_enters_nobody_after_it(
    page: Page, action: Action
) -> None:
    """Stopped at the first start: the first chunk (2) is under way and starts, the rest
    (3) are neither recorded nor started."""
    watcher = change_at_start(page.sessions, action, at=1)
    result = await ActivityEnvironment().run(
        page.activities(watcher).start_audience_page, page.request
    )
    status = "paused" if action is pause else "archived"
    assert (result.after, result.halted, result.started, result.skipped) == (None, status, 2, 1)
    first, rest = page.members[:CHUNK], page.members[CHUNK:]
    assert [u for u, _ in started(watcher)] == first
    rows = await page.rows()
    assert [(u, v) for u, v, _ in rows] == [(u, 1) for u in first]
    assert None not in [r for _, _, r in rows]
    for user in first:
        assert await page.journey_exists(user)
    for user in rest:
        assert not await page.journey_exists(user)


async def test_a_version_published_during_the_page_changes_nothing(page: Page) -> None:
    """Still active: every member enters, on the version the trigger fired with."""
    watcher = change_at_start(page.sessions, publish_v2, at=1)
    result = await ActivityEnvironment().run(
        page.activities(watcher).start_audience_page, page.request
    )
    # Not halted: the page ends at its last user (the Oslo one), the fan-out goes on.
    assert (result.halted, result.started, result.skipped) == (None, MEMBERS, 1)
    assert result.after is not None and result.after.endswith("-oslo")
    assert started(watcher) == [(u, 1) for u in page.members]
    assert [(u, v) for u, v, _ in await page.rows()] == [(u, 1) for u in page.members]
    async with page.sessions() as session:
        campaign = await get_campaign(session=session, campaign_id=page.campaign_id)
    assert campaign is not None and (campaign.status, campaign.current_version) == ("active", 2)


async def test_a_retried_page_of_a_paused_campaign_records_what_its_dead_attempt_started(
    page: Page,
) -> None:
    """The first attempt wrote the first chunk's rows, started the first member's journey
    and died; the campaign was paused before the retry. The retry starts nobody, records
    that journey (its memo names this occurrence), and deletes the other row: left, it would
    read as a running journey, and keep its user out of a `re_entry: once` campaign."""
    request, (started_user, unstarted_user) = page.request, page.members[:CHUNK]
    async with page.sessions() as session:
        await reserve_entries(
            session=session,
            campaign_id=page.campaign_id,
            campaign_version=1,
            entries=[
                (u, journey_id(page.campaign_id, u), entry_event(request, u).message_id)
                for u in (started_user, unstarted_user)
            ],
        )
        await session.commit()
    run_id = await start_journey(
        page.client,
        task_queue=page.settings.task_queue,
        secret=None,
        campaign_id=page.campaign_id,
        campaign_version=1,
        campaign_name="Storm warning",
        plan=request.target.plan,
        user_id=started_user,
        entry_event=entry_event(request, started_user),
        signal=False,
    )
    async with page.sessions() as session:
        await pause(session, page.campaign_id)
        await session.commit()
    watcher = change_at_start(page.sessions, None)
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2)
    result = await retry.run(page.activities(watcher).start_audience_page, request)
    assert (result.after, result.halted, result.started, result.already) == (
        None,
        "paused",
        0,
        1,
    )
    assert started(watcher) == []
    assert await page.rows() == [(started_user, 1, run_id)]
    assert not await page.journey_exists(unstarted_user)
