"""An operator's retry of a failed send that keeps meeting a provider outage gives up after
RETRY_GIVE_UP and fails with the reason, its delivery recorded failed with its attempts and
last error, nothing delivered — end to end on a time-skipping server (10 minutes in a
second or two): the real API, CLI, worker and activities, SQLite and PostgreSQL, and a
webhook provider double on 127.0.0.1 that never accepts a message."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.api.enums.v1 import RetryState
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from core.operations import retry_workflow_id
from store.deliveries import retry_key
from store.models import Delivery
from tests.cli.runner import nudge
from tests.fixtures.api import (
    ADMIN,
    RunningApi,
    delivery_counts,
    eventually,
    make_settings,
    running_api,
)
from tests.fixtures.servers import ProviderDouble, Received
from worker.build import create_worker, worker_activities
from workflows.operations import DELIVER_RETRY, RETRY_GAVE_UP, RETRY_GIVE_UP


class Provider:
    """Never accepts: refuses the address for good (400) until it goes `down`, then
    answers every attempt 503, as a provider in an outage does."""

    def __init__(self) -> None:
        self.down = False

    def __call__(self, req: Received) -> tuple[int, dict[str, str], bytes]:
        if self.down:
            return 503, {"content-type": "text/plain"}, b"Service Unavailable"
        return 400, {"content-type": "text/plain"}, b"unknown recipient"


def receipts(campaign_id: str) -> dict[str, Any]:
    """One webhook send, then the journey ends."""
    return {
        "id": campaign_id,
        "name": "Receipts",
        "entry": {"event": "Order Completed"},
        "steps": [{"id": "receipt", "type": "send", "channel": "webhook", "template": "r"}],
        "templates": {"r": {"body": "Thanks {{ user_id }} for {{ event.properties.item }}"}},
    }


@dataclass
class Stack:
    env: WorkflowEnvironment
    api: RunningApi
    double: ProviderDouble
    provider: Provider


@pytest.fixture
async def stack(time_skipping_env: WorkflowEnvironment, database_url: str) -> AsyncIterator[Stack]:
    """The API and the real worker, both on the test's time-skipping server."""
    env = time_skipping_env
    provider = Provider()
    double = ProviderDouble(provider, key_header="webhook-id").start()
    address = env.client.service_client.config.target_host
    settings = make_settings(database_url, address, webhook_url=double.url)
    try:
        async with worker_activities(settings, env.client) as activities:
            worker = create_worker(env.client, activities, task_queue=settings.task_queue)
            async with worker, running_api(settings) as api:
                yield Stack(env, api, double, provider)
    finally:
        double.close()


async def deliveries_of(api: RunningApi, user: str) -> list[Delivery]:
    async with api.services.sessions() as session:
        statement = select(Delivery).where(Delivery.user_id == user).order_by(Delivery.id)
        return list(await session.scalars(statement))


