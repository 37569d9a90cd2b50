"""tests.store: the outbox shared by several relays — claims that never overlap and keep each
user's events in order, and ingestion that makes a user's ids visible in the order drawn."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from store.db import create_engine, session_factory
from store.events import (
    EventStatus,
    NewEvent,
    claim_events,
    record_events,
    release_claims,
    settle_event,
)
from store.models import Event

Sessions = async_sessionmaker[AsyncSession]
LEASE = timedelta(minutes=1)


def track(message_id: str, user_id: str) -> NewEvent:
    return NewEvent(
        message_id=message_id,
        type="track",
        name="Anything",
        user_id=user_id,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        payload={},
    )


async def pending_by_user(sessions: Sessions) -> dict[str, list[int]]:
    async with sessions() as session:
        statement = select(Event).where(Event.status == "pending").order_by(Event.id)
        pending: dict[str, list[int]] = defaultdict(list)
        for event in await session.scalars(statement):
            pending[event.user_id].append(event.id)
        return pending


async def test_concurrent_claims_never_overlap_and_take_each_user_from_the_start(
    database_url: str, sessions: Sessions
) -> None:
    """Six relays (an engine each) claim at the same instant, round after round; each
    settles part of what it got, in order, and gives the rest back."""
    rng = random.Random(7)
    async with sessions() as session:
        events = [track(f"{u}/{n}", f"user-{u}") for n in range(5) for u in range(40)]
        await record_events(session=session, events=events)
        await session.commit()
    engines: list[AsyncEngine] = [create_engine(database_url) for _ in range(6)]
    relays = [(f"relay-{i}", session_factory(engine)) for i, engine in enumerate(engines)]

    async def claim(name: str, own: Sessions) -> tuple[str, list[Event]]:
        async with own() as session:
            claimed = await claim_events(
                session=session, relay_id=name, lease=LEASE, limit=rng.randint(5, 40)
            )
            await session.commit()
        return name, claimed

    async def settle_some(name: str, own: Sessions, claimed: list[Event]) -> None:
        async with own() as session:
            for event in claimed[: (len(claimed) + 1) // 2]:
                assert await settle_event(
                    session=session, event_id=event.id, relay_id=name, status=EventStatus.routed
                )
            await release_claims(session=session, relay_id=name)
            await session.commit()

    try:
        for _ in range(100):
            pending = await pending_by_user(sessions)
            if not pending:
                break
            rounds = await asyncio.gather(*(claim(name, own) for name, own in relays))
            holders: dict[str, set[str]] = defaultdict(set)
            for name, claimed in rounds:
                by_user: dict[str, list[int]] = defaultdict(list)
                for event in claimed:
                    holders[event.user_id].add(name)
                    by_user[event.user_id].append(event.id)
                for user, ids in by_user.items():
                    # A prefix of the user's pending events: never one behind a gap.
                    assert ids == pending[user][: len(ids)], (name, user, ids, pending[user])
            assert all(len(names) == 1 for names in holders.values()), holders
            await asyncio.gather(
                *(
                    settle_some(name, own, claimed)
                    for (name, own), (_, claimed) in zip(relays, rounds, strict=True)
                )
            )
        assert await pending_by_user(sessions) == {}
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_second_request_for_a_user_waits_for_the_first_to_commit(
    database_url: str, sessions: Sessions
) -> None:
    """Ids are drawn at insert and seen at commit: were the second request for ada to
    insert before the first commits, its later id could be routed before the earlier one
    is even visible. It waits; another user's request does not (on PostgreSQL — SQLite
    has one writer at a time anyway)."""
    first = sessions()
    await record_events(session=first, events=[track("a-1", "ada")])

    async def record_and_commit(event: NewEvent) -> int:
        async with sessions() as session:
            [(row, _)] = await record_events(session=session, events=[event])
            await session.commit()
            return row.id

    second = asyncio.create_task(record_and_commit(track("a-2", "ada")))
    other = asyncio.create_task(record_and_commit(track("b-1", "bob")))
    await asyncio.sleep(0.5)
    assert not second.done()
    if first.get_bind().dialect.name == "postgresql":
        assert other.done()
    await first.commit()
    await first.close()
    a_2 = await asyncio.wait_for(second, 30)
    await asyncio.wait_for(other, 30)
    async with sessions() as session:
        a_1 = await session.scalar(select(Event.id).where(Event.message_id == "a-1"))
    assert a_1 is not None and a_1 < a_2


async def test_batches_naming_the_same_users_in_other_orders_do_not_deadlock(
    database_url: str, sessions: Sessions
) -> None:
    users = [f"user-{i}" for i in range(8)]

    async def batch(n: int) -> None:
        order = random.Random(n).sample(users, len(users))
        async with sessions() as session:
            await record_events(
                session=session, events=[track(f"{n}/{user}", user) for user in order]
            )
            await asyncio.sleep(0.01)  # hold the locks while the others try
            await session.commit()

    await asyncio.wait_for(asyncio.gather(*(batch(n) for n in range(12))), 60)
    assert sum(len(ids) for ids in (await pending_by_user(sessions)).values()) == 96
