"""tests.store: campaigns — versioning by content, the status machine, the active index."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import store.campaigns
from core.definition import CampaignDefinition, CampaignStatus, parse_campaign
from store.campaigns import (
    CampaignConflict,
    CampaignNotFound,
    CampaignStateError,
    Published,
    definition_hash,
    definition_of,
    get_campaign,
    get_version,
    get_versions,
    latest_change,
    list_campaigns,
    list_versions,
    publish_version,
    save_campaign,
    set_status,
    version_keys,
)
from store.models import CampaignVersion

Sessions = async_sessionmaker[AsyncSession]
S = CampaignStatus


def cart(
    campaign_id: str = "cart", *, body: str = "Your cart misses you", name: str = "Cart"
) -> CampaignDefinition:
    """A small cart-abandonment campaign; `body` and `name` make changed versions."""
    return parse_campaign(
        {
            "id": campaign_id,
            "name": name,
            "entry": {"event": "cart_updated"},
            "goals": [{"event": "order_paid"}],
            "steps": [
                {
                    "id": "wait",
                    "type": "wait_for",
                    "event": "order_paid",
                    "timeout": "24h",
                    "on_timeout": "vip",
                },
                {
                    "id": "vip",
                    "type": "branch",
                    "branches": [
                        {
                            "conditions": [{"path": "traits.vip", "op": "eq", "value": True}],
                            "next": "remind",
                        }
                    ],
                    "else": "remind",
                },
                {"id": "remind", "type": "send", "channel": "sms", "template": "reminder"},
            ],
            "templates": {"reminder": {"body": body}},
        }
    )


async def save(sessions: Sessions, definition: CampaignDefinition) -> tuple[int, bool]:
    async with sessions() as session:
        _, version, written = await save_campaign(session=session, definition=definition)
        await session.commit()
        return version.version, written


async def publish(sessions: Sessions, campaign_id: str, version: int | None = None) -> Published:
    async with sessions() as session:
        done = await publish_version(session=session, campaign_id=campaign_id, version=version)
        await session.commit()
        return done


async def status_of(sessions: Sessions, campaign_id: str, status: CampaignStatus) -> None:
    async with sessions() as session:
        await set_status(session=session, campaign_id=campaign_id, status=status)
        await session.commit()


async def test_a_new_campaign_is_a_draft_at_version_1(sessions: Sessions) -> None:
    definition = cart()
    async with sessions() as session:
        campaign, version, written = await save_campaign(session=session, definition=definition)
        await session.commit()
    assert written is True
    assert (campaign.id, campaign.name, campaign.status) == ("cart", "Cart", "draft")
    assert campaign.current_version == 1 == version.version
    assert version.definition_hash == definition_hash(definition)

    async with sessions() as session:
        stored = await get_version(session=session, campaign_id="cart", version=1)
        assert stored is not None
        # The `else` alias survives the round trip, so the stored JSON re-validates.
        assert stored.definition["steps"][1]["else"] == "remind"
        assert definition_of(stored) == definition
        fetched = await get_campaign(session=session, campaign_id="cart")
        assert fetched is not None and fetched.created_at.tzinfo is not None


async def test_saving_the_same_definition_writes_no_version(sessions: Sessions) -> None:
    assert await save(sessions, cart()) == (1, True)
    # Equal content parsed again (a fresh object) is still the same version.
    assert await save(sessions, cart()) == (1, False)
    async with sessions() as session:
        assert [v.version for v in await list_versions(session=session, campaign_id="cart")] == [1]


async def test_a_changed_definition_is_the_next_version(sessions: Sessions) -> None:
    original = cart()
    await save(sessions, original)
    changed = cart(body="Still thinking about it?", name="Cart reminder")
    assert await save(sessions, changed) == (2, True)

    async with sessions() as session:
        campaign = await get_campaign(session=session, campaign_id="cart")
        assert campaign is not None
        assert (campaign.current_version, campaign.name) == (2, "Cart reminder")
        versions = await list_versions(session=session, campaign_id="cart")
        assert [v.version for v in versions] == [1, 2]
        # Version 1 is what journeys that started on it still read: unchanged.
        assert definition_of(versions[0]) == original
        assert versions[0].definition_hash == definition_hash(original)
        assert definition_of(versions[1]) == changed
        assert await get_version(session=session, campaign_id="cart", version=3) is None

    # Going back to the first content is a change too: version 3, not a pointer to 1.
    assert await save(sessions, original) == (3, True)


async def test_an_archived_campaign_takes_no_new_versions(sessions: Sessions) -> None:
    await save(sessions, cart())
    await status_of(sessions, "cart", S.archived)
    async with sessions() as session:
        with pytest.raises(CampaignStateError, match="archived"):
            await save_campaign(session=session, definition=cart(body="new"))


async def test_saving_keeps_the_status(sessions: Sessions) -> None:
    await save(sessions, cart())
    await status_of(sessions, "cart", S.active)
    await save(sessions, cart(body="v2"))
    async with sessions() as session:
        campaign = await get_campaign(session=session, campaign_id="cart")
        assert campaign is not None and campaign.status == "active"


ALLOWED = {
    (S.draft, S.active),
    (S.active, S.paused),
    (S.paused, S.active),
    (S.draft, S.archived),
    (S.active, S.archived),
    (S.paused, S.archived),
}
PATHS = {S.draft: [], S.active: [S.active], S.paused: [S.active, S.paused]}


async def _campaign_in(sessions: Sessions, status: CampaignStatus) -> None:
    await save(sessions, cart())
    for step in PATHS.get(status, [S.archived]):
        await status_of(sessions, "cart", step)


@pytest.mark.parametrize("start", list(S), ids=str)
@pytest.mark.parametrize("target", list(S), ids=str)
async def test_status_machine(
    sessions: Sessions, start: CampaignStatus, target: CampaignStatus
) -> None:
    await _campaign_in(sessions, start)
    async with sessions() as session:
        before = await get_campaign(session=session, campaign_id="cart")
        assert before is not None and before.status == start
        touched = before.updated_at
    async with sessions() as session:
        if (start, target) in ALLOWED or start == target:
            campaign = await set_status(session=session, campaign_id="cart", status=target)
            await session.commit()
            assert campaign.status == target
            if start == target:
                assert campaign.updated_at == touched  # a no-op writes nothing
            else:
                assert campaign.updated_at > touched
        else:
            with pytest.raises(CampaignStateError) as raised:
                await set_status(session=session, campaign_id="cart", status=target)
            assert f"is {start.value} and cannot become {target.value}" in str(raised.value)
            assert "draft→active, active→paused, paused→active" in str(raised.value)
    async with sessions() as session:
        after = await get_campaign(session=session, campaign_id="cart")
        expected = target if (start, target) in ALLOWED else start
        assert after is not None and after.status == expected


async def test_set_status_of_an_unknown_campaign(sessions: Sessions) -> None:
    async with sessions() as session:
        with pytest.raises(CampaignNotFound, match="no campaign 'nope'"):
            await set_status(session=session, campaign_id="nope", status=S.active)


async def test_list_campaigns_by_status(sessions: Sessions) -> None:
    for campaign_id in ("c", "a", "b"):
        await save(sessions, cart(campaign_id))
    await status_of(sessions, "b", S.active)
    async with sessions() as session:
        assert [c.id for c in await list_campaigns(session=session)] == ["a", "b", "c"]
        active = await list_campaigns(session=session, status=S.active)
        assert [c.id for c in active] == ["b"]
        drafts = await list_campaigns(session=session, status=S.draft)
        assert [c.id for c in drafts] == ["a", "c"]
        assert await list_campaigns(session=session, status=S.archived) == []


async def test_version_keys_mark_the_current_versions_of_active_campaigns(
    sessions: Sessions,
) -> None:
    for campaign_id in ("draft", "live", "paused"):
        await save(sessions, cart(campaign_id))
    await status_of(sessions, "live", S.active)
    await status_of(sessions, "paused", S.active)
    await status_of(sessions, "paused", S.paused)
    await save(sessions, cart("live", body="v2"))  # a draft version: 1 stays live
    async with sessions() as session:
        keys = await version_keys(session=session)
        assert [(k.campaign_id, k.version, k.live, k.current) for k in keys] == [
            ("draft", 1, False, True),
            ("live", 1, True, True),
            ("live", 2, False, False),
            ("paused", 1, False, True),
        ]
    await publish(sessions, "live")

    async with sessions() as session:
        keys = await version_keys(session=session)
        assert [(k.campaign_id, k.version, k.live) for k in keys] == [
            ("draft", 1, False),
            ("live", 1, False),
            ("live", 2, True),
            ("paused", 1, False),
        ]
        [v2] = await get_versions(session=session, keys=[("live", 2)])
        assert definition_of(v2).templates["reminder"].body == "v2"
        both = await get_versions(session=session, keys=[("live", 1), ("paused", 1), ("x", 1)])
        assert sorted((v.campaign_id, v.version) for v in both) == [("live", 1), ("paused", 1)]


async def test_latest_change_moves_with_every_change(sessions: Sessions) -> None:
    async with sessions() as session:
        assert await latest_change(session=session) is None

    async def latest() -> datetime:
        async with sessions() as session:
            value = await latest_change(session=session)
            assert value is not None and value.tzinfo is not None
            return value

    await save(sessions, cart())
    created = await latest()
    await save(sessions, cart())  # unchanged: nothing to reload
    assert await latest() == created
    await status_of(sessions, "cart", S.active)
    activated = await latest()
    assert activated > created
    await save(sessions, cart(body="v2"))
    assert await latest() > activated


async def test_concurrent_saves_get_distinct_versions(sessions: Sessions) -> None:
    await save(sessions, cart())
    bodies = [f"variant {i}" for i in range(5)]
    results = await asyncio.gather(*(save(sessions, cart(body=b)) for b in bodies))
    assert sorted(number for number, _ in results) == [2, 3, 4, 5, 6]
    assert all(written for _, written in results)
    async with sessions() as session:
        versions = await list_versions(session=session, campaign_id="cart")
        campaign = await get_campaign(session=session, campaign_id="cart")
    assert [v.version for v in versions] == [1, 2, 3, 4, 5, 6]
    assert campaign is not None and campaign.current_version == 6


async def test_concurrent_first_saves_of_one_definition_write_one_version(
    sessions: Sessions,
) -> None:
    results = await asyncio.gather(*(save(sessions, cart()) for _ in range(5)))
    assert sorted(results) == [(1, False)] * 4 + [(1, True)]
    async with sessions() as session:
        count = await session.scalar(select(func.count()).select_from(CampaignVersion))
    assert count == 1


async def test_the_next_version_follows_the_highest_stored(sessions: Sessions) -> None:
    """current_version may point back one day (a rollback); numbers never repeat."""
    await save(sessions, cart())
    stray = cart(body="stray")
    async with sessions() as session:
        session.add(
            CampaignVersion(
                campaign_id="cart",
                version=2,
                definition=stray.model_dump(mode="json", by_alias=True),
                definition_hash=definition_hash(stray),
            )
        )
        await session.commit()
    assert await save(sessions, cart(body="v3")) == (3, True)


# The forced collision also collides in the session's identity map; SQLAlchemy says so.
@pytest.mark.filterwarnings("ignore:New instance:sqlalchemy.exc.SAWarning")
async def test_a_version_number_taken_meanwhile_is_a_clear_conflict(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the lock ever bypassed, the primary key still refuses; the error says what to do."""
    await save(sessions, cart())

    async def stale_latest(session: AsyncSession, campaign_id: str) -> int:
        return 0  # as if version 1 had not been committed yet when we looked

    monkeypatch.setattr(store.campaigns, "_latest_version", stale_latest)
    async with sessions() as session:
        with pytest.raises(CampaignConflict, match="roll back and save again"):
            await save_campaign(session=session, definition=cart(body="v2"))
        await session.rollback()
    async with sessions() as session:
        versions = await list_versions(session=session, campaign_id="cart")
    assert [v.version for v in versions] == [1]
    assert issubclass(CampaignConflict, CampaignStateError)
