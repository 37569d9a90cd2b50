"""A birthday end to end on real parts: the example campaign applied over HTTP, a user
identified with a birthday today, the audience clock's date job at a chosen now, the API's
relay starting the journey from the `Date Reached` event, the real worker sending one
sandbox message — and a second sweep, and a clock run on the dev server, sending nothing
more. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from temporalio.client import Client

from core.clock import WORKFLOW_CLOCK, ClockRequest, ClockTicked
from core.journey import JourneyResult, JourneyStatus, journey_id
from store.dates import date_message_id
from temporal.servers import DevServer
from tests.fixtures.api import ADMIN, WRITE_KEY, eventually, make_settings, running_api
from worker.build import create_worker, worker_activities

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "campaigns" / "birthday.yaml"


async def test_a_birthday_today_is_greeted_once(database_url: str, dev_server: DevServer) -> None:
    settings = make_settings(database_url, dev_server.address)
    client: Client = dev_server.client
    user = f"bday-{uuid.uuid4().hex[:8]}"
    today = datetime.now(UTC).date()
    nine = datetime.combine(today, time(9, 0), tzinfo=UTC)
    async with (
        worker_activities(settings, client) as activities,
        create_worker(client, activities, task_queue=settings.task_queue),
        running_api(settings) as api,
    ):
        applied = await api.http.post(
            "/v1/campaigns",
            content=EXAMPLE.read_bytes(),
            headers={**ADMIN, "Content-Type": "application/yaml"},
        )
        assert applied.status_code in (200, 201), applied.text
        activated = await api.http.post("/v1/campaigns/birthday/activate", headers=ADMIN)
        assert activated.status_code == 200, activated.text
        born = f"1990-{today:%m-%d}" if f"{today:%m-%d}" != "02-29" else "1992-02-29"
        identified = await api.http.post(
            "/v1/identify",
            json={
                "userId": user,
                "traits": {"first_name": "Ada", "birthday": born, "timezone": "UTC"},
            },
            auth=(WRITE_KEY, ""),
        )
        assert identified.status_code == 200, identified.text

        # Before 09:00 nothing is due; at 09:01 the clock's date job writes the event.
        early = await activities.clock.due_dates(ClockRequest(now=nine - timedelta(minutes=1)))
        assert early.written == 0
        swept = await activities.clock.due_dates(ClockRequest(now=nine + timedelta(minutes=1)))
        assert (swept.campaigns, swept.written) == (1, 1)
        stored = await api.event(date_message_id("birthday", str(today.year), user))
        assert stored.name == "Date Reached" and stored.type == "internal"

        async def greeted() -> list[dict]:
            response = await api.http.get("/v1/messages", params={"user_id": user}, headers=ADMIN)
            assert response.status_code == 200, response.text
            messages = response.json()["data"]
            assert messages, "no message yet"
            return messages

        [message] = await eventually(greeted, timeout=30)
        assert "Happy birthday, Ada!" in str(message)

        async def ended() -> bool:
            handle = client.get_workflow_handle(
                journey_id("birthday", user), result_type=JourneyResult
            )
            result = await handle.result()
            return result.status is JourneyStatus.completed

        await eventually(ended, timeout=30)

        # Again: the same minute, an hour later, and a real clock run — nothing more.
        again = await activities.clock.due_dates(ClockRequest(now=nine + timedelta(minutes=1)))
        later = await activities.clock.due_dates(ClockRequest(now=nine + timedelta(hours=1)))
        assert again.written == later.written == 0
        ticked = await client.execute_workflow(
            WORKFLOW_CLOCK,
            id=f"clock-{uuid.uuid4()}",
            task_queue=settings.task_queue,
            result_type=ClockTicked,
            execution_timeout=timedelta(minutes=1),
        )
        assert ticked.failed == [] and ticked.dates is not None
        assert ticked.dates.written == 0
        await asyncio.sleep(1.0)  # what the relay would start, it has started by now
        assert len(await greeted()) == 1
        assert [e.campaign_id for e in await api.entries()] == ["birthday"]
