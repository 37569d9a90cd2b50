"""tests.store: identities — an anonymous visitor linked to the user they turn out to be is one
person: one canonical id, one profile, one set of counters, memberships due for a recheck."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.policy import CapCheck
from store.caps import reserve_send
from store.identities import Linked, canonical_user, link, person_ids, person_profile
from store.models import DateTrait, EventCounter, Identity, Segment, SegmentMembership
from store.profiles import get_profile, merge_traits

Sessions = async_sessionmaker[AsyncSession]
DAY = date(2026, 11, 30)


async def linked(sessions: Sessions, anonymous_id: str, user_id: str, message_id: str) -> Linked:
    async with sessions() as session:
        result = await link(
            session, anonymous_id=anonymous_id, user_id=user_id, message_id=message_id
        )
        await session.commit()
        return result


async def traits(sessions: Sessions, user_id: str) -> dict[str, Any] | None:
    async with sessions() as session:
        profile = await get_profile(session=session, user_id=user_id)
        return None if profile is None else dict(profile.traits)


async def merge(sessions: Sessions, user_id: str, values: dict[str, Any]) -> None:
    async with sessions() as session:
        await merge_traits(session=session, user_id=user_id, traits=values)
        await session.commit()


async def test_an_unlinked_id_is_its_own_person(sessions: Sessions) -> None:
    async with sessions() as session:
        assert await canonical_user(session, "anon:v-1") == "anon:v-1"
        assert await person_ids(session, "anon:v-1") == ["anon:v-1"]
        assert await person_ids(session, "real-9") == ["real-9"]


async def test_a_link_makes_one_person_and_is_idempotent(sessions: Sessions) -> None:
    first = await linked(sessions, "anon:v-1", "real-9", "m-identify")
    assert first.linked and first.user_id == "real-9"
    again = await linked(sessions, "anon:v-1", "real-9", "m-identify-again")
    assert not again.linked and again.user_id == "real-9"
    async with sessions() as session:
        assert await canonical_user(session, "anon:v-1") == "real-9"
        assert await canonical_user(session, "real-9") == "real-9"
        assert await person_ids(session, "anon:v-1") == ["real-9", "anon:v-1"]
        assert await person_ids(session, "real-9") == ["real-9", "anon:v-1"]
        rows = (await session.scalars(select(Identity))).all()
    assert [(r.anonymous_id, r.user_id, r.message_id) for r in rows] == [
        ("anon:v-1", "real-9", "m-identify")
    ]


async def test_an_anonymous_id_stays_with_the_first_person(sessions: Sessions) -> None:
    await linked(sessions, "anon:shared", "ada", "m1")
    other = await linked(sessions, "anon:shared", "bob", "m2")
    assert not other.linked and other.user_id == "ada"
    async with sessions() as session:
        assert await person_ids(session, "bob") == ["bob"]
        assert await canonical_user(session, "anon:shared") == "ada"


async def test_a_link_to_oneself_or_back_changes_nothing(sessions: Sessions) -> None:
    assert not (await linked(sessions, "u1", "u1", "m0")).linked
    await linked(sessions, "anon:v-1", "u1", "m1")
    back = await linked(sessions, "u1", "anon:v-1", "m2")  # u1 is anon:v-1 already
    assert not back.linked and back.user_id == "u1"
    async with sessions() as session:
        assert await person_ids(session, "anon:v-1") == ["u1", "anon:v-1"]


async def test_chains_resolve_to_the_final_user(sessions: Sessions) -> None:
    # A visitor logs in as u1; u1 is later aliased to u2; a second device of u1 too.
    await linked(sessions, "anon:a", "u1", "m1")
    await linked(sessions, "u1", "u2", "m-alias")
    await linked(sessions, "anon:b", "u1", "m3")
    async with sessions() as session:
        for some_id in ("anon:a", "anon:b", "u1", "u2"):
            assert await canonical_user(session, some_id) == "u2"
            assert await person_ids(session, some_id) == ["u2", "anon:a", "anon:b", "u1"]
        # Kept flat: every id points at the person itself.
        rows = (await session.scalars(select(Identity).order_by(Identity.anonymous_id))).all()
    assert {r.anonymous_id: r.user_id for r in rows} == {"anon:a": "u2", "anon:b": "u2", "u1": "u2"}


async def test_profiles_merge_the_users_own_traits_winning(sessions: Sessions) -> None:
    await merge(sessions, "anon:v-1", {"city": "Paris", "cart": "U-1", "email": "old@example.com"})
    await merge(sessions, "real-9", {"email": "ada@example.com", "first_name": "Ada"})
    result = await linked(sessions, "anon:v-1", "real-9", "m1")
    assert result.changes == {"city": (None, "Paris"), "cart": (None, "U-1")}
    assert await traits(sessions, "real-9") == {
        "email": "ada@example.com",
        "first_name": "Ada",
        "city": "Paris",
        "cart": "U-1",
    }
    assert await traits(sessions, "anon:v-1") is None  # one profile per person
    async with sessions() as session:
        person = await person_profile(session, "anon:v-1")
    assert person is not None and person.user_id == "real-9"


async def test_a_user_without_a_profile_gets_the_visitors(sessions: Sessions) -> None:
    await merge(sessions, "anon:v-2", {"city": "Lyon"})
    result = await linked(sessions, "anon:v-2", "new-user", "m1")
    assert result.changes == {"city": (None, "Lyon")}
    assert await traits(sessions, "new-user") == {"city": "Lyon"}


async def test_counters_are_summed_and_memberships_handed_over(sessions: Sessions) -> None:
    other_day = date(2026, 11, 29)
    async with sessions() as session:
        session.add(
            Segment(id="buyers", name="Buyers", definition={}, definition_hash="h", status="ready")
        )
        await session.flush()
        session.add_all(
            [
                EventCounter(user_id="anon:v-1", counter="c-added", day=DAY, count=2),
                EventCounter(user_id="anon:v-1", counter="c-added", day=other_day, count=1),
                EventCounter(user_id="real-9", counter="c-added", day=DAY, count=3),
                EventCounter(user_id="someone", counter="c-added", day=DAY, count=7),
                SegmentMembership(segment_id="buyers", user_id="anon:v-1", member=True, version=1),
                SegmentMembership(
                    segment_id="buyers", user_id="real-9", member=False, version=1, recheck_at=None
                ),
                DateTrait(
                    user_id="anon:v-1", trait="birthday", month_day="02-29", value=date(2000, 2, 29)
                ),
            ]
        )
        await session.commit()
    before = datetime.now(UTC)
    await linked(sessions, "anon:v-1", "real-9", "m1")
    async with sessions() as session:
        counters = (
            await session.execute(
                select(EventCounter.user_id, EventCounter.day, EventCounter.count).order_by(
                    EventCounter.user_id, EventCounter.day
                )
            )
        ).all()
        memberships = (await session.scalars(select(SegmentMembership))).all()
        dates = (await session.scalars(select(DateTrait))).all()
    assert [tuple(c) for c in counters] == [
        ("real-9", other_day, 1),
        ("real-9", DAY, 5),
        ("someone", DAY, 7),
    ]
    [membership] = memberships
    assert membership.user_id == "real-9"
    assert membership.recheck_at is not None and membership.recheck_at >= before
    assert dates == []


async def test_nothing_commits_without_the_transaction(sessions: Sessions) -> None:
    await merge(sessions, "anon:v-1", {"city": "Paris"})
    async with sessions() as session:
        await link(session, anonymous_id="anon:v-1", user_id="real-9", message_id="m1")
        await session.rollback()
    async with sessions() as session:
        assert await person_ids(session, "real-9") == ["real-9"]
    assert await traits(sessions, "anon:v-1") == {"city": "Paris"}
    assert await traits(sessions, "real-9") is None


async def test_caps_count_the_person_once(sessions: Sessions) -> None:
    cap = CapCheck(limit=1, window=timedelta(hours=24), label="cap: 1 message per 24h")

    async def reserve(key: str, user_id: str) -> bool:
        async with sessions() as session, session.begin():
            ids = await person_ids(session, user_id)
            reservation = await reserve_send(
                session=session,
                idempotency_key=key,
                user_id=user_id,
                channel="email",
                campaign_id="cart",
                group="marketing",
                priority="normal",
                caps=[cap],
                at=datetime.now(UTC),
                person=ids,
            )
            return reservation.allowed

    assert await reserve("k-visitor", "anon:v-1")
    assert await reserve("k-user", "real-9")  # not yet one person
    await linked(sessions, "anon:v-1", "real-10", "m1")
    assert not await reserve("k-user-2", "real-10")  # the visitor's send counts
    assert not await reserve("k-visitor-2", "anon:v-1")
