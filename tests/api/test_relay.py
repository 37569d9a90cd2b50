"""tests.api: the relay's rules on a real database — order per user, giving up after N tries,
one claim per event across relays, each event settled as soon as it is routed."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.service import RPCError, RPCStatusCode

from api.campaign_index import CampaignIndexLoader
from api.relay import GAVE_UP, REFUSED, Relay
from api.router import EventRouter, Outcome
from api.segment_index import SegmentIndexLoader
from core.segments import SegmentDefinition
from store.db import create_engine, session_factory
from store.events import NewEvent, claim_events, record_events
from store.models import Event
from store.segments import Transition, apply_segment
from temporal.client import TemporalConnection
from temporal.servers import free_port
from tests.api.crashing_relay import HANG
from tests.fixtures.api import eventually, make_settings

Sessions = async_sessionmaker[AsyncSession]


class BuggyRouter(EventRouter):
    """The real router, except that an event named `Boom` hits a bug every time."""

    async def route(self, event: Event) -> Outcome:
        if event.name == "Boom":
            raise ValueError("a bug in routing")
        return await super().route(event)


def track(message_id: str, user_id: str, name: str) -> NewEvent:
    return NewEvent(
        message_id=message_id,
        type="track",
        name=name,
        user_id=user_id,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        payload={"type": "track", "event": name, "userId": user_id},
    )


async def outbox(sessions: Sessions) -> dict[str, Event]:
    async with sessions() as session:
        return {e.message_id: e for e in await session.scalars(select(Event))}


async def test_a_routing_bug_holds_the_user_then_gives_up(
    database_url: str, sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(database_url, f"127.0.0.1:{free_port()}")
    temporal = TemporalConnection(settings.temporal_address)  # never started: no Temporal
    router = BuggyRouter(
        sessions=sessions,
        temporal=temporal,
        campaigns=CampaignIndexLoader(sessions=sessions, settings=settings),
        settings=settings,
    )
    relay = Relay(router=router, sessions=sessions, settings=settings, max_attempts=3)
    async with sessions() as session:
        await record_events(
            session=session,
            events=[
                track("a-1", "ada", "Boom"),
                track("b-1", "bob", "Something"),
                track("a-2", "ada", "Something"),
            ],
        )
        await session.commit()

    for attempt in (1, 2):
        [result] = await relay.drain()
        events = await outbox(sessions)
        assert result.ignored == ([events["b-1"].id] if attempt == 1 else [])
        assert result.held == 2
        assert (events["a-1"].status, events["a-1"].attempts) == ("pending", attempt)
        assert events["a-1"].last_error == "ValueError: a bug in routing"
        assert events["a-2"].status == "pending"  # ada's next event waits behind a-1
        assert events["b-1"].status == "ignored"  # bob is not held up

    with caplog.at_level(logging.ERROR, logger="nudge.relay"):
        [result] = await relay.drain()
    events = await outbox(sessions)
    assert (events["a-1"].status, events["a-1"].attempts) == ("failed", 3)
    assert events["a-1"].last_error == GAVE_UP.format(n=3) + "ValueError: a bug in routing"
    assert events["a-2"].status == "ignored"
    assert any("GAVE UP" in r.getMessage() and "a-1" in r.getMessage() for r in caplog.records)
    assert await relay.drain() == []


async def test_events_of_users_without_campaigns_are_ignored_in_one_pass(
    sqlite_url: str,
) -> None:
    settings = make_settings(sqlite_url, f"127.0.0.1:{free_port()}")
    engine = create_engine(sqlite_url)
    sessions = session_factory(engine)
    try:
        router = EventRouter(
            sessions=sessions,
            temporal=TemporalConnection(settings.temporal_address),
            campaigns=CampaignIndexLoader(sessions=sessions, settings=settings),
            settings=settings,
        )
        relay = Relay(router=router, sessions=sessions, settings=settings, batch_size=50)
        async with sessions() as session:
            await record_events(
                session=session,
                events=[track(f"m-{i}", f"user-{i % 7}", "Unwatched") for i in range(120)],
            )
            await session.commit()
        results = await relay.drain()
        # Full batches go on to the next one; the last, short one ends the drain.
        assert [len(r.ignored) for r in results] == [50, 50, 20]
        assert {e.status for e in (await outbox(sessions)).values()} == {"ignored"}
    finally:
        await engine.dispose()


# -- several relays on one outbox ---------------------------------------------------------


@dataclass(frozen=True)
class Call:
    relay: str
    message_id: str
    user_id: str


class RecordingRouter(EventRouter):
    """Tells no Temporal: records which relay routed which event, in the order the calls
    began. `Boom` hits a bug every time; Temporal refuses `Invalid` as invalid."""

    def __init__(self, *, name: str, calls: list[Call], delay: float = 0.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.name = name
        self.calls = calls
        self.delay = delay

    async def route(self, event: Event) -> Outcome:
        self.calls.append(Call(self.name, event.message_id, event.user_id))
        await asyncio.sleep(self.delay)
        if event.name == "Boom":
            raise ValueError("a bug in routing")
        if event.name == "Invalid":
            raise RPCError("Workflow ID length exceeds limit.", RPCStatusCode.INVALID_ARGUMENT, b"")
        return Outcome.routed


@asynccontextmanager
async def relay_of_its_own(
    database_url: str, name: str, calls: list[Call], *, delay: float = 0.0, **options: Any
) -> AsyncIterator[Relay]:
    """A relay named `name` with an engine of its own: what another API process has."""
    settings = make_settings(database_url, f"127.0.0.1:{free_port()}")
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    router = RecordingRouter(
        name=name,
        calls=calls,
        delay=delay,
        sessions=sessions,
        temporal=TemporalConnection(settings.temporal_address),
        campaigns=CampaignIndexLoader(sessions=sessions, settings=settings),
        settings=settings,
    )
    try:
        yield Relay(router=router, sessions=sessions, settings=settings, relay_id=name, **options)
    finally:
        await engine.dispose()


async def record(sessions: Sessions, events: list[NewEvent]) -> None:
    async with sessions() as session:
        await record_events(session=session, events=events)
        await session.commit()


async def pending_count(sessions: Sessions) -> int:
    async with sessions() as session:
        statement = select(func.count()).select_from(Event).where(Event.status == "pending")
        return await session.scalar(statement) or 0


async def test_two_relays_route_each_event_once_and_each_user_in_order(
    database_url: str, sessions: Sessions
) -> None:
    users = [f"user-{i}" for i in range(50)]
    sent = [track(f"{user}/{n}", user, "Anything") for n in range(4) for user in users]
    await record(sessions, sent)
    calls: list[Call] = []
    # A pass (80 events, 2 users at a time, 50 ms each) outlasts the lease: only renewing
    # the claims keeps the other relay off them.
    options: dict[str, Any] = dict(
        delay=0.05, batch_size=80, concurrency=2, lease=timedelta(seconds=1.5)
    )

    async def keep_draining(relay: Relay) -> None:
        while await pending_count(sessions):
            await relay.drain()
            await asyncio.sleep(0.01)

    async with (
        relay_of_its_own(database_url, "one", calls, **options) as one,
        relay_of_its_own(database_url, "two", calls, **options) as two,
    ):
        await asyncio.wait_for(asyncio.gather(keep_draining(one), keep_draining(two)), 120)

    routed = [c.message_id for c in calls]
    assert len(routed) == len(set(routed)), "an event was routed twice"
    assert sorted(routed) == sorted(e.message_id for e in sent)
    for user in users:
        assert [c.message_id for c in calls if c.user_id == user] == [
            f"{user}/{n}" for n in range(4)
        ]
    assert {c.relay for c in calls} == {"one", "two"}
    stored = (await outbox(sessions)).values()
    assert {(e.status, e.claimed_by, e.attempts) for e in stored} == {("routed", None, 0)}


async def test_a_user_whose_earlier_event_is_claimed_waits_for_it(
    database_url: str, sessions: Sessions
) -> None:
    await record(sessions, [track("a-1", "ada", "Anything"), track("b-1", "bob", "Anything")])
    async with sessions() as session:
        [held] = await claim_events(
            session=session, relay_id="one", lease=timedelta(minutes=1), limit=1
        )
        await session.commit()
    assert held.message_id == "a-1"
    await record(sessions, [track("a-2", "ada", "Anything"), track("b-2", "bob", "Anything")])

    calls: list[Call] = []
    async with relay_of_its_own(database_url, "two", calls) as two:
        await two.drain()
    # ada's a-2 must not overtake a-1, which relay one holds; bob's events go on.
    assert [c.message_id for c in calls] == ["b-1", "b-2"]
    events = await outbox(sessions)
    assert (events["a-1"].status, events["a-1"].claimed_by) == ("pending", "one")
    assert (events["a-2"].status, events["a-2"].claimed_by) == ("pending", None)


async def test_a_lapsed_claim_is_taken_over(database_url: str, sessions: Sessions) -> None:
    await record(sessions, [track("a-1", "ada", "Anything"), track("a-2", "ada", "Anything")])
    async with sessions() as session:
        claimed = await claim_events(session=session, relay_id="gone", lease=timedelta(seconds=0.5))
        await session.commit()
    assert [e.message_id for e in claimed] == ["a-1", "a-2"]

    calls: list[Call] = []
    async with relay_of_its_own(database_url, "heir", calls) as heir:
        assert await heir.drain() == []  # the claim still holds
        await asyncio.sleep(0.6)
        [result] = await heir.drain()
    assert [c.message_id for c in calls] == ["a-1", "a-2"]
    assert len(result.routed) == 2
    for event in (await outbox(sessions)).values():
        assert (event.status, event.claimed_by, event.attempts) == ("routed", None, 1)
        assert event.last_error == (
            "relay gone claimed the event and never settled it (it died, stalled or failed)"
        )


async def test_failures_are_counted_in_the_row_whichever_relay_tries(
    database_url: str, sessions: Sessions
) -> None:
    await record(sessions, [track("a-1", "ada", "Boom"), track("a-2", "ada", "Anything")])
    calls: list[Call] = []
    async with (
        relay_of_its_own(database_url, "one", calls, max_attempts=3) as one,
        relay_of_its_own(database_url, "two", calls, max_attempts=3) as two,
    ):
        for attempt, relay in enumerate((one, two), start=1):
            await relay.drain()
            event = (await outbox(sessions))["a-1"]
            assert (event.status, event.failures, event.claimed_by) == ("pending", attempt, None)
        await one.drain()
    events = await outbox(sessions)
    assert (events["a-1"].status, events["a-1"].failures, events["a-1"].attempts) == (
        "failed",
        3,
        3,
    )
    assert events["a-1"].last_error == GAVE_UP.format(n=3) + "ValueError: a bug in routing"
    assert events["a-2"].status == "routed"
    assert [(c.relay, c.message_id) for c in calls] == [
        ("one", "a-1"),
        ("two", "a-1"),
        ("one", "a-1"),
        ("one", "a-2"),
    ]


async def test_an_event_temporal_refuses_as_invalid_is_given_up_at_once(
    database_url: str, sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    await record(sessions, [track("i-1", "ada", "Invalid"), track("i-2", "ada", "Anything")])
    calls: list[Call] = []
    async with relay_of_its_own(database_url, "one", calls) as relay:
        with caplog.at_level(logging.ERROR, logger="nudge.relay"):
            [result] = await relay.drain()
        assert await relay.drain() == []
    events = await outbox(sessions)
    assert (events["i-1"].status, events["i-1"].failures, events["i-1"].attempts) == (
        "failed",
        1,
        1,
    )
    assert events["i-1"].last_error == (
        REFUSED + "RPCError INVALID_ARGUMENT: Workflow ID length exceeds limit."
    )
    assert events["i-2"].status == "routed"  # the user's later events go on
    assert result.gave_up == [events["i-1"].id]
    assert [c.message_id for c in calls] == ["i-1", "i-2"]  # tried once, not again
    assert any("GAVE UP" in r.getMessage() and "i-1" in r.getMessage() for r in caplog.records)


async def test_a_relay_killed_mid_pass_leaves_only_the_events_it_had_not_settled(
    database_url: str, sessions: Sessions, tmp_path: Path
) -> None:
    """A real crash: the relay's own process SIGKILLed while it waits on one event. What
    it routed before is settled already; the rest is taken over once its lease lapses."""
    await record(
        sessions,
        [
            track("a-1", "ada", "Anything"),
            track("b-1", "bob", "Anything"),
            track("a-2", "ada", "Anything"),
            track("a-3", "ada", HANG),
            track("b-2", "bob", "Anything"),
            track("a-4", "ada", "Anything"),
        ],
    )
    log = tmp_path / "crashing_relay.log"
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.api.crashing_relay", database_url, "crashed", "2"],
            cwd=Path(__file__).parents[2],
            env={k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        async def stuck_on_a_3() -> bool:
            assert child.poll() is None, log.read_text()
            assert "hanging on a-3" in log.read_text()
            return True

        await eventually(stuck_on_a_3, timeout=60)
    finally:
        child.kill()
        child.wait(timeout=10)

    events = await outbox(sessions)
    settled = {m: e.status for m, e in events.items() if e.status != "pending"}
    assert settled == dict.fromkeys(("a-1", "a-2", "b-1", "b-2"), "routed")
    assert {events[m].claimed_by for m in ("a-3", "a-4")} == {"crashed"}

    calls: list[Call] = []
    async with relay_of_its_own(database_url, "heir", calls) as heir:
        assert await heir.drain() == []  # the dead relay's lease has not lapsed yet
        lapses = max(e.claimed_until for e in events.values() if e.claimed_until)
        await asyncio.sleep((lapses - datetime.now(UTC)).total_seconds() + 0.1)
        await heir.drain()
    assert [c.message_id for c in calls] == ["a-3", "a-4"]
    events = await outbox(sessions)
    assert {e.status for e in events.values()} == {"routed"}
    assert events["a-3"].attempts == 1
    assert (events["a-3"].last_error or "").startswith("relay crashed claimed the event")


class BuggySegments(SegmentIndexLoader):
    """The real segment index, except that an event named `Boom` hits a bug in it."""

    async def take_in(self, event: Event) -> list[Transition]:
        if event.name == "Boom":
            raise ValueError("a bug in membership")
        return await super().take_in(event)


async def test_a_membership_bug_costs_the_event_its_count_not_its_routing(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(sqlite_url, f"127.0.0.1:{free_port()}")
    engine = create_engine(sqlite_url)
    sessions = session_factory(engine)
    try:
        async with sessions() as session:
            await apply_segment(
                session=session,
                definition=SegmentDefinition.model_validate(
                    {"id": "any", "name": "Any", "events": [{"event": "Something"}]}
                ),
            )
            await record_events(
                session=session,
                events=[track("a-1", "ada", "Boom"), track("a-2", "ada", "Something")],
            )
            await session.commit()
        segments = BuggySegments(sessions=sessions, settings=settings)
        router = EventRouter(
            sessions=sessions,
            temporal=TemporalConnection(settings.temporal_address),
            campaigns=CampaignIndexLoader(sessions=sessions, settings=settings),
            settings=settings,
        )
        relay = Relay(router=router, sessions=sessions, settings=settings, segments=segments)
        with caplog.at_level(logging.ERROR, logger="nudge.relay"):
            await relay.drain()
        events = await outbox(sessions)
        # Routed (no campaign cares: ignored), not held and given up as `failed`.
        assert (events["a-1"].status, events["a-1"].counted) == ("ignored", False)
        assert (events["a-2"].status, events["a-2"].counted) == ("ignored", True)
        assert any("could not take in event a-1" in r.getMessage() for r in caplog.records)
    finally:
        await engine.dispose()
