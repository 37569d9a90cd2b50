"""tests.api: the relay's rules on a real database — order per user, giving up after N tries."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.campaign_index import CampaignIndexLoader
from api.relay import GAVE_UP, Relay
from api.router import EventRouter, Outcome
from store.db import create_engine, session_factory
from store.events import NewEvent, record_events
from store.models import Event
from temporal.client import TemporalConnection
from temporal.servers import free_port
from tests.fixtures.api import make_settings

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
