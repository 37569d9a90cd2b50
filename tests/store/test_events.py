"""tests.store: the event outbox — dedup by messageId, order, routing marks, counts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.events import (
    MAX_ERROR_CHARS,
    NewEvent,
    mark_events,
    pending_events,
    record_attempt_failure,
    record_events,
)
from store.models import Event

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def track(message_id: str, *, user_id: str = "u1", name: str = "cart_updated") -> NewEvent:
    return NewEvent(
        message_id=message_id,
        type="track",
        name=name,
        user_id=user_id,
        timestamp=T0,
        payload={"messageId": message_id, "properties": {"total": 42.5, "items": ["a"]}},
    )


async def record(sessions: Sessions, events: list[NewEvent]) -> list[tuple[int, str, bool]]:
    async with sessions() as session:
        rows = await record_events(session=session, events=events)
        await session.commit()
        return [(row.id, row.message_id, new) for row, new in rows]


async def stored_count(sessions: Sessions) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count()).select_from(Event)) or 0


async def test_new_events_are_stored_pending(sessions: Sessions) -> None:
    recorded = await record(sessions, [track("m1"), track("m2", user_id="u2")])
    assert [(m, new) for _, m, new in recorded] == [("m1", True), ("m2", True)]
    async with sessions() as session:
        event = await session.get(Event, recorded[0][0])
    assert event is not None
    assert (event.type, event.name, event.user_id, event.status) == (
        "track",
        "cart_updated",
        "u1",
        "pending",
    )
    assert event.timestamp == T0
    assert event.payload["properties"] == {"total": 42.5, "items": ["a"]}
    assert (event.attempts, event.last_error, event.routed_at) == (0, None, None)
    assert event.received_at.tzinfo is not None


async def test_ids_follow_the_given_order(sessions: Sessions) -> None:
    names = ["m5", "m1", "m9", "m3", "m7"]
    recorded = await record(sessions, [track(m) for m in names])
    ids = [event_id for event_id, _, _ in recorded]
    assert [m for _, m, _ in recorded] == names
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_a_retried_request_is_a_no_op(sessions: Sessions) -> None:
    first = await record(sessions, [track("m1"), track("m2")])
    again = await record(sessions, [track("m0"), track("m2"), track("m1")])
    assert [(m, new) for _, m, new in again] == [("m0", True), ("m2", False), ("m1", False)]
    ids = {m: event_id for event_id, m, _ in first}
    assert again[1][0] == ids["m2"] and again[2][0] == ids["m1"]
    assert await stored_count(sessions) == 3


async def test_a_duplicate_within_one_batch_is_stored_once(sessions: Sessions) -> None:
    recorded = await record(sessions, [track("m1"), track("m2"), track("m1")])
    assert [(m, new) for _, m, new in recorded] == [("m1", True), ("m2", True), ("m1", False)]
    assert recorded[0][0] == recorded[2][0]
    assert await stored_count(sessions) == 2


async def test_an_empty_batch(sessions: Sessions) -> None:
    assert await record(sessions, []) == []


async def test_a_large_batch_keeps_its_order(sessions: Sessions) -> None:
    names = [f"m{i:04d}" for i in range(1200, 0, -1)]  # more than one INSERT's worth
    recorded = await record(sessions, [track(m) for m in names])
    assert [m for _, m, _ in recorded] == names
    assert all(new for _, _, new in recorded)
    ids = [event_id for event_id, _, _ in recorded]
    assert ids == sorted(ids)
    async with sessions() as session:
        pending = await pending_events(session=session, limit=2000)
    assert [e.message_id for e in pending] == names


async def test_concurrent_requests_with_the_same_message_ids(sessions: Sessions) -> None:
    batch = [track("a"), track("b"), track("c")]
    results = await asyncio.gather(*(record(sessions, batch) for _ in range(6)))
    for message_id in ("a", "b", "c"):
        flags = [new for result in results for _, m, new in result if m == message_id]
        assert sorted(flags) == [False] * 5 + [True]
        assert len({event_id for r in results for event_id, m, _ in r if m == message_id}) == 1
    assert await stored_count(sessions) == 3


async def test_pending_events_in_order_and_limited(sessions: Sessions) -> None:
    recorded = await record(sessions, [track(f"m{i}") for i in range(6)])
    ids = [event_id for event_id, _, _ in recorded]
    async with sessions() as session:
        await mark_events(session=session, event_ids=[ids[1], ids[3]], status="routed")
        await session.commit()
    async with sessions() as session:
        first = await pending_events(session=session, limit=3)
        everything = await pending_events(session=session)
    assert [e.id for e in first] == [ids[0], ids[2], ids[4]]
    assert [e.id for e in everything] == [ids[0], ids[2], ids[4], ids[5]]


async def test_mark_events(sessions: Sessions) -> None:
    recorded = await record(sessions, [track("m1"), track("m2"), track("m3")])
    ids = [event_id for event_id, _, _ in recorded]
    before = datetime.now(UTC)
    async with sessions() as session:
        await mark_events(session=session, event_ids=[ids[0]], status="routed")
        await mark_events(session=session, event_ids=[ids[1]], status="ignored")
        await mark_events(session=session, event_ids=[], status="routed")
        await session.commit()
    async with sessions() as session:
        events = {e.id: e for e in await session.scalars(select(Event))}
    assert [events[i].status for i in ids] == ["routed", "ignored", "pending"]
    for event_id in ids[:2]:
        routed_at = events[event_id].routed_at
        assert routed_at is not None
        assert before - timedelta(seconds=1) <= routed_at <= datetime.now(UTC)
    assert events[ids[2]].routed_at is None


async def test_mark_events_refuses_pending_and_unknown_statuses(sessions: Sessions) -> None:
    async with sessions() as session:
        with pytest.raises(ValueError, match="'routed', 'ignored' or 'failed'"):
            await mark_events(session=session, event_ids=[1], status="pending")
        with pytest.raises(ValueError, match="'sent' is not a valid EventStatus"):
            await mark_events(session=session, event_ids=[1], status="sent")


async def test_a_failed_attempt_is_counted_and_stays_pending(sessions: Sessions) -> None:
    recorded = await record(sessions, [track("m1")])
    event_id = recorded[0][0]
    async with sessions() as session:
        await record_attempt_failure(session=session, event_id=event_id, error="unreachable")
        await record_attempt_failure(session=session, event_id=event_id, error="x" * 5000)
        await session.commit()
    async with sessions() as session:
        event = await session.get(Event, event_id)
        pending = await pending_events(session=session)
    assert event is not None
    assert event.attempts == 2
    assert event.last_error == "x" * MAX_ERROR_CHARS
    assert event.status == "pending" and [e.id for e in pending] == [event_id]
