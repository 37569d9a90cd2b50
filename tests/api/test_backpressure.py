"""tests.api: back-pressure — the tracking routes answer 429 with Retry-After while the
outbox's backlog is at NUDGE_INGEST_BACKLOG_LIMIT, store nothing of what they refuse, and
accept again once the relay has drained it. Over real HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from api.backlog import Backlog
from store.db import create_engine, session_factory
from store.events import EventStatus, mark_events
from store.models import Event, RejectedEvent
from temporal.servers import free_port
from tests.fixtures.api import RunningApi, eventually, make_settings, running_api

LIMIT = 3


class Clock:
    """A monotonic clock the test moves by hand: the cache's age without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def backlogged_api(database_url: str) -> AsyncIterator[RunningApi]:
    """The API with a backlog limit of 3 and its relay stopped, so that what is accepted
    stays pending until the test drains it. Temporal is unreachable (nothing is routed to
    it: no campaign cares about these events)."""
    settings = make_settings(database_url, f"127.0.0.1:{free_port()}", ingest_backlog_limit=LIMIT)
    async with running_api(settings) as api:
        await api.services.relay.stop()
        yield api


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[RunningApi]:
    async for running in backlogged_api(database_url):
        yield running


@pytest.fixture
async def sqlite_api(sqlite_url: str) -> AsyncIterator[RunningApi]:
    async for running in backlogged_api(sqlite_url):
        yield running


def track(n: int) -> dict[str, Any]:
    return {"type": "track", "userId": f"u-{n}", "event": "Viewed", "messageId": f"m-{n}"}


async def rows(api: RunningApi, model: type[Any] = Event, **where: Any) -> int:
    async with api.services.sessions() as session:
        statement = select(func.count()).select_from(model).filter_by(**where)
        return (await session.execute(statement)).scalar_one()


def retry_after(answer: httpx.Response) -> int:
    assert answer.status_code == 429, answer.text
    seconds = int(answer.headers["retry-after"])
    assert 1 <= seconds <= 60
    assert answer.headers["x-ratelimit-reset"] == answer.headers["retry-after"]
    return seconds


async def test_refused_at_the_limit_with_nothing_stored_and_accepted_once_drained(
    api: RunningApi,
) -> None:
    # No cache: every request sees the backlog as it is.
    api.services.backlog = Backlog(sessions=api.services.sessions, limit=LIMIT, ttl_seconds=0)

    for n in range(LIMIT):
        answer = await api.post("/v1/track", track(n))
        assert answer.status_code == 200, answer.text
    assert await rows(api, status="pending") == LIMIT

    refused = await api.post("/v1/track", track(10))
    assert retry_after(refused) >= 1
    (problem,) = refused.json()["detail"]["problems"]
    assert "3 events wait in the outbox" in problem
    assert "limit of 3 (NUDGE_INGEST_BACKLOG_LIMIT)" in problem
    # A refused batch stores nothing, not even its bad messages in rejected_events.
    batch = {"batch": [track(11), {"type": "track", "userId": "u-12"}]}
    assert retry_after(await api.post("/v1/batch", batch)) >= 1
    identify = {"userId": "u-13", "traits": {"plan": "pro"}}
    assert retry_after(await api.post("/v1/identify", identify)) >= 1
    assert await rows(api) == LIMIT
    assert await rows(api, RejectedEvent) == 0
    assert await api.traits("u-13") is None

    # A request carrying no event is not refused: its own problem is the answer.
    bad = await api.post("/v1/track", {"userId": "u-14"})
    assert bad.status_code == 400, bad.text
    # Nor is one without the write key: who asks comes before the backlog.
    anonymous = await api.http.post("/v1/track", json=track(15))
    assert anonymous.status_code == 401

    # The relay drains the outbox (no campaign cares: every event is ignored).
    api.services.relay.start()

    async def drained() -> bool:
        return await rows(api, status="pending") == 0

    await eventually(drained, timeout=10)
    again = await api.post("/v1/batch", {"batch": [track(10), track(11)]})
    assert again.status_code == 200, again.text
    assert again.json()["accepted"] == 2
    assert (await api.event("m-10")).status in ("pending", "ignored")


async def test_the_count_is_cached_and_retry_after_follows_the_drain(
    sqlite_api: RunningApi,
) -> None:
    api = sqlite_api
    clock = Clock()
    backlog = Backlog(sessions=api.services.sessions, limit=2, ttl_seconds=1, clock=clock)
    api.services.backlog = backlog

    # One count stands for every request until it is ttl_seconds old: past the limit here.
    for n in range(3):
        assert (await api.post("/v1/track", track(n))).status_code == 200
    assert backlog.counted == 1
    assert await rows(api, status="pending") == 3

    # Stale: counted again, 3 pending, not yet seen draining: the default wait.
    clock.now = 1
    assert retry_after(await api.post("/v1/track", track(3))) == 5
    assert backlog.counted == 2

    # One event routed in a second: 2 pending (still at the limit), draining at 1/s, so the
    # one event more to drain takes a second.
    ids = [event.id for event in await api.events()]
    await mark_routed(api, ids[:1])
    clock.now = 2
    assert retry_after(await api.post("/v1/track", track(3))) == 1

    # Drained; the count of a moment ago still refuses until it is stale.
    await mark_routed(api, ids)
    assert retry_after(await api.post("/v1/track", track(3))) == 1
    clock.now = 3
    assert (await api.post("/v1/track", track(3))).status_code == 200
    assert await rows(api) == 4
    assert backlog.counted == 4


async def mark_routed(api: RunningApi, ids: list[int]) -> None:
    async with api.services.sessions() as session:
        await mark_events(session=session, event_ids=ids, status=EventStatus.routed)
        await session.commit()


async def test_concurrent_requests_share_one_count_and_no_limit_counts_nothing(
    sqlite_url: str,
) -> None:
    engine = create_engine(sqlite_url)
    try:
        sessions = session_factory(engine)
        clock = Clock()
        backlog = Backlog(sessions=sessions, limit=LIMIT, ttl_seconds=1, clock=clock)
        await asyncio.gather(*(backlog.admit() for _ in range(20)))
        assert backlog.counted == 1
        clock.now = 1
        await asyncio.gather(*(backlog.admit() for _ in range(20)))
        assert backlog.counted == 2

        unlimited = Backlog(sessions=sessions, limit=0)
        assert unlimited.limit is None
        await unlimited.admit()
        assert unlimited.counted == 0
    finally:
        await engine.dispose()
