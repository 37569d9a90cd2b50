"""Segment entries end to end on real parts: a segment applied over HTTP, a campaign that
starts when a user enters it and one when a user leaves it; orders tracked over HTTP make
the user a member (the relay counts them and writes `Segment Entered`, which starts the
first journey), and time passing makes them leave (the audience clock's recheck at a
chosen now writes `Segment Exited`, which starts the second). SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from core.clock import ClockRequest
from temporal.servers import DevServer
from tests.fixtures.api import ADMIN, WRITE_KEY, RunningApi, eventually, make_settings, running_api
from worker.build import create_worker, worker_activities

LOYAL = {
    "id": "loyal",
    "name": "Loyal buyers",
    "events": [{"event": "Order Completed", "at_least": 2, "within": "30d"}],
}


def club(campaign_id: str, on: str, body: str) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "name": f"Loyal buyers: {on}",
        "entry": {"segment": "loyal", "on": on},
        "steps": [{"id": "say", "type": "send", "channel": "sandbox", "template": "t"}],
        "templates": {"t": {"body": body + " ({{ event.name }}: {{ event.properties.segment }})"}},
    }


async def bodies(api: RunningApi, user: str) -> list[str]:
    response = await api.http.get("/v1/messages", params={"user_id": user}, headers=ADMIN)
    assert response.status_code == 200, response.text
    return sorted(m["body"] for m in response.json()["data"])


async def test_entering_and_leaving_a_segment_start_journeys(
    database_url: str, dev_server: DevServer
) -> None:
    settings = make_settings(database_url, dev_server.address)
    client = dev_server.client
    run = uuid.uuid4().hex[:8]
    ada, bob = f"ada-{run}", f"bob-{run}"
    now = datetime.now(UTC)
    async with (
        worker_activities(settings, client) as activities,
        create_worker(client, activities, task_queue=settings.task_queue),
        running_api(settings) as api,
    ):
        applied = await api.http.post("/v1/segments", json=LOYAL, headers=ADMIN)
        assert applied.status_code in (200, 201), applied.text
        # A new segment is built for the users already there (none yet) by the clock.
        built = await activities.clock.build_segments(ClockRequest(now=now))
        assert built.building == []
        await api.campaign(club(f"welcome-{run}", "entered", "Welcome to the club"))
        await api.campaign(club(f"miss-{run}", "exited", "We miss you"))

        def order(user: str, days_ago: int) -> dict[str, Any]:
            return {
                "type": "track",
                "userId": user,
                "event": "Order Completed",
                "timestamp": (now - timedelta(days=days_ago)).isoformat(),
                "messageId": f"{user}-order-{days_ago}",
            }

        batch = [order(ada, 28), order(ada, 1), order(bob, 1)]
        response = await api.http.post("/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
        assert response.status_code == 200, response.text

        async def welcomed() -> list[str]:
            found = await bodies(api, ada)
            assert found, "not yet"
            return found

        assert await eventually(welcomed, timeout=30) == [
            "Welcome to the club (Segment Entered: loyal)"
        ]
        members = await api.http.get("/v1/segments/loyal", headers=ADMIN)
        assert members.json()["member_count"] == 1
        assert await bodies(api, bob) == []  # one order is not loyal

        # Three days on, the order of 28 days ago has left the window: Ada leaves.
        rechecked = await activities.clock.recheck_segments(
            ClockRequest(now=now + timedelta(days=3))
        )
        assert rechecked.evaluated >= 1

        async def missed() -> list[str]:
            found = await bodies(api, ada)
            assert len(found) == 2, found
            return found

        assert await eventually(missed, timeout=30) == [
            "We miss you (Segment Exited: loyal)",
            "Welcome to the club (Segment Entered: loyal)",
        ]
        members = await api.http.get("/v1/segments/loyal", headers=ADMIN)
        assert members.json()["member_count"] == 0
