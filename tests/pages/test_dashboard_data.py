"""The dashboard's reads and its edges, without a browser: the store's reports on SQLite and
PostgreSQL, the conversions chart's buckets, a live stream that ends by itself (so an open
one never holds the server's shutdown) and picks up where it was, and the user lookup when
Temporal cannot be reached."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.routes import dashboard
from api.routes.dashboard import buckets, parse_when
from core.definition import parse_campaign
from core.stats import CONVERTED, ENTERED
from store.campaigns import save_campaign
from store.identities import link, person_ids
from store.models import Delivery, JourneyEntry
from store.reports import campaign_names, person_deliveries, person_journeys, recent_deliveries
from temporal.servers import DevServer
from tests.fixtures.api import ADMIN, make_settings, running_api

CAMPAIGN = {
    "id": "dash-data",
    "name": "Data",
    "entry": {"event": "Signed Up"},
    "steps": [{"id": "hello", "type": "send", "channel": "sandbox", "template": "t"}],
    "templates": {"t": {"subject": "s", "body": "b"}},
}
T0 = datetime(2025, 3, 1, 12, tzinfo=UTC)


def entry(user: str, n: int, status: str = "running") -> JourneyEntry:
    return JourneyEntry(
        campaign_id="dash-data",
        campaign_version=1,
        user_id=user,
        workflow_id=f"journey/dash-data/{user}",
        run_id=f"run-{n}",
        entry_message_id=f"m-{n}",
        entered_at=T0 + timedelta(minutes=n),
        status=status,
    )


def delivery(user: str, n: int, status: str, error: str | None = None) -> Delivery:
    return Delivery(
        idempotency_key=f"key-{n}",
        workflow_id=f"journey/dash-data/{user}",
        campaign_id="dash-data",
        campaign_version=1,
        step_id="hello",
        visit=n,
        channel="sandbox",
        user_id=user,
        status=status,
        error=error,
        created_at=T0 + timedelta(minutes=n),
    )


async def test_reports_read_a_person_under_all_their_ids(
    sessions: async_sessionmaker[AsyncSession],
):
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=parse_campaign(CAMPAIGN))
        await link(session, anonymous_id="anon:v1", user_id="ada", message_id="m-link")
        session.add_all([entry("anon:v1", 1, "completed"), entry("ada", 2), entry("bob", 3)])
        session.add_all(
            [
                delivery("anon:v1", 1, "sent"),
                delivery("ada", 2, "suppressed", "unsubscribed from marketing"),
                delivery("bob", 3, "failed", "400 from the provider"),
            ]
        )
    async with sessions() as session:
        ids = await person_ids(session, "anon:v1")
        assert ids == ["ada", "anon:v1"]
        journeys = await person_journeys(session, user_ids=ids)
        assert [(j.user_id, j.status) for j in journeys] == [
            ("ada", "running"),
            ("anon:v1", "completed"),
        ]
        sent = await person_deliveries(session, user_ids=ids)
        assert [(d.user_id, d.status) for d in sent] == [("ada", "suppressed"), ("anon:v1", "sent")]
        assert await person_journeys(session, user_ids=[]) == []

        recent = await recent_deliveries(session, campaign_id="dash-data")
        assert [d.user_id for d in recent] == ["bob", "ada", "anon:v1"]
        window = await recent_deliveries(
            session,
            campaign_id="dash-data",
            since=T0 + timedelta(minutes=2),
            until=T0 + timedelta(minutes=3),
        )
        assert [d.error for d in window] == ["unsubscribed from marketing"]
        assert await recent_deliveries(session, campaign_id="dash-data", limit=1) == recent[:1]
        assert await campaign_names(session) == {"dash-data": "Data"}


def test_conversions_are_bucketed_by_hour_or_by_day_with_the_empty_ones_filled_in():
    rows = [
        (T0, ENTERED, 3, 0.0),
        (T0, CONVERTED, 1, 20.0),
        (T0 + timedelta(hours=2), CONVERTED, 2, 5.5),
    ]
    unit, hours = buckets(rows, since=None, until=None, now=T0 + timedelta(hours=3))
    assert unit == "hour" and len(hours) == 24  # at least a day's worth
    assert hours[-1].start == T0 + timedelta(hours=3)  # the hour now is in
    assert (hours[-4].entered, hours[-4].converted, hours[-4].revenue) == (3, 1, 20.0)
    assert [h.converted for h in hours[-3:]] == [0, 2, 0]

    unit, days = buckets(rows, since=T0 - timedelta(days=9), until=None, now=T0)
    assert unit == "day" and len(days) == 10
    assert days[-1].start == T0.replace(hour=0) and days[-1].converted == 3

    unit, years = buckets(rows, since=T0 - timedelta(days=3650), until=None, now=T0)
    assert len(years) == dashboard.MAX_BUCKETS and years[-1] == days[-1]

    assert buckets([], since=None, until=None, now=T0) == ("day", [])


def test_dates_in_the_filter_are_whole_days_in_utc():
    assert parse_when("2025-03-01") == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_when("2025-03-01", end=True) == datetime(2025, 3, 2, tzinfo=UTC)
    assert parse_when("2025-03-01T10:30") == datetime(2025, 3, 1, 10, 30, tzinfo=UTC)
    assert parse_when(None) is None
    with pytest.raises(ValueError):
        parse_when("yesterday")


async def test_an_open_live_stream_ends_by_itself_and_carries_on_where_it_was(
    sqlite_url: str, dev_server: DevServer, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(dashboard, "STREAM_SECONDS", 1.0)
    settings = make_settings(sqlite_url, dev_server.address)
    path = f"/dashboard/campaigns/{CAMPAIGN['id']}/live"
    async with httpx.AsyncClient(timeout=20, headers=ADMIN) as http:
        async with running_api(settings) as api:
            await api.campaign(CAMPAIGN)
            async with http.stream("GET", api.url + path) as stream:
                lines = [line async for line in stream.aiter_lines()]
            ids = [line.removeprefix("id: ") for line in lines if line.startswith("id: ")]
            assert len(ids) == 1 and "retry: 1000" in lines
            # The browser reconnects with the last id it saw: nothing changed, nothing sent.
            again = {"Last-Event-ID": ids[0]}
            async with http.stream("GET", api.url + path, headers=again) as stream:
                assert not [line async for line in stream.aiter_lines() if line.startswith("data")]

            # A stream still open when the server stops ends within its time.
            stream = await http.send(http.build_request("GET", api.url + path), stream=True)
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 5
        await stream.aclose()


async def test_the_user_lookup_says_unknown_when_temporal_cannot_be_asked(sqlite_url: str):
    settings = make_settings(sqlite_url, "127.0.0.1:1")  # nothing listens there
    async with running_api(settings) as api:
        await api.campaign(CAMPAIGN)
        async with api.services.sessions() as session, session.begin():
            session.add(entry("ada", 1))
        page = await api.http.get("/dashboard/users", params={"user": "ada"}, headers=ADMIN)
        assert page.status_code == 200
        assert "unknown" in page.text and "Temporal or a worker did not answer" in page.text
        assert "/namespaces/default/workflows/journey%2Fdash-data%2Fada" in page.text
        nobody = await api.http.get("/dashboard/users", params={"user": "zed"}, headers=ADMIN)
        assert "Nudge knows nothing about" in nobody.text