async def test_a_retry_meeting_an_outage_gives_up_failed_on_the_record(
    stack: Stack, tmp_path: Path
) -> None:
    env, api, double, provider = stack.env, stack.api, stack.double, stack.provider
    campaign_id = f"receipts-{uuid.uuid4().hex[:8]}"
    await api.campaign(receipts(campaign_id))

    # The provider refuses erin's address: her receipt fails for good, at once.
    await api.track("erin", "Order Completed", properties={"item": "a lamp"})

    async def failed() -> Delivery:
        rows = await deliveries_of(api, "erin")
        assert [r.status for r in rows] == ["failed"], rows
        return rows[0]

    original = await eventually(failed, timeout=20)
    assert (original.attempts, original.error) == (
        1,
        f"webhook answered 400 from {double.url}: unknown recipient",
    )

    # Her address is fixed, but the provider is now down; the operator retries (the CLI).
    provider.down = True
    retrying = asyncio.create_task(
        nudge(tmp_path, "deliveries", "retry", str(original.id), url=api.url)
    )
    new_key = retry_key(original.idempotency_key, 1)

    async def trying() -> Delivery:
        rows = [r for r in await deliveries_of(api, "erin") if r.idempotency_key == new_key]
        # Its first attempt met the outage (the row keeps each attempt's error).
        assert rows and rows[0].error is not None, rows
        return rows[0]

    await eventually(trying, timeout=20)
    # Ten minutes of outage pass on the server's clock, in about a second.
    await env.sleep(RETRY_GIVE_UP + timedelta(minutes=1))
    ran = await retrying

    # The operator is told: the retry failed, and why.
    told = ran.failed_with("502", "the retry gave up", f"webhook answered 503 from {double.url}")
    assert told.startswith("error: 502: the retry failed: "), told

    # The workflow failed (so a later retry may run under the same id) with the reason.
    handle = env.client.get_workflow_handle(retry_workflow_id(original.id, 1))
    assert (await handle.describe()).status is WorkflowExecutionStatus.FAILED
    with pytest.raises(WorkflowFailureError) as failed_run:
        await handle.result()
    cause = failed_run.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == RETRY_GAVE_UP
    # In the provider's words, as a journey's own give-up reads (no exception type before).
    outage_error = f"webhook answered 503 from {double.url}: Service Unavailable"
    assert cause.message == f"the retry gave up: {outage_error}", cause.message

    # Its history: the send rebuilt, delivered until the give-up, closed failed; the give-up
    # came of the time spent (the next attempt would start past RETRY_GIVE_UP), after at
    # least RETRY_GIVE_UP less one backoff.
    history = await handle.fetch_history()
    assert activity_types(history) == ["prepare_retry", "deliver", "fail_delivery"]
    deliver = history.events[scheduled_event(history, "deliver") - 1]
    [gave_up] = [e for e in history.events if e.HasField("activity_task_failed_event_attributes")]
    assert (
        gave_up.activity_task_failed_event_attributes.retry_state == RetryState.RETRY_STATE_TIMEOUT
    )
    tried_for = gave_up.event_time.ToDatetime() - deliver.event_time.ToDatetime()
    backoff = DELIVER_RETRY.maximum_interval
    assert backoff is not None
    assert RETRY_GIVE_UP - backoff < tried_for <= RETRY_GIVE_UP, tried_for

    # Nothing was delivered: the provider answered every attempt 503.
    assert double.accepted() == []
    outage = [r for r in double.received if r.status == 503]
    assert [r.status for r in double.received] == [400] + [503] * len(outage)
    assert len(outage) >= 10  # 1 s, 2 s, 4 s, ... then each minute: many attempts

    # The store: the retry's own row failed, with every attempt counted and the last error.
    original_again, retried = await deliveries_of(api, "erin")
    assert (original_again.status, original_again.attempts) == ("failed", 1)
    assert retried.idempotency_key == new_key
    assert (retried.status, retried.attempts, retried.sent_at) == ("failed", len(outage), None)
    assert retried.error == outage_error
    assert retried.provider_response is not None
    assert retried.provider_response["status"] == 503
    assert retried.provider_response["attempt"] == len(outage)

    # The operator's views: the user's latest sends, and the journey's.
    view = await api.http.get("/v1/users/erin", headers=ADMIN)
    assert view.status_code == 200, view.text
    shown = [(d["id"], d["status"], d["attempts"]) for d in view.json()["deliveries"]]
    assert shown == [(retried.id, "failed", len(outage)), (original.id, "failed", 1)]
    assert view.json()["deliveries"][0]["last_error"] == retried.error
    journey = await api.http.get(f"/v1/journeys/{campaign_id}/erin", headers=ADMIN)
    assert journey.status_code == 200, journey.text
    shown = [(d["id"], d["status"], d["attempts"]) for d in journey.json()["deliveries"]]
    assert shown == [(retried.id, "failed", len(outage)), (original.id, "failed", 1)]
    # The campaign's funnel counts both sends failed, none sent.
    stats = await api.http.get(f"/v1/campaigns/{campaign_id}/stats", headers=ADMIN)
    assert stats.status_code == 200, stats.text
    assert delivery_counts(stats.json()) == {"failed": 2}


def activity_types(history: WorkflowHistory) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


def scheduled_event(history: WorkflowHistory, activity: str) -> int:
    """The id of the event that scheduled `activity` (its only run)."""
    [found] = [
        e.event_id
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == activity
    ]
    return found
