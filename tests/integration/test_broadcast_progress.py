"""An operator reads a scheduled campaign's firings over HTTP and with `nudge campaigns
broadcasts`, without the Temporal UI: two firings of a weekly digest, newest first, each
with its fan-out's status and counts — the counts those of the journeys each firing
started; `limit`; a campaign that does not start on a schedule 200 with a note; an unknown
campaign 404.

Real parts: the dev server (its visibility lists the firings by workflow id), the API over
HTTP, the real worker in this process, SQLite, `nudge` as its own process. The firings are
driven by calling the clock's `due_broadcasts` activity with the minute it runs at
(tests/integration/test_broadcasts.py), not by waiting on the wall clock.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from core.clock import ClockRequest
from core.definition import parse_campaign
from core.fanout import (
    WORKFLOW_FANOUT,
    FanOutCursor,
    FanOutInput,
    FanOutTarget,
    fanout_workflow_id,
)
from store.models import JourneyEntry, Profile
from temporal.servers import DevServer, free_port
from tests.api.conftest import end_journeys_left
from tests.cli.runner import nudge
from tests.fixtures.api import ADMIN, RunningApi, eventually, make_settings, running_api
from tests.integration.test_broadcasts import digest
from worker.build import create_worker, worker_activities

FIRST, SECOND = "2026-11-23T10:00", "2026-11-30T10:00"
"""Two Mondays, 10:00 in Paris: 09:00 UTC."""


async def _started_by(api: RunningApi, occurrence: str) -> int:
    """Journeys entered by one firing: their entry message ids name its occurrence."""
    async with api.services.sessions() as session:
        rows = await session.scalars(
            select(JourneyEntry.user_id).where(
                JourneyEntry.entry_message_id.startswith(f"{occurrence}/")
            )
        )
        return len(list(rows))


async def _all_ended(api: RunningApi, campaign_id: str) -> bool:
    async with api.services.sessions() as session:
        statuses = list(
            await session.scalars(
                select(JourneyEntry.status).where(JourneyEntry.campaign_id == campaign_id)
            )
        )
        return bool(statuses) and "running" not in statuses


async def test_a_scheduled_campaigns_firings_newest_first_with_their_counts(
    sqlite_url: str, dev_server: DevServer, tmp_path: Path
) -> None:
    settings = make_settings(sqlite_url, dev_server.address)
    run = uuid.uuid4().hex[:8]
    campaign_id = f"digest-{run}"
    path = f"/v1/campaigns/{campaign_id}/broadcasts"
    client = dev_server.client
    try:
        async with (
            running_api(settings) as api,
            worker_activities(settings, client) as activities,
            create_worker(client, activities, task_queue=settings.task_queue),
        ):

            async def add(users: list[str], plan: str) -> None:
                async with api.services.sessions() as session:
                    session.add_all(Profile(user_id=u, traits={"plan": plan}) for u in users)
                    await session.commit()

            await add([f"{run}-pro-{i}" for i in range(5)], "pro")
            await add([f"{run}-free-{i}" for i in range(3)], "free")
            # Each journey ends at once, so the second Monday's re-entries are journeys of
            # their own (re-entry after exit).
            weekly = digest(campaign_id, "every monday 10:00", "Europe/Paris")
            weekly["steps"] = [{"id": "bye", "type": "exit"}]
            await api.campaign(weekly)

            # Scheduled, not fired yet: an empty list that says so.
            empty = await api.http.get(path, headers=ADMIN)
            assert empty.status_code == 200, empty.text
            assert empty.json()["firings"] == [] and empty.json()["note"].startswith(
                "no firing yet"
            )

            # The first Monday reaches the five pro users; by the second, two more joined.
            results: dict[str, FanOutCursor] = {}
            for wall, now in (
                (FIRST, datetime(2026, 11, 23, 9, 3, tzinfo=UTC)),
                (SECOND, datetime(2026, 11, 30, 9, 3, tzinfo=UTC)),
            ):
                [workflow_id] = (
                    await activities.fanout.due_broadcasts(ClockRequest(now=now))
                ).started
                handle = client.get_workflow_handle(workflow_id, result_type=FanOutCursor)
                results[wall] = await handle.result()
                if wall == FIRST:
                    await eventually(lambda: _all_ended(api, campaign_id))
                    await add([f"{run}-pro-late-{i}" for i in range(2)], "pro")

            async def listed() -> dict[str, object]:
                answer = await api.http.get(path, headers=ADMIN)
                assert answer.status_code == 200, answer.text
                body: dict[str, object] = answer.json()
                assert body["total"] == 2, body  # visibility catches up
                return body

            shown = await eventually(listed, timeout=10)
            assert shown["campaign_id"] == campaign_id
            assert (shown["status"], shown["schedule"], shown["timezone"]) == (
                "active",
                "every monday 10:00",
                "Europe/Paris",
            )
            assert shown["note"] is None
            firings = shown["firings"]
            assert isinstance(firings, list)
            assert [f["wall_time"] for f in firings] == [SECOND, FIRST]  # newest first
            for firing in firings:
                occurrence = f"schedule/{campaign_id}/{firing['wall_time']}"
                assert firing["occurrence"] == occurrence
                assert firing["fan_out"]["workflow_id"] == f"fanout/{occurrence}"
                assert firing["fan_out"]["status"] == "completed"
                progress = firing["fan_out"]["progress"]
                assert progress == results[firing["wall_time"]].model_dump(mode="json")
                assert progress["started"] == await _started_by(api, occurrence)
                assert firing["campaign"] == {
                    "campaign_id": campaign_id,
                    "version": 1,
                    "state": "done",
                    "halted": None,
                }
                assert firing["note"] is None
            counts = {
                f["wall_time"]: (
                    f["fan_out"]["progress"]["started"],
                    f["fan_out"]["progress"]["skipped"],
                )
                for f in firings
            }
            assert counts == {FIRST: (5, 3), SECOND: (7, 3)}

            # The newest only; a limit out of range refused.
            one = await api.http.get(path, params={"limit": 1}, headers=ADMIN)
            assert one.status_code == 200, one.text
            assert [f["wall_time"] for f in one.json()["firings"]] == [SECOND]
            assert one.json()["total"] == 2
            for limit in (0, 101):
                refused = await api.http.get(path, params={"limit": limit}, headers=ADMIN)
                assert refused.status_code == 422, refused.text

            # The CLI prints the same.
            ran = await nudge(tmp_path, "campaigns", "broadcasts", campaign_id, url=api.url)
            assert ran.code == 0, ran.stderr
            assert json.loads(ran.stdout) == shown
            ran = await nudge(
                tmp_path, "campaigns", "broadcasts", campaign_id, "--limit", "1", url=api.url
            )
            assert ran.code == 0, ran.stderr
            assert json.loads(ran.stdout) == one.json()

            # A campaign that starts on an event: no firings, and a note saying why.
            event_id = f"welcome-{run}"
            await api.campaign(
                {
                    "id": event_id,
                    "name": "Welcome",
                    "entry": {"event": "Signed Up"},
                    "steps": [{"id": "bye", "type": "exit"}],
                }
            )
            answer = await api.http.get(f"/v1/campaigns/{event_id}/broadcasts", headers=ADMIN)
            assert answer.status_code == 200, answer.text
            assert answer.json()["firings"] == [] and answer.json()["schedule"] is None
            assert answer.json()["note"] == f"campaign {event_id!r} does not start on a schedule"

            # Unknown: 404 over HTTP and from the CLI; no token: 401.
            unknown = await api.http.get(f"/v1/campaigns/nope-{run}/broadcasts", headers=ADMIN)
            assert unknown.status_code == 404
            assert unknown.json()["detail"] == f"no campaign 'nope-{run}'"
            ran = await nudge(tmp_path, "campaigns", "broadcasts", f"nope-{run}", url=api.url)
            ran.failed_with("404", f"nope-{run}")
            assert (await api.http.get(path)).status_code == 401
    finally:
        await end_journeys_left(client, settings.task_queue)


async def test_a_stopped_firing_no_worker_answers_for_says_how_it_ended(
    sqlite_url: str, dev_server: DevServer
) -> None:
    """A firing terminated while no worker polled its queue: its status and the reason,
    its counts unknown (none is made up: no worker replays it to say how far it got), its
    campaign's state unknown — in a couple of seconds, not the running query's 15."""
    settings = make_settings(sqlite_url, dev_server.address)
    campaign_id = f"digest-{uuid.uuid4().hex[:8]}"
    client = dev_server.client
    async with running_api(settings) as api:
        definition = digest(campaign_id, "every monday 10:00", "Europe/Paris")
        await api.campaign(definition)
        occurrence = f"schedule/{campaign_id}/{FIRST}"
        handle = await client.start_workflow(
            WORKFLOW_FANOUT,
            FanOutInput(
                occurrence=occurrence,
                entry_name="schedule",
                fired_at=datetime(2026, 11, 23, 9, tzinfo=UTC),
                targets=[
                    FanOutTarget(
                        campaign_id=campaign_id,
                        campaign_version=1,
                        campaign_name="Weekly digest",
                        plan=parse_campaign(definition).plan(),
                    )
                ],
            ),
            id=fanout_workflow_id(occurrence),
            task_queue=f"nobody-{uuid.uuid4().hex[:8]}",
        )
        await handle.terminate(reason="stopped by the test")
        began = time.monotonic()
        answer = await api.http.get(f"/v1/campaigns/{campaign_id}/broadcasts", headers=ADMIN)
        took = time.monotonic() - began
        assert answer.status_code == 200, answer.text
        [firing] = answer.json()["firings"]
        assert (firing["fan_out"]["status"], firing["fan_out"]["progress"]) == ("terminated", None)
        assert firing["note"] == (
            "its fan-out ended terminated: stopped by the test "
            "(how far it got is not known now: no worker answered)"
        )
        assert firing["campaign"]["state"] == "unknown"
        assert took < 10, took


async def test_temporal_out_of_reach_is_503(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, f"127.0.0.1:{free_port()}")
    async with running_api(settings) as api:
        await api.campaign(digest("digest", "every monday 10:00", "Europe/Paris"))
        answer = await api.http.get("/v1/campaigns/digest/broadcasts", headers=ADMIN)
        assert answer.status_code == 503, answer.text
        assert "Temporal is unreachable" in answer.json()["detail"]
