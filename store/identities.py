"""store: identities — which ids are one person. An anonymous visitor (`anon:<anonymousId>`)
or an earlier userId, once linked by `identify` or `alias`, is the person their user id
names: one profile, one set of event counters, one segment membership, one cap count.

Links are kept flat: every linked id points at the person's canonical id (the user id no
other id links beyond), so resolving an id is one read. Linking an id that others already
point at (`alias` of a user who had an anonymous past) re-points those too.

An id belongs to the first person it was linked to: a later identify that names another
user for the same anonymous id (a shared device whose SDK was not reset) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.db import dialect_insert
from store.models import DateTrait, EventCounter, Identity, Profile, SegmentMembership, now
from store.profiles import TraitChanges, get_profile, merge_traits

MAX_HOPS = 8
"""Links are flat; more than one hop only appears between two racing links, never a loop."""


def anonymous_key(anonymous_id: str) -> str:
    """How events name an anonymous visitor: the id a journey runs under."""
    return f"anon:{anonymous_id}"


@dataclass
class Linked:
    """What a `link` did."""

    linked: bool
    """False when nothing changed: already linked (to this person or another), or the two
    ids are already one person."""
    user_id: str
    """The person's canonical id."""
    changes: TraitChanges = field(default_factory=dict)
    """Traits the person's profile gained from the linked id's (old, new)."""


async def canonical_user(session: AsyncSession, user_id: str) -> str:
    """The id the person is known by: the user an id is linked to, else the id itself."""
    current = user_id
    for _ in range(MAX_HOPS):
        linked = await session.scalar(
            select(Identity.user_id).where(Identity.anonymous_id == current)
        )
        if linked is None or linked == current:
            return current
        current = linked
    return current


async def person_ids(session: AsyncSession, user_id: str) -> list[str]:
    """Every id of the person `user_id` is: the canonical id first, then the ids linked to
    it (sorted). One statement when `user_id` is the canonical id (the common case)."""
    rows = (
        await session.execute(
            select(Identity.anonymous_id, Identity.user_id).where(
                or_(Identity.anonymous_id == user_id, Identity.user_id == user_id)
            )
        )
    ).all()
    if any(anonymous == user_id and linked != user_id for anonymous, linked in rows):
        canonical = await canonical_user(session, user_id)
        linked_ids = await session.scalars(
            select(Identity.anonymous_id)
            .where(Identity.user_id == canonical, Identity.anonymous_id != canonical)
            .order_by(Identity.anonymous_id)
        )
        return [canonical, *linked_ids]
    return [user_id, *sorted(a for a, linked in rows if linked == user_id and a != user_id)]


async def person_profile(session: AsyncSession, user_id: str) -> Profile | None:
    """The profile of the person `user_id` is (a journey that started under an anonymous
    id reads the traits — the email, the phone — the person gave once they logged in)."""
    return await get_profile(session=session, user_id=await canonical_user(session, user_id))


async def link(
    session: AsyncSession, *, anonymous_id: str, user_id: str, message_id: str
) -> Linked:
    """Make `anonymous_id` (as events name it: `anon:<anonymousId>`, or a previous userId)
    the person `user_id` is. Idempotent.

    Run it in the ingestion transaction: the link, the profile merge (the user's own traits
    win where both have one), the event counters summed into the person's and the linked
    id's segment memberships dropped (the person's are due for a recheck) commit with the
    message that linked them, or not at all.
    """
    target = await canonical_user(session, user_id)
    if anonymous_id in (user_id, target):
        return Linked(linked=False, user_id=target)
    table = Identity.__table__
    inserted = await session.execute(
        dialect_insert(session, table)
        .values(anonymous_id=anonymous_id, user_id=target, message_id=message_id, linked_at=now())
        .on_conflict_do_nothing(index_elements=["anonymous_id"])
        .returning(table.c.anonymous_id)
    )
    if inserted.first() is None:
        return Linked(linked=False, user_id=await canonical_user(session, anonymous_id))
    # Whoever was linked to the id being linked now is the same person too: keep it flat.
    await session.execute(
        update(Identity).where(Identity.user_id == anonymous_id).values(user_id=target)
    )
    changes = await _merge_profiles(session, source=anonymous_id, target=target)
    await _move_counters(session, source=anonymous_id, target=target)
    await session.execute(
        delete(SegmentMembership).where(SegmentMembership.user_id == anonymous_id)
    )
    await session.execute(
        update(SegmentMembership)
        .where(SegmentMembership.user_id == target)
        .values(recheck_at=now())
    )
    # The person's date traits are recorded from the merged profile; the linked id's would
    # greet the same person twice.
    await session.execute(delete(DateTrait).where(DateTrait.user_id == anonymous_id))
    return Linked(linked=True, user_id=target, changes=changes)


async def _merge_profiles(session: AsyncSession, *, source: str, target: str) -> TraitChanges:
    """Fold the linked id's profile into the person's, the person's own traits winning, and
    drop it: reads go to the person's profile from now on."""
    linked = await session.get(Profile, source, with_for_update=True, populate_existing=True)
    if linked is None:
        return {}
    own = await session.get(Profile, target, with_for_update=True, populate_existing=True)
    mine = own.traits if own is not None else {}
    gained = {k: v for k, v in linked.traits.items() if k not in mine}
    changes: TraitChanges = {}
    if gained or own is None:
        await merge_traits(session=session, user_id=target, traits=gained, changes=changes)
    await session.delete(linked)
    await session.flush()
    return changes


async def _move_counters(session: AsyncSession, *, source: str, target: str) -> None:
    """Sum the linked id's per-day event counters into the person's."""
    rows = (
        await session.execute(
            select(EventCounter.counter, EventCounter.day, EventCounter.count).where(
                EventCounter.user_id == source
            )
        )
    ).all()
    if not rows:
        return
    table = EventCounter.__table__
    for counter, day, count in rows:
        insert = dialect_insert(session, table).values(
            user_id=target, counter=counter, day=day, count=count
        )
        await session.execute(
            insert.on_conflict_do_update(
                index_elements=["user_id", "counter", "day"],
                set_={"count": table.c.count + insert.excluded.count},
            )
        )
    await session.execute(delete(EventCounter).where(EventCounter.user_id == source))
