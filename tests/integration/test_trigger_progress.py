"""An operator reads an external trigger's occurrence over HTTP and with `nudge triggers
show`, without the Temporal UI: received but not started yet (the relay held), its fan-out
running (read mid-page, its progress query), and completed (its result) — the counts
matching the journeys started, a campaign paused mid-way shown halted; an id never posted
404, a wrong token 401; Temporal out of reach, the occurrence as received.

Real parts: the dev server, the API over HTTP, the real worker in this process, SQLite,
`nudge` as its own process. The operator's requests are sent by a temporalio client
interceptor on the worker's client at journey starts (tests/integration/test_fanout_halt.py),
so they land in the middle of a page, deterministically.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from core.fanout import FanOutCursor, fanout_workflow_id, trigger_occurrence
from core.journey import JourneyInput
from store.models import JourneyEntry, Profile
from temporal.servers import DevServer, free_port
from tests.api.conftest import end_journeys_left
from tests.cli.runner import nudge
from tests.fixtures.api import ADMIN, RunningApi, eventually, make_settings, running_api
from tests.fixtures.temporal import AtJourneyStart
from tests.integration.test_fanout_halt import _started, campaign
from worker.build import create_worker, worker_activities

PAGE = 4
SHANGHAI = 8
"""Both campaigns' audience; two Beijing users are left out."""
TRIGGER_TOKEN = "test-trigger-token"
BY_TRIGGER_TOKEN = {"Authorization": f"Bearer {TRIGGER_TOKEN}"}


class Operator:
    """At the first journey the worker starts of the first campaign (an `AtJourneyStart`'s
    `before`), the operator pauses that campaign; at the first of the second, reads the
    occurrence (and how many journeys of the first entered) — each answered before that
    start goes on."""

    def __init__(self, api: RunningApi, paused: str, read_at: str, path: str):
        self.api = api
        self.paused = paused
        self.read_at = read_at
        self.path = path
        self.seen: set[str] = set()
        self.read: tuple[dict[str, Any], int] | None = None

    async def before(self, journey: JourneyInput) -> None:
        if journey.campaign_id in self.seen:
            return
        self.seen.add(journey.campaign_id)
        if journey.campaign_id == self.paused:
            answer = await self.api.http.post(f"/v1/campaigns/{self.paused}/pause", headers=ADMIN)
            assert answer.status_code == 200, answer.text
        elif journey.campaign_id == self.read_at:
            answer = await self.api.http.get(self.path, headers=BY_TRIGGER_TOKEN)
            assert answer.status_code == 200, answer.text
            # The page under way has reserved its users' entries: only the paused
            # campaign's are done.
            entered = [c for c, _ in await _entered(self.api) if c == self.paused]
            self.read = (answer.json(), len(entered))


async def _entered(api: RunningApi) -> list[tuple[str, str]]:
    async with api.services.sessions() as session:
        rows = await session.execute(select(JourneyEntry.campaign_id, JourneyEntry.user_id))
        return [(c, u) for c, u in rows]


