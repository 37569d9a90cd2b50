"""store: user profiles — the traits `identify` calls and `update_profile` steps write."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from store.db import dialect_insert
from store.models import Profile


async def merge_traits(*, session: AsyncSession, user_id: str, traits: dict[str, Any]) -> Profile:
    """Create the profile or merge `traits` into it: top-level keys, new values win.

    Shallow on purpose, as Segment's identify is: `{"address": {...}}` replaces the whole
    address. Inserting first (ON CONFLICT DO NOTHING) and then reading the row locked
    makes two concurrent merges for a new user both succeed, and neither loses the other's
    keys.
    """
    created = await session.execute(
        dialect_insert(session, Profile.__table__)
        .values(user_id=user_id, traits=dict(traits))
        .on_conflict_do_nothing(index_elements=["user_id"])
        .returning(Profile.__table__.c.user_id)
    )
    is_new = created.first() is not None
    profile = await session.get(Profile, user_id, with_for_update=True, populate_existing=True)
    if profile is None:  # pragma: no cover - the row was inserted or existed a moment ago
        raise LookupError(f"profile {user_id!r} vanished while merging traits")
    if not is_new:
        merged = {**profile.traits, **traits}
        if merged != profile.traits:
            profile.traits = merged
            await session.flush()
    return profile


async def get_profile(*, session: AsyncSession, user_id: str) -> Profile | None:
    return await session.get(Profile, user_id)
