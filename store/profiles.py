"""store: user profiles — the traits `identify` calls (and any call's `context.traits`)
write, and the device tokens a push provider reports gone."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.sms import normalise_phone
from store.dates import record_date_traits
from store.db import dialect_insert
from store.models import Event, Profile

TraitChanges = dict[str, tuple[Any, Any]]
"""Each trait a merge changed: name -> (old value, new value); old is None for a new trait."""


async def merge_traits(
    *,
    session: AsyncSession,
    user_id: str,
    traits: dict[str, Any],
    changes: TraitChanges | None = None,
) -> Profile:
    """Create the profile or merge `traits` into it: top-level keys, new values win.
    `changes`, when given, receives what the merge changed (read under the row's lock, so
    two concurrent merges of one value do not both report it).

    Shallow on purpose, as Segment's identify is: `{"address": {...}}` replaces the whole
    address. Inserting first (ON CONFLICT DO NOTHING) and then reading the row locked
    makes two concurrent merges for a new user both succeed, and neither loses the other's
    keys. A `phone` is stored as E.164 where it can be (core.sms.normalise_phone).
    """
    if "phone" in traits:
        traits = {**traits, "phone": normalise_phone(traits["phone"])}
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
    if changes is not None:
        old = {} if is_new else profile.traits
        changes.update(
            {k: (old.get(k), v) for k, v in traits.items() if k not in old or old[k] != v}
        )
    if not is_new:
        merged = {**profile.traits, **traits}
        if merged != profile.traits:
            profile.traits = merged
            await session.flush()
    await record_date_traits(session, user_id, traits)
    return profile


async def get_profile(*, session: AsyncSession, user_id: str) -> Profile | None:
    return await session.get(Profile, user_id)


async def remove_push_token(*, session: AsyncSession, user_id: str, token: str) -> bool:
    """Forget one device token the push provider called unregistered; True if it was there.

    Takes it out of `push_tokens` (a list) and drops `push_token` (a single string) when it
    is that token; every other trait stays. The row is read locked, as `merge_traits`
    does, so an `identify` writing traits at the same moment is not lost (on SQLite the
    writer lock serialises the two).
    """
    profile = await session.get(Profile, user_id, with_for_update=True, populate_existing=True)
    if profile is None:
        return False
    traits = dict(profile.traits)
    removed = False
    tokens = traits.get("push_tokens")
    if isinstance(tokens, list) and token in tokens:
        traits["push_tokens"] = [t for t in tokens if t != token]
        removed = True
    if traits.get("push_token") == token:
        del traits["push_token"]
        removed = True
    if removed:
        profile.traits = traits  # a new dict: the JSON column only sees reassignment
        await session.flush()
    return removed


async def first_and_last_seen(
    *, session: AsyncSession, user_ids: Sequence[str]
) -> tuple[datetime | None, datetime | None]:
    """When the person's earliest and latest stored events happened (any of their ids), by
    the events' own timestamps; (None, None) for a person with no event stored."""
    if not user_ids:
        return None, None
    row = (
        await session.execute(
            select(func.min(Event.timestamp), func.max(Event.timestamp)).where(
                Event.user_id.in_(list(user_ids))
            )
        )
    ).one()
    return row[0], row[1]
