"""api.campaign_index: the routing index is read in a fixed number of queries, whatever the
number of campaigns and versions, and each version's definition is read once per process."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.campaign_index import CampaignIndexLoader
from core.definition import CampaignStatus
from store.campaigns import publish_version, save_campaign, set_status
from store.models import CampaignVersion
from tests.fixtures.api import make_settings
from tests.store.test_campaigns import cart

Sessions = async_sessionmaker[AsyncSession]


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def add_campaigns(sessions: Sessions, first: int, last: int) -> None:
    async with sessions() as session, session.begin():
        for i in range(first, last):
            await save_campaign(session=session, definition=cart(f"c{i}"))
            await save_campaign(session=session, definition=cart(f"c{i}", body="v2"))
            await set_status(session=session, campaign_id=f"c{i}", status=CampaignStatus.active)


def definitions_read(seen: list[str]) -> int:
    return sum("campaign_versions.definition" in s for s in seen)


async def test_a_reload_costs_the_same_for_one_campaign_or_twenty(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    loader = CampaignIndexLoader(sessions=sessions, settings=make_settings("sqlite://", "x:1"))
    await add_campaigns(sessions, 0, 1)
    with statements(engine) as few:
        index = await loader.reload()
    assert [c.campaign_id for c in index.entries[("track", "cart_updated")]] == ["c0"]

    await add_campaigns(sessions, 1, 20)
    fresh = CampaignIndexLoader(sessions=sessions, settings=loader.settings)
    with statements(engine) as many:
        index = await fresh.reload()
    assert len(index.entries[("track", "cart_updated")]) == 20
    assert len(many) == len(few)  # no query per campaign or per version
    assert definitions_read(many) == 1

    # Versions never change: a reload reads definitions only of versions it has not seen.
    with statements(engine) as again:
        await fresh.reload()
    assert definitions_read(again) == 0
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=cart("c3", body="v3"))
    with statements(engine) as one_new:
        index = await fresh.reload()
    assert definitions_read(one_new) == 1
    # c3 is active: its new version is a draft, and new journeys still enter version 2.
    entered = {(c.campaign_id, c.version) for c in index.entries[("track", "cart_updated")]}
    assert ("c3", 2) in entered and ("c3", 3) not in entered
    async with sessions() as session, session.begin():
        await publish_version(session=session, campaign_id="c3")
    with statements(engine) as published:
        index = await fresh.reload()
    assert definitions_read(published) == 0
    entered = {(c.campaign_id, c.version) for c in index.entries[("track", "cart_updated")]}
    assert ("c3", 3) in entered and ("c3", 2) not in entered


async def test_a_version_that_no_longer_validates_is_left_out_and_said_once(
    sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    await add_campaigns(sessions, 0, 2)
    async with sessions() as session, session.begin():
        # What a stricter rule in a later release would make of a stored version.
        await session.execute(
            update(CampaignVersion)
            .where(CampaignVersion.campaign_id == "c1", CampaignVersion.version == 2)
            .values(definition={"id": "c1", "steps": []})
        )
    loader = CampaignIndexLoader(sessions=sessions, settings=make_settings("sqlite://", "x:1"))
    with caplog.at_level(logging.ERROR, logger="nudge.routing"):
        index = await loader.reload()
        await loader.reload()
    assert [c.campaign_id for c in index.entries[("track", "cart_updated")]] == ["c0"]
    assert index.reactions["order_paid"] == {"c0", "c1"}  # c1's first version still reacts
    refused = [r.getMessage() for r in caplog.records if "no longer validates" in r.getMessage()]
    assert len(refused) == 1 and "campaign 'c1' version 2" in refused[0]
