"""Stopping a broadcast: an external trigger, or a scheduled broadcast, whose campaign an
operator pauses or archives over HTTP while its fan-out runs enters nobody more — the
fan-out completes with the halt in its result, progress and current details, fewer
journeys than the audience; and resuming the campaign does not resume the broadcast.

Real parts: the dev server, the API over HTTP (the trigger, the pause), the real worker in
this process, SQLite. The operator's request is sent by a temporalio client interceptor on
the worker's client at the first journey start, so it lands in the middle of the first
page, deterministically: that page (its one chunk) is under way and finishes, the next
page finds the campaign stopped.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from core.clock import ClockRequest
from core.fanout import FanOutCursor, fanout_workflow_id, trigger_occurrence
from core.journey import JourneyInput
from store.models import JourneyEntry, Profile
from temporal.servers import DevServer
from tests.api.conftest import end_journeys_left
from tests.fixtures.api import ADMIN, RunningApi, eventually, make_settings, running_api
from tests.fixtures.temporal import AtJourneyStart
from worker.build import create_worker, worker_activities

MEMBERS = 12
PAGE = 4
"""NUDGE_FANOUT_PAGE_SIZE: the first page is 4 members, and the fan-out is halted on the
second."""


def campaign(campaign_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "name": "Coupon",
        "entry": {
            **entry,
            "audience": {"conditions": [{"path": "traits.city", "value": "Shanghai"}]},
        },
        "steps": [{"id": "done", "type": "exit"}],
    }


def operator_at_first_start(api: RunningApi, action: str) -> AtJourneyStart:
    """At the first journey the worker starts, the operator POSTs `/v1/campaigns/{id}/
    {action}` (pause, archive) and is answered before that start goes on."""

    async def before(journey: JourneyInput) -> None:
        if len(operator.started) == 1:
            answer = await api.http.post(
                f"/v1/campaigns/{journey.campaign_id}/{action}", headers=ADMIN
            )
            assert answer.status_code == 200, answer.text

    operator = AtJourneyStart(before)
    return operator


async def _started(handle: WorkflowHandle[Any, Any]) -> bool:
    try:
        await handle.describe()
    except RPCError as exc:
        assert exc.status != RPCStatusCode.NOT_FOUND, "not started yet"
        raise
    return True


async def _entered(api: RunningApi, campaign_id: str) -> list[str]:
    async with api.services.sessions() as session:
        rows = await session.scalars(
            select(JourneyEntry.user_id)
            .where(JourneyEntry.campaign_id == campaign_id)
            .order_by(JourneyEntry.user_id)
        )
        return list(rows)


@pytest.mark.parametrize(
    ("entry", "action", "status"),
    [
        pytest.param({"trigger": "coupon"}, "pause", "paused", id="trigger-paused"),
        pytest.param(
            {"schedule": "every monday 10:00", "timezone": "UTC"},
            "archive",
            "archived",
            id="broadcast-archived",
        ),
    ],
)
async def test_stopping_the_campaign_stops_its_fan_out(
    sqlite_url: str, dev_server: DevServer, entry: dict[str, Any], action: str, status: str
) -> None:
    settings = make_settings(sqlite_url, dev_server.address, fanout_page_size=PAGE)
    run = uuid.uuid4().hex[:8]
    campaign_id = f"coupon-{run}"
    members = [f"{run}-sh-{i:02d}" for i in range(MEMBERS)]
    dev = dev_server.client
    try:
        async with running_api(settings) as api:
            operator = operator_at_first_start(api, action)
            client = operator.wrap(dev)
            async with (
                worker_activities(settings, client) as activities,
                create_worker(client, activities, task_queue=settings.task_queue),
            ):
                async with api.services.sessions() as session:
                    session.add_all(
                        Profile(user_id=u, traits={"city": "Shanghai"}) for u in members
                    )
                    await session.commit()
                await api.campaign(campaign(campaign_id, entry))

                if "trigger" in entry:
                    body = {"id": f"coupon-{run}"}
                    posted = await api.http.post("/v1/triggers/coupon", json=body, headers=ADMIN)
                    assert posted.status_code == 202, posted.text
                    assert posted.json()["campaigns"] == [campaign_id]
                    workflow_id = fanout_workflow_id(trigger_occurrence("coupon", body["id"]))
                else:
                    # Monday 30 November 2026, 10:00 UTC: the clock's run at 10:01 fires it.
                    due = await activities.fanout.due_broadcasts(
                        ClockRequest(now=datetime(2026, 11, 30, 10, 1, tzinfo=UTC))
                    )
                    [workflow_id] = due.started
                handle = dev.get_workflow_handle(workflow_id, result_type=FanOutCursor)
                await eventually(lambda: _started(handle))  # the relay starts it
                done = await handle.result()
                metadata = await handle.query(
                    "__temporal_workflow_metadata", result_type=WorkflowMetadata
                )
                progress = await handle.query("progress", result_type=FanOutCursor)

                # The first page went through; the second found the campaign stopped.
                assert done.halted == {campaign_id: status}
                assert (done.started, done.pages, done.target, done.after) == (PAGE, 2, 1, None)
                assert progress == done
                assert len(operator.started) == PAGE
                assert await _entered(api, campaign_id) == members[:PAGE]
                assert f"**halted** {campaign_id} ({status})" in metadata.current_details

                if "trigger" in entry:
                    # Resumed and the trigger posted again: the occurrence is over (a
                    # duplicate), nobody more enters.
                    answer = await api.http.post(
                        f"/v1/campaigns/{campaign_id}/activate", headers=ADMIN
                    )
                    assert answer.status_code == 200, answer.text
                    again = await api.http.post("/v1/triggers/coupon", json=body, headers=ADMIN)
                    assert again.status_code == 202 and again.json()["duplicate"] is True
                    assert await _entered(api, campaign_id) == members[:PAGE]
    finally:
        await end_journeys_left(dev, settings.task_queue)
