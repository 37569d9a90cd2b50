"""tests.store: segment membership kept as events arrive and as time passes (an injected
`now`), taken in once however often an event is processed, announced by internal events,
and built for the users who were there before the segment."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.segments import EventCriterion, SegmentDefinition
from store.events import NewEvent, record_events
from store.models import Event, EventCounter, Identity, Segment, SegmentMembership
from store.profiles import merge_traits
from store.segments import (
    Transition,
    apply_segment,
    build_step,
    count_members,
    delete_segment,
    get_segment,
    list_members,
    live_segments,
    prune_counters,
    recheck_due,
    update_for_event,
)

Sessions = async_sessionmaker[AsyncSession]

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)

LOYAL = {
    "id": "loyal-buyers",
    "name": "Loyal buyers",
    "events": [{"event": "Order Completed", "at_least": 2, "within": "30d"}],
}
LAPSED = {
    "id": "lapsed",
    "name": "Did not open the app in 14 days",
    "events": [{"event": "App Opened", "at_most": 0, "within": "14d"}],
}
SHANGHAI = {
    "id": "shanghai",
    "name": "Shanghai",
    "traits": [{"path": "traits.city", "op": "eq", "value": "Shanghai"}],
}
BIG = {
    "id": "big",
    "name": "Big spenders",
    "events": [
        {
            "event": "Order Completed",
            "where": [{"path": "properties.total", "op": "gte", "value": 100}],
        }
    ],
}


async def apply(sessions: Sessions, *definitions: dict[str, Any], now: datetime = NOW) -> None:
    """Save the segments and build them to ready."""
    async with sessions() as session:
        for definition in definitions:
            await apply_segment(
                session=session, definition=SegmentDefinition.model_validate(definition)
            )
        await session.commit()
    await build_all(sessions, now=now)


async def build_all(sessions: Sessions, *, now: datetime = NOW, limit: int = 500) -> int:
    steps = 0
    while True:
        async with sessions() as session:
            progress = await build_step(session, now=now, limit=limit)
            await session.commit()
        if progress.segment_id is None:
            return steps
        steps += 1


async def store(
    sessions: Sessions,
    user_id: str,
    name: str | None,
    *,
    type: str = "track",
    at: datetime = NOW,
    properties: dict[str, Any] | None = None,
    traits: dict[str, Any] | None = None,
) -> int:
    message_id = f"m-{uuid.uuid4()}"
    payload: dict[str, Any] = {"type": type, "userId": user_id, "messageId": message_id}
    if name is not None:
        payload["event"] = name
    if properties is not None:
        payload["properties"] = properties
    if traits is not None:
        payload["traits"] = traits
    async with sessions() as session:
        [(event, _)] = await record_events(
            session=session,
            events=[NewEvent(message_id, type, name, user_id, at, payload)],
        )
        if traits:
            await merge_traits(session=session, user_id=user_id, traits=traits)
        await session.commit()
        return event.id


async def take_in(sessions: Sessions, event_id: int, *, now: datetime = NOW) -> list[Transition]:
    async with sessions() as session:
        segments = await live_segments(session=session)
        event = await session.get(Event, event_id)
        assert event is not None
        transitions = await update_for_event(session, event=event, segments=segments, now=now)
        await session.commit()
        return transitions


async def arrive(sessions: Sessions, user_id: str, name: str | None, **fields: Any) -> list[str]:
    """Store an event and take it in at its own time; say what changed as `+id`/`-id`."""
    event_id = await store(sessions, user_id, name, **fields)
    transitions = await take_in(sessions, event_id, now=fields.get("at", NOW))
    return [("+" if t.entered else "-") + t.segment_id for t in transitions]


async def recheck(sessions: Sessions, now: datetime) -> int:
    async with sessions() as session:
        n = await recheck_due(session, now=now, limit=500)
        await session.commit()
        return n


async def internal_events(sessions: Sessions, user_id: str) -> list[tuple[str, str]]:
    async with sessions() as session:
        rows = await session.scalars(
            select(Event)
            .where(Event.type == "internal", Event.user_id == user_id)
            .order_by(Event.id)
        )
        return [(e.name or "", e.payload["properties"]["segment"]) for e in rows]


async def members(sessions: Sessions, segment_id: str) -> list[str]:
    async with sessions() as session:
        return await list_members(session=session, segment_id=segment_id, limit=1000)


async def test_a_user_enters_on_the_second_order_and_leaves_as_the_window_passes(
    sessions: Sessions,
) -> None:
    await apply(sessions, LOYAL)
    first = NOW - timedelta(days=10)
    assert await arrive(sessions, "ada", "Order Completed", at=first) == []
    assert await arrive(sessions, "ada", "Order Completed") == ["+loyal-buyers"]
    assert await members(sessions, "loyal-buyers") == ["ada"]
    assert await internal_events(sessions, "ada") == [("Segment Entered", "loyal-buyers")]

    # The order of 10 days ago leaves the 30-day window at the start of day first + 30.
    leaves = datetime.combine(first.date() + timedelta(days=30), datetime.min.time(), UTC)
    assert await recheck(sessions, leaves - timedelta(seconds=1)) == 0
    assert await recheck(sessions, leaves) == 1
    assert await members(sessions, "loyal-buyers") == []
    assert await internal_events(sessions, "ada") == [
        ("Segment Entered", "loyal-buyers"),
        ("Segment Exited", "loyal-buyers"),
    ]
    async with sessions() as session:
        row = await session.get(SegmentMembership, ("loyal-buyers", "ada"))
        assert row is not None
        assert (row.member, row.changes, row.recheck_at) == (False, 2, None)
        entered = await session.scalar(
            select(Event).where(Event.name == "Segment Entered", Event.user_id == "ada")
        )
        assert entered is not None
        assert entered.message_id.startswith("nudge:segment:loyal-buyers:")
        assert entered.message_id.endswith(":1")
        assert entered.payload["properties"] == {
            "segment": "loyal-buyers",
            "segment_name": "Loyal buyers",
        }
        assert entered.status == "pending" and entered.counted is False
    # Nothing more is due: the sweep touches no row.
    assert await recheck(sessions, leaves + timedelta(days=365)) == 0


async def test_a_segment_made_again_under_its_old_id_writes_new_transitions(
    sessions: Sessions,
) -> None:
    await apply(sessions, LOYAL)
    await arrive(sessions, "ada", "Order Completed", at=NOW - timedelta(days=1))
    assert await arrive(sessions, "ada", "Order Completed") == ["+loyal-buyers"]
    async with sessions() as session:
        assert await delete_segment(session=session, segment_id="loyal-buyers")
        await session.commit()
    await apply(sessions, LOYAL, now=NOW + timedelta(seconds=5))
    assert await internal_events(sessions, "ada") == [
        ("Segment Entered", "loyal-buyers"),
        ("Segment Entered", "loyal-buyers"),  # the new segment's: not taken for a repeat
    ]


async def test_an_event_processed_twice_is_counted_once(sessions: Sessions) -> None:
    await apply(sessions, LOYAL)
    event_id = await store(sessions, "bob", "Order Completed")
    assert await take_in(sessions, event_id) == []
    assert await take_in(sessions, event_id) == []  # a relay repeating the event
    async with sessions() as session:
        counted = await session.scalar(select(func.sum(EventCounter.count)))
    assert counted == 1
    assert await arrive(sessions, "bob", "Order Completed") == ["+loyal-buyers"]


async def test_internal_events_are_not_counted(sessions: Sessions) -> None:
    await apply(sessions, LOYAL)
    await arrive(sessions, "ada", "Order Completed")
    assert await arrive(sessions, "ada", "Order Completed") == ["+loyal-buyers"]
    async with sessions() as session:
        internal = await session.scalar(select(Event.id).where(Event.type == "internal"))
    assert internal is not None
    assert await take_in(sessions, internal) == []
    async with sessions() as session:
        event = await session.get(Event, internal)
        assert event is not None and event.counted is False


async def test_did_not_open_the_app_in_14_days(sessions: Sessions) -> None:
    await apply(sessions, LAPSED)
    # First seen: never opened the app, so a member at once.
    assert await arrive(sessions, "cy", "Page Viewed") == ["+lapsed"]
    assert await arrive(sessions, "cy", "App Opened") == ["-lapsed"]
    assert await arrive(sessions, "cy", "Page Viewed") == []
    back = datetime(2026, 12, 15, tzinfo=UTC)  # Dec 1 is the last of the 14 days on Dec 14
    assert await recheck(sessions, back - timedelta(microseconds=1)) == 0
    assert await recheck(sessions, back) == 1
    assert await members(sessions, "lapsed") == ["cy"]


async def test_traits_from_identify(sessions: Sessions) -> None:
    await apply(sessions, SHANGHAI, LOYAL)
    assert await arrive(sessions, "di", None, type="identify", traits={"city": "Shanghai"}) == [
        "+shanghai"
    ]
    assert await arrive(sessions, "di", None, type="identify", traits={"plan": "pro"}) == []
    assert await arrive(sessions, "di", None, type="identify", traits={"city": "Paris"}) == [
        "-shanghai"
    ]
    async with sessions() as session:
        assert await count_members(session=session, segment_id="shanghai") == 0
        rows = (
            await session.scalars(select(SegmentMembership).order_by(SegmentMembership.segment_id))
        ).all()
        assert [(r.segment_id, r.member, r.changes) for r in rows] == [
            ("loyal-buyers", False, 0),
            ("shanghai", False, 2),
        ]


async def test_property_conditions_decide_what_counts(sessions: Sessions) -> None:
    await apply(sessions, BIG)
    assert await arrive(sessions, "ed", "Order Completed", properties={"total": 20}) == []
    assert await arrive(sessions, "ed", "Order Completed", properties={"total": 150}) == ["+big"]
    async with sessions() as session:
        counted = await session.scalar(select(func.sum(EventCounter.count)))
    assert counted == 1


async def test_an_anonymous_id_linked_to_a_user_counts_for_the_user(sessions: Sessions) -> None:
    await apply(sessions, LOYAL)
    async with sessions() as session:
        session.add(Identity(anonymous_id="anon:v1", user_id="real-9", message_id="m-link"))
        await session.commit()
    assert await arrive(sessions, "anon:v1", "Order Completed") == []
    assert await arrive(sessions, "real-9", "Order Completed") == ["+loyal-buyers"]
    assert await members(sessions, "loyal-buyers") == ["real-9"]


async def test_build_evaluates_existing_users_and_counts_each_event_once(
    sessions: Sessions,
) -> None:
    # Before the segment: settled events (routed while no segment was known) and a profile.
    for user in ("u1", "u2", "u3", "u4"):
        await store(sessions, user, "Order Completed", at=NOW - timedelta(days=3))
    await store(sessions, "u2", "Order Completed", at=NOW - timedelta(days=40))  # too old
    await store(sessions, "u3", "Order Completed", at=NOW - timedelta(days=1))
    await store(sessions, "u5", None, type="identify", traits={"city": "Shanghai"})
    async with sessions() as session:
        await session.execute(update(Event).values(status="ignored"))
        await session.commit()
    # u1's second order is still pending (the relay has not reached it) at build time.
    pending = await store(sessions, "u1", "Order Completed", at=NOW - timedelta(hours=1))

    async with sessions() as session:
        await apply_segment(session=session, definition=SegmentDefinition.model_validate(LOYAL))
        await apply_segment(session=session, definition=SegmentDefinition.model_validate(SHANGHAI))
        await session.commit()
    assert await build_all(sessions, limit=2) == 6  # 5 users, 2 a step, for each segment
    async with sessions() as session:
        for segment_id in ("loyal-buyers", "shanghai"):
            segment = await get_segment(session=session, segment_id=segment_id)
            assert segment is not None
            assert (segment.status, segment.build_cursor) == ("ready", None)
    assert await members(sessions, "loyal-buyers") == ["u3"]
    assert await members(sessions, "shanghai") == ["u5"]
    assert await internal_events(sessions, "u3") == [("Segment Entered", "loyal-buyers")]

    # The pending order is taken in by the relay, once: u1 now has two.
    assert [t.segment_id for t in await take_in(sessions, pending)] == ["loyal-buyers"]
    assert await members(sessions, "loyal-buyers") == ["u1", "u3"]

    # Building again (a new version) replaces the counters: nothing counted twice.
    changed = {**LOYAL, "name": "Loyal buyers (2 in 30 days)"}
    async with sessions() as session:
        _, written = await apply_segment(
            session=session, definition=SegmentDefinition.model_validate(changed)
        )
        assert written
        again, written = await apply_segment(
            session=session, definition=SegmentDefinition.model_validate(changed)
        )
        assert not written and again.version == 2
        await session.commit()
    await build_all(sessions)
    assert await members(sessions, "loyal-buyers") == ["u1", "u3"]
    async with sessions() as session:
        counts = dict(
            (
                await session.execute(
                    select(EventCounter.user_id, func.sum(EventCounter.count)).group_by(
                        EventCounter.user_id
                    )
                )
            ).all()
        )
        rows = (
            await session.scalars(
                select(SegmentMembership).where(SegmentMembership.segment_id == "loyal-buyers")
            )
        ).all()
        segment = await session.get(Segment, "loyal-buyers")
    assert counts == {"u1": 2, "u2": 1, "u3": 2, "u4": 1}
    assert {r.version for r in rows} == {2}
    assert segment is not None and segment.status == "ready"


async def test_housekeeping_forgets_counters_no_segment_reads(sessions: Sessions) -> None:
    ever = {
        "id": "ever-bought",
        "name": "Ever bought a gift card",
        "events": [{"event": "Gift Card Bought"}],
    }
    week = {
        "id": "weekly-buyers",
        "name": "Bought this week",
        "events": [{"event": "Order Completed", "within": "7d"}],
    }
    await apply(sessions, LOYAL, week, ever)
    loyal_key = EventCriterion.model_validate(LOYAL["events"][0]).counter_key()
    week_key = EventCriterion.model_validate(week["events"][0]).counter_key()
    assert loyal_key == week_key  # one criterion, two windows: the longer one keeps
    ever_key = EventCriterion.model_validate(ever["events"][0]).counter_key()
    today = NOW.date()
    rows = [
        (loyal_key, today - timedelta(days=29)),  # in the 30-day window: kept
        (loyal_key, today - timedelta(days=30)),  # before it: forgotten
        (ever_key, today - timedelta(days=3000)),  # counted ever: kept
        ("no-segment-reads-this", today),  # a criterion no segment has: forgotten
    ]
    async with sessions() as session:
        session.add_all(EventCounter(user_id="ada", counter=c, day=d, count=1) for c, d in rows)
        await session.commit()
    async with sessions() as session:
        assert await prune_counters(session, now=NOW) == 2
        await session.commit()
    async with sessions() as session:
        left = {(c.counter, c.day) for c in await session.scalars(select(EventCounter))}
    assert left == {rows[0], rows[2]}
