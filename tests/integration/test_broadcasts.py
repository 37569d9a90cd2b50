"""Scheduled broadcasts on the real dev server: the clock's `due_broadcasts` starts one
fan-out per firing, which reaches the audience once however often the firing is seen; a
broadcast at each user's local time holds each journey until that wall time in the user's
zone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from temporalio.client import WorkflowExecutionStatus

from core.clock import ClockRequest
from core.fanout import FanOutCursor, fanout_workflow_id
from core.journey import journey_id
from store.models import JourneyEntry, Profile
from temporal.servers import DevServer
from tests.fixtures.api import eventually, make_settings, running_api
from worker.build import create_worker, worker_activities


def digest(campaign_id: str, schedule: str, timezone: str) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "name": "Weekly digest",
        "entry": {
            "schedule": schedule,
            "timezone": timezone,
            "audience": {"conditions": [{"path": "traits.plan", "value": "pro"}]},
        },
        "steps": [{"id": "later", "type": "wait", "duration": "30d"}],
    }


async def _entries(api: Any, campaign_id: str) -> list[JourneyEntry]:
    async with api.services.sessions() as session:
        statement = select(JourneyEntry).where(JourneyEntry.campaign_id == campaign_id)
        return list((await session.scalars(statement)).all())


async def test_a_broadcast_reaches_its_audience_once_per_firing(
    database_url: str, dev_server: DevServer
) -> None:
    settings = make_settings(database_url, dev_server.address)
    run = uuid.uuid4().hex[:8]
    campaign_id = f"digest-{run}"
    pro = [f"{run}-pro-{i}" for i in range(5)]
    free = [f"{run}-free-{i}" for i in range(3)]
    client = dev_server.client
    async with (
        running_api(settings) as api,
        worker_activities(settings, client) as activities,
        create_worker(client, activities, task_queue=settings.task_queue),
    ):
        async with api.services.sessions() as session:
            session.add_all(Profile(user_id=u, traits={"plan": "pro"}) for u in pro)
            session.add_all(Profile(user_id=u, traits={"plan": "free"}) for u in free)
            await session.commit()
        await api.campaign(digest(campaign_id, "every monday 10:00", "Europe/Paris"))

        # Monday 30 November 2026, 10:00 in Paris is 09:00 UTC: the clock's run at 09:03
        # sees it, and so does the next minute's (within the lookback).
        first = await activities.fanout.due_broadcasts(
            ClockRequest(now=datetime(2026, 11, 30, 9, 3, tzinfo=UTC))
        )
        occurrence = f"schedule/{campaign_id}/2026-11-30T10:00"
        assert first.started == [fanout_workflow_id(occurrence)]
        handle = client.get_workflow_handle(first.started[0], result_type=FanOutCursor)
        done = await handle.result()
        assert (done.started, done.skipped) == (5, 3)
        again = await activities.fanout.due_broadcasts(
            ClockRequest(now=datetime(2026, 11, 30, 9, 4, tzinfo=UTC))
        )
        assert again.started == first.started
        assert sorted(e.user_id for e in await _entries(api, campaign_id)) == sorted(pro)
        # Not Monday, or Monday outside the lookback: nothing.
        for now in (
            datetime(2026, 12, 1, 9, 3, tzinfo=UTC),
            datetime(2026, 11, 30, 9, 30, tzinfo=UTC),
        ):
            assert (await activities.fanout.due_broadcasts(ClockRequest(now=now))).started == []


async def test_a_local_time_broadcast_holds_each_journey_until_the_users_own_time(
    sqlite_url: str, dev_server: DevServer
) -> None:
    settings = make_settings(sqlite_url, dev_server.address)
    run = uuid.uuid4().hex[:8]
    campaign_id = f"local-{run}"
    client = dev_server.client
    zones = {f"{run}-tokyo": "Asia/Tokyo", f"{run}-ny": "America/New_York"}
    # Far enough ahead that every user's own 10:00 is still to come.
    day = (datetime.now(UTC) + timedelta(days=3)).date()
    async with (
        running_api(settings) as api,
        worker_activities(settings, client) as activities,
        create_worker(client, activities, task_queue=settings.task_queue),
    ):
        async with api.services.sessions() as session:
            session.add_all(
                Profile(user_id=u, traits={"plan": "pro", "timezone": z}) for u, z in zones.items()
            )
            await session.commit()
        await api.campaign(digest(campaign_id, "0 10 * * *", "user"))
        # 10:00 comes first at UTC+14: 20:00 UTC the day before.
        fired = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=4)
        due = await activities.fanout.due_broadcasts(ClockRequest(now=fired + timedelta(minutes=1)))
        [workflow_id] = due.started
        await client.get_workflow_handle(workflow_id, result_type=FanOutCursor).result()
        ten = datetime(day.year, day.month, day.day, 10, 0)
        expected = {
            user: ten.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC) for user, zone in zones.items()
        }
        for user, at in expected.items():
            description = await client.get_workflow_handle(journey_id(campaign_id, user)).describe()
            assert description.status == WorkflowExecutionStatus.RUNNING
            assert description.execution_time is not None
            assert abs(description.execution_time - at) < timedelta(seconds=5), user
            await client.get_workflow_handle(journey_id(campaign_id, user)).terminate("test over")
        await eventually(lambda: _all_entries(api, campaign_id, 2))


async def _all_entries(api: Any, campaign_id: str, n: int) -> bool:
    return len(await _entries(api, campaign_id)) == n
