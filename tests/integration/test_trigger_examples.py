"""The example campaigns of the new entry kinds end to end on real parts: applied from
examples/ over HTTP, users tracked and identified over HTTP, the real worker sending
sandbox messages — to exactly the audience.

- rain-promotion: the users whose city is the forecast's (trigger posted over HTTP);
- price-drop: the users who added the product to the cart in the last 7 days and did not
  buy it (read from their stored events with the trigger's product id);
- moved-house: a user whose city changes (not one who gives a city for the first time);
- weekly-digest: the members of the digest-readers segment, each held until Monday 10:00
  in their own zone (the clock's broadcast job at a chosen Sunday evening).
(birthday: tests/integration/test_birthday.py.)
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from core.clock import ClockRequest
from core.fanout import FanOutCursor
from core.journey import journey_id
from store.models import JourneyEntry
from temporal.servers import DevServer
from tests.fixtures.api import ADMIN, WRITE_KEY, RunningApi, eventually, make_settings, running_api
from worker.build import create_worker, worker_activities

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "campaigns"
SEGMENTS = EXAMPLES.parent / "segments"


async def apply_example(api: RunningApi, name: str) -> None:
    applied = await api.http.post(
        "/v1/campaigns",
        content=(EXAMPLES / f"{name}.yaml").read_bytes(),
        headers={**ADMIN, "Content-Type": "application/yaml"},
    )
    assert applied.status_code in (200, 201), applied.text
    activated = await api.http.post(f"/v1/campaigns/{name}/activate", headers=ADMIN)
    assert activated.status_code == 200, activated.text


async def messages(api: RunningApi, user: str) -> list[dict[str, Any]]:
    response = await api.http.get("/v1/messages", params={"user_id": user}, headers=ADMIN)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


async def batch(api: RunningApi, items: list[dict[str, Any]]) -> None:
    response = await api.http.post("/v1/batch", json={"batch": items}, auth=(WRITE_KEY, ""))
    assert response.status_code == 200 and response.json().get("rejected", []) == [], response.text


async def test_rain_and_price_drop_reach_exactly_their_audiences(
    database_url: str, dev_server: DevServer
) -> None:
    settings = make_settings(database_url, dev_server.address)
    client = dev_server.client
    run = uuid.uuid4().hex[:8]
    sh, bj = f"{run}-sh", f"{run}-bj"
    waiting, bought, other, stale = (f"{run}-{n}" for n in ("waiting", "bought", "other", "stale"))
    product = f"p-{run}"
    now = datetime.now(UTC)

    def track(user: str, event: str, days_ago: float, **properties: Any) -> dict[str, Any]:
        return {
            "type": "track",
            "userId": user,
            "event": event,
            "properties": properties,
            "timestamp": (now - timedelta(days=days_ago)).isoformat(),
            "messageId": f"{user}-{event}-{days_ago}",
        }

    async with (
        worker_activities(settings, client) as activities,
        create_worker(client, activities, task_queue=settings.task_queue),
        running_api(settings) as api,
    ):
        await apply_example(api, "rain-promotion")
        await apply_example(api, "price-drop")
        await batch(
            api,
            [
                {"type": "identify", "userId": sh, "traits": {"city": "Shanghai"}},
                {"type": "identify", "userId": bj, "traits": {"city": "Beijing"}},
                *(
                    {"type": "identify", "userId": u, "traits": {"city": "Paris"}}
                    for u in (waiting, bought, other, stale)
                ),
                track(waiting, "Product Added", 2, product_id=product),
                track(bought, "Product Added", 3, product_id=product),
                track(bought, "Order Completed", 1, product_id=product),
                track(other, "Product Added", 1, product_id="something-else"),
                track(stale, "Product Added", 9, product_id=product),
            ],
        )

        rain = {"id": f"rain-{run}", "properties": {"city": "Shanghai", "mm": 12}}
        posted = await api.http.post("/v1/triggers/rain", json=rain, headers=ADMIN)
        assert posted.status_code == 202, posted.text
        drop = {
            "id": f"drop-{run}",
            "properties": {"product_id": product, "name": "Monopoly", "price": 14.99},
        }
        posted = await api.http.post("/v1/triggers/price-drop", json=drop, headers=ADMIN)
        assert posted.status_code == 202, posted.text

        [umbrella] = await eventually(lambda: messages(api, sh), timeout=30)
        assert "12 mm of rain are forecast in Shanghai" in umbrella["body"]
        [cheaper] = await eventually(lambda: messages(api, waiting), timeout=30)
        assert cheaper["subject"] == "Monopoly is now 14.99"

        # The fan-outs are done once their workflows are: nobody else got anything.
        for occurrence in (f"trigger/rain/rain-{run}", f"trigger/price-drop/drop-{run}"):
            await client.get_workflow_handle(f"fanout/{occurrence}").result()
        for user in (bj, bought, other, stale):
            assert await messages(api, user) == [], user
        assert len(await messages(api, sh)) == 1


async def test_moved_house_greets_a_move_not_a_first_city(
    database_url: str, dev_server: DevServer
) -> None:
    settings = make_settings(database_url, dev_server.address)
    client = dev_server.client
    run = uuid.uuid4().hex[:8]
    mover, newcomer = f"{run}-mover", f"{run}-new"
    async with (
        worker_activities(settings, client) as activities,
        create_worker(client, activities, task_queue=settings.task_queue),
        running_api(settings) as api,
    ):
        await apply_example(api, "moved-house")
        await batch(
            api,
            [
                {"type": "identify", "userId": mover, "traits": {"city": "Lyon"}},
                {"type": "identify", "userId": mover, "traits": {"city": "Paris"}},
                {"type": "identify", "userId": newcomer, "traits": {"city": "Paris"}},
            ],
        )

        async def moved() -> list[str]:
            async with api.services.sessions() as session:
                entries = (await session.scalars(select(JourneyEntry))).all()
            assert [e.user_id for e in entries] == [mover], "not yet"
            return [e.user_id for e in entries]

        await eventually(moved, timeout=30)
        state = await api.http.get(f"/v1/journeys/moved-house/{mover}", headers=ADMIN)
        assert state.json()["current_step"] == "settle-in"  # a day before the offer
        assert state.json()["last_event"]["properties"] == {
            "trait": "city",
            "old": "Lyon",
            "new": "Paris",
        }


async def test_the_weekly_digest_reaches_its_segment_at_each_users_ten_oclock(
    sqlite_url: str, dev_server: DevServer
) -> None:
    # One database only: the firing's fan-out id (`fanout/schedule/weekly-digest/…`) is the
    # same for any run on the session's dev server, and a second one would find it done.
    settings = make_settings(sqlite_url, dev_server.address)
    client = dev_server.client
    run = uuid.uuid4().hex[:8]
    reader, lapsed = f"{run}-reader", f"{run}-lapsed"
    now = datetime.now(UTC)
    async with (
        worker_activities(settings, client) as activities,
        create_worker(client, activities, task_queue=settings.task_queue),
        running_api(settings) as api,
    ):
        applied = await api.http.post(
            "/v1/segments",
            content=(SEGMENTS / "weekly-digest.yaml").read_bytes(),
            headers={**ADMIN, "Content-Type": "application/yaml"},
        )
        assert applied.status_code in (200, 201), applied.text
        await activities.clock.build_segments(ClockRequest(now=now))
        await apply_example(api, "weekly-digest")
        opened = {
            "type": "track",
            "userId": reader,
            "event": "App Opened",
            "messageId": f"{reader}-opened",
        }
        await batch(
            api,
            [
                {"type": "identify", "userId": reader, "traits": {"timezone": "Asia/Tokyo"}},
                {"type": "identify", "userId": lapsed, "traits": {"timezone": "Asia/Tokyo"}},
                opened,
            ],
        )

        async def member() -> bool:
            found = await api.http.get("/v1/segments/digest-readers", headers=ADMIN)
            assert found.json()["member_count"] == 1
            return True

        await eventually(member, timeout=30)
        # Next Monday 10:00 first comes at UTC+14: Sunday 20:00 UTC.
        monday = (now + timedelta(days=7 - now.weekday())).date()
        fired = datetime(monday.year, monday.month, monday.day, tzinfo=UTC) - timedelta(hours=4)
        due = await activities.fanout.due_broadcasts(ClockRequest(now=fired + timedelta(minutes=1)))
        [workflow_id] = due.started
        done = await client.get_workflow_handle(workflow_id, result_type=FanOutCursor).result()
        assert (done.started, done.skipped) == (1, 0)
        description = await client.get_workflow_handle(
            journey_id("weekly-digest", reader)
        ).describe()
        tokyo_ten = datetime(monday.year, monday.month, monday.day, 1, tzinfo=UTC)
        assert description.execution_time is not None
        assert abs(description.execution_time - tokyo_ten) < timedelta(seconds=5)
        await client.get_workflow_handle(journey_id("weekly-digest", reader)).terminate("test over")
