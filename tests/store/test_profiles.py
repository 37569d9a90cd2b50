"""tests.store: profiles — shallow trait merges that survive concurrent identify calls."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.models import Profile
from store.profiles import get_profile, merge_traits

Sessions = async_sessionmaker[AsyncSession]


async def merge(sessions: Sessions, user_id: str, traits: dict[str, Any]) -> dict[str, Any]:
    async with sessions() as session:
        profile = await merge_traits(session=session, user_id=user_id, traits=traits)
        await session.commit()
        return dict(profile.traits)


async def test_a_first_merge_creates_the_profile(sessions: Sessions) -> None:
    async with sessions() as session:
        assert await get_profile(session=session, user_id="u1") is None
    assert await merge(sessions, "u1", {"email": "a@example.com"}) == {"email": "a@example.com"}
    async with sessions() as session:
        profile = await get_profile(session=session, user_id="u1")
    assert profile is not None
    assert profile.traits == {"email": "a@example.com"}
    assert profile.created_at.tzinfo is not None


async def test_merges_are_shallow_and_new_keys_win(sessions: Sessions) -> None:
    await merge(
        sessions, "u1", {"email": "a@example.com", "plan": "free", "address": {"city": "X"}}
    )
    merged = await merge(sessions, "u1", {"plan": "pro", "address": {"zip": "1"}, "vip": True})
    assert merged == {
        "email": "a@example.com",
        "plan": "pro",
        "address": {"zip": "1"},  # replaced whole, as Segment's identify does
        "vip": True,
    }
    async with sessions() as session:
        profile = await get_profile(session=session, user_id="u1")
    assert profile is not None and profile.traits == merged


async def test_an_empty_merge_creates_an_empty_profile_and_changes_nothing(
    sessions: Sessions,
) -> None:
    assert await merge(sessions, "u1", {}) == {}
    await merge(sessions, "u1", {"a": 1})
    async with sessions() as session:
        before = await get_profile(session=session, user_id="u1")
        assert before is not None
        touched = before.updated_at
    assert await merge(sessions, "u1", {}) == {"a": 1}
    assert await merge(sessions, "u1", {"a": 1}) == {"a": 1}
    async with sessions() as session:
        after = await get_profile(session=session, user_id="u1")
    assert after is not None and after.updated_at == touched


async def test_merge_updates_a_profile_the_session_already_holds(sessions: Sessions) -> None:
    await merge(sessions, "u1", {"a": 1})
    async with sessions() as session:
        held = await get_profile(session=session, user_id="u1")
        assert held is not None
        await merge(sessions, "u1", {"b": 2})  # another request, meanwhile
        profile = await merge_traits(session=session, user_id="u1", traits={"c": 3})
        await session.commit()
    assert profile is held
    assert profile.traits == {"a": 1, "b": 2, "c": 3}


async def test_concurrent_merges_for_a_new_user_keep_every_key(sessions: Sessions) -> None:
    await asyncio.gather(*(merge(sessions, "new-user", {f"k{i}": i}) for i in range(6)))
    async with sessions() as session:
        rows = await session.scalar(select(func.count()).select_from(Profile))
        profile = await get_profile(session=session, user_id="new-user")
    assert rows == 1
    assert profile is not None
    assert profile.traits == {f"k{i}": i for i in range(6)}