async def test_an_occurrence_from_received_to_its_fan_out_halted_and_done(
    sqlite_url: str, dev_server: DevServer, tmp_path: Path
) -> None:
    settings = make_settings(
        sqlite_url, dev_server.address, fanout_page_size=PAGE, trigger_token=TRIGGER_TOKEN
    )
    run = uuid.uuid4().hex[:8]
    first, second = f"first-{run}", f"second-{run}"
    occurrence_id = f"coupon {run}/shanghai"  # the CLI sends the slash as %2F
    path = f"/v1/triggers/coupon/{occurrence_id}"
    workflow_id = fanout_workflow_id(trigger_occurrence("coupon", occurrence_id))
    dev = dev_server.client
    try:
        async with running_api(settings) as api:
            operator = Operator(api, paused=first, read_at=second, path=path)
            client = AtJourneyStart(operator.before).wrap(dev)
            async with (
                worker_activities(settings, client) as activities,
                create_worker(client, activities, task_queue=settings.task_queue),
            ):
                async with api.services.sessions() as session:
                    session.add_all(
                        Profile(user_id=f"{run}-a-sh-{i}", traits={"city": "Shanghai"})
                        for i in range(SHANGHAI)
                    )
                    session.add_all(
                        Profile(user_id=f"{run}-b-bj-{i}", traits={"city": "Beijing"})
                        for i in range(2)
                    )
                    await session.commit()
                for campaign_id in (first, second):
                    await api.campaign(campaign(campaign_id, {"trigger": "coupon"}))

                # Received, not started yet: the relay is held.
                await api.services.relay.stop()
                posted = await api.http.post(
                    "/v1/triggers/coupon", json={"id": occurrence_id}, headers=BY_TRIGGER_TOKEN
                )
                assert posted.status_code == 202, posted.text
                pending = await api.http.get(path, headers=BY_TRIGGER_TOKEN)
                assert pending.status_code == 200, pending.text
                held = pending.json()
                assert held["received"]["status"] == "pending"
                assert held["fan_out"] == {
                    "workflow_id": workflow_id,
                    "status": "not_started",
                    "progress": None,
                }
                assert held["note"].startswith("not started yet")
                assert [(c["campaign_id"], c["state"]) for c in held["campaigns"]] == [
                    (first, "not_started"),
                    (second, "not_started"),
                ]

                api.services.relay.start()
                api.services.relay.wake()
                handle = dev.get_workflow_handle(workflow_id, result_type=FanOutCursor)
                await eventually(lambda: _started(handle))
                done = await handle.result()

                # Read mid-fan-out (at the second campaign's first start): running, the
                # first campaign already halted, the counts those of the journeys entered.
                assert operator.read is not None, "the second campaign started nobody"
                running, entered_then = operator.read
                assert running["fan_out"]["status"] == "running"
                progress = running["fan_out"]["progress"]
                assert progress["halted"] == {first: "paused"}
                assert progress["target"] == 1
                assert progress["started"] == entered_then == PAGE
                assert [
                    (c["campaign_id"], c["state"], c["halted"]) for c in running["campaigns"]
                ] == [
                    (first, "halted", "paused"),
                    (second, "paging", None),
                ]

                # Completed: the result, the counts those of the journeys started.
                answer = await api.http.get(path, headers=ADMIN)
                assert answer.status_code == 200, answer.text
                shown = answer.json()
                entered = await _entered(api)
                assert shown["received"]["status"] == "routed"
                assert shown["received"]["routed_at"] is not None
                assert shown["fan_out"]["status"] == "completed"
                assert shown["fan_out"]["progress"] == done.model_dump(mode="json")
                assert shown["fan_out"]["progress"]["started"] == len(entered) == PAGE + SHANGHAI
                assert sorted(c for c, _ in entered) == [first] * PAGE + [second] * SHANGHAI
                assert shown["fan_out"]["progress"]["halted"] == {first: "paused"}
                assert shown["fan_out"]["progress"]["skipped"] >= 2  # the Beijing users
                assert [
                    (c["campaign_id"], c["state"], c["halted"]) for c in shown["campaigns"]
                ] == [
                    (first, "halted", "paused"),
                    (second, "done", None),
                ]
                assert shown["note"] is None

                # The CLI prints the same.
                ran = await nudge(
                    tmp_path, "triggers", "show", "coupon", occurrence_id, url=api.url
                )
                assert ran.code == 0, ran.stderr
                assert json.loads(ran.stdout) == shown

                # Never posted: 404 naming it, over HTTP and from the CLI.
                unknown = await api.http.get(f"/v1/triggers/coupon/nope-{run}", headers=ADMIN)
                assert unknown.status_code == 404
                assert f"no occurrence 'nope-{run}' of trigger 'coupon'" in unknown.json()["detail"]
                ran = await nudge(
                    tmp_path, "triggers", "show", "coupon", f"nope-{run}", url=api.url
                )
                ran.failed_with("404", f"nope-{run}")

                # A wrong token: 401.
                wrong = await api.http.get(path, headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401
                assert (await api.http.get(path)).status_code == 401
    finally:
        await end_journeys_left(dev, settings.task_queue)


async def test_temporal_out_of_reach_still_shows_the_occurrence_received(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, f"127.0.0.1:{free_port()}")
    async with running_api(settings) as api:
        await api.campaign(campaign("coupon", {"trigger": "coupon"}))
        posted = await api.http.post("/v1/triggers/coupon", json={"id": "c-1"}, headers=ADMIN)
        assert posted.status_code == 202, posted.text
        answer = await api.http.get("/v1/triggers/coupon/c-1", headers=ADMIN)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["received"]["status"] == "pending"
        assert (body["fan_out"]["status"], body["fan_out"]["progress"]) == ("unknown", None)
        assert body["note"].startswith("the fan-out could not be read: ")
        assert "Temporal is unreachable" in body["note"]
