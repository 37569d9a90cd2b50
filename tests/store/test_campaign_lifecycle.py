"""tests.store: campaign lifecycle — a changed definition of an activated campaign is a draft
version until published; publishing (and rolling back) under concurrent operators; the
0007 migration's backfill of what was published before drafts existed. SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import JSON, Connection, Integer, String, column, insert, select, table

from core.definition import CampaignStatus
from store.campaigns import (
    CampaignNotFound,
    CampaignStateError,
    VersionUnavailable,
    get_campaign,
    list_versions,
    publish_version,
    save_campaign,
    version_state,
)
from store.db import alembic_config, create_engine, migrate, session_factory
from store.models import CampaignVersion, UTCDateTime
from tests.store.test_campaigns import Sessions, cart, publish, save, status_of

S = CampaignStatus


async def states(sessions: Sessions, campaign_id: str = "cart") -> tuple[int, dict[int, str]]:
    """(current version, {version: live/draft/retired})."""
    async with sessions() as session:
        campaign = await get_campaign(session=session, campaign_id=campaign_id)
        assert campaign is not None
        versions = await list_versions(session=session, campaign_id=campaign_id)
        return campaign.current_version, {v.version: version_state(campaign, v) for v in versions}


async def test_a_change_to_an_activated_campaign_waits_as_a_draft_until_published(
    sessions: Sessions,
) -> None:
    await save(sessions, cart())
    assert await states(sessions) == (1, {1: "draft"})  # never activated: nothing published
    await status_of(sessions, "cart", S.active)  # the first activation publishes version 1
    assert await states(sessions) == (1, {1: "live"})

    assert await save(sessions, cart(body="v2", name="Cart v2")) == (2, True)
    assert await states(sessions) == (1, {1: "live", 2: "draft"})
    async with sessions() as session:
        campaign = await get_campaign(session=session, campaign_id="cart")
        assert campaign is not None and campaign.name == "Cart"  # the live version's name
    # The draft's content again, or the live one's: nothing new to store.
    assert await save(sessions, cart(body="v2", name="Cart v2")) == (2, False)
    assert await save(sessions, cart()) == (1, False)
    # A pause and a resume keep the live version: the draft is still not entered.
    await status_of(sessions, "cart", S.paused)
    await status_of(sessions, "cart", S.active)
    assert await states(sessions) == (1, {1: "live", 2: "draft"})

    done = await publish(sessions, "cart")  # default: the latest
    assert (done.version.version, done.previous, done.changed) == (2, 1, True)
    assert done.campaign.name == "Cart v2"
    assert await states(sessions) == (2, {1: "retired", 2: "live"})
    again = await publish(sessions, "cart", 2)
    assert (again.changed, again.version.published_at) == (False, done.version.published_at)

    back = await publish(sessions, "cart", 1)  # a rollback
    assert (back.previous, back.changed, back.campaign.name) == (2, True, "Cart")
    assert await states(sessions) == (1, {1: "live", 2: "retired"})
    assert back.version.published_at is not None and done.version.published_at is not None
    assert back.version.published_at >= done.version.published_at
    # The retired version's content is its version, not a new one; publishing brings it back.
    assert await save(sessions, cart(body="v2", name="Cart v2")) == (2, False)
    assert (await publish(sessions, "cart")).version.version == 2
    # What `?activate=true` does: save, publish what was saved, activate — one transaction.
    async with sessions() as session:
        campaign, version, written = await save_campaign(
            session=session, definition=cart(body="v3")
        )
        assert (campaign.current_version, version.version, written) == (2, 3, True)
        done = await publish_version(session=session, campaign_id="cart", version=version.version)
        assert done.campaign.current_version == 3
        await session.rollback()  # nothing of it happened
    assert await states(sessions) == (2, {1: "retired", 2: "live"})


async def test_publish_refuses_what_cannot_go_live(sessions: Sessions) -> None:
    async with sessions() as session:
        with pytest.raises(CampaignNotFound, match="no campaign 'nope'"):
            await publish_version(session=session, campaign_id="nope")
    await save(sessions, cart())
    async with sessions() as session:
        with pytest.raises(VersionUnavailable, match="version 9 does not exist") as raised:
            await publish_version(session=session, campaign_id="cart", version=9)
        assert raised.value.missing
    # A stored version today's rules refuse would be skipped by routing: not published.
    async with sessions() as session:
        session.add(
            CampaignVersion(
                campaign_id="cart", version=2, definition={"id": "cart"}, definition_hash="x"
            )
        )
        await session.commit()
    async with sessions() as session:
        with pytest.raises(VersionUnavailable, match="no longer validates") as raised:
            await publish_version(session=session, campaign_id="cart", version=2)
        assert not raised.value.missing
    await status_of(sessions, "cart", S.archived)
    async with sessions() as session:
        with pytest.raises(CampaignStateError, match="archived"):
            await publish_version(session=session, campaign_id="cart", version=1)
    assert (await states(sessions))[0] == 1


async def test_operators_racing_publish_and_save_leave_one_consistent_answer(
    sessions: Sessions,
) -> None:
    """Publishes and saves at once: each is one transaction behind the campaign's lock, so
    the current version is always a published one and version numbers never repeat."""
    await save(sessions, cart())
    await status_of(sessions, "cart", S.active)
    await save(sessions, cart(body="v2"))

    async def saved(body: str) -> int:
        return (await save(sessions, cart(body=body)))[0]

    async def published(version: int | None) -> int:
        return (await publish(sessions, "cart", version)).version.version

    results = await asyncio.gather(
        published(1), published(2), saved("v3"), published(None), saved("v4")
    )
    assert {results[2], results[4]} == {3, 4}
    current, by_version = await states(sessions)
    assert sorted(by_version) == [1, 2, 3, 4]
    assert by_version[current] == "live"
    assert list(by_version.values()).count("live") == 1


# -- the migration ------------------------------------------------------------------------


def _old(table_name: str, /, **types: Any) -> Any:
    return table(table_name, *(column(n, t) for n, t in types.items()))


async def test_upgrading_counts_what_was_live_before_drafts_as_published(
    blank_database_url: str,
) -> None:
    """Before 0007 saving made each version current at once: every version up to the
    current one of a campaign that left draft was live (from when it was saved); a draft
    campaign's never were."""

    def to_0006(connection: Connection) -> None:
        config = alembic_config(blank_database_url)
        config.attributes["connection"] = connection
        command.downgrade(config, "0006")

    at = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    document = cart().model_dump(mode="json", by_alias=True)
    text_, time_, int_ = String(), UTCDateTime(), Integer()
    campaigns = {"live": ("active", 2), "gone": ("archived", 1), "new": ("draft", 2)}
    versions = {"live": 3, "gone": 1, "new": 2}  # live v3: past current, as a stray row
    await migrate(blank_database_url)
    engine = create_engine(blank_database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(to_0006)
            await connection.execute(
                insert(
                    _old(
                        "campaigns",
                        id=text_,
                        name=text_,
                        status=text_,
                        current_version=int_,
                        created_at=time_,
                        updated_at=time_,
                    )
                ),
                [
                    dict(id=i, name=i, status=s, current_version=c, created_at=at, updated_at=at)
                    for i, (s, c) in campaigns.items()
                ],
            )
            await connection.execute(
                insert(
                    _old(
                        "campaign_versions",
                        campaign_id=text_,
                        version=int_,
                        definition=JSON(),
                        definition_hash=text_,
                        created_at=time_,
                    )
                ),
                [
                    dict(
                        campaign_id=i,
                        version=n,
                        definition=document,
                        definition_hash=f"h{n}",
                        created_at=at + timedelta(hours=n),
                    )
                    for i, count in versions.items()
                    for n in range(1, count + 1)
                ],
            )
        await migrate(blank_database_url)
        sessions = session_factory(engine)
        async with sessions() as session:
            rows = await session.execute(
                select(
                    CampaignVersion.campaign_id,
                    CampaignVersion.version,
                    CampaignVersion.published_at,
                ).order_by(CampaignVersion.campaign_id, CampaignVersion.version)
            )
            published = {(c, n): p for c, n, p in rows}
        assert published == {
            ("gone", 1): at + timedelta(hours=1),
            ("live", 1): at + timedelta(hours=1),
            ("live", 2): at + timedelta(hours=2),
            ("live", 3): None,
            ("new", 1): None,
            ("new", 2): None,
        }
        assert await states(sessions, "live") == (2, {1: "retired", 2: "live", 3: "draft"})
    finally:
        await engine.dispose()
