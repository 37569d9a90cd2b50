"""Operator tools end to end — the real API over HTTP, a real worker on the session's dev
server, SQLite, a webhook provider double on 127.0.0.1: a send stuck on a down provider
(its attempts, last error and answer in the journey view, a Temporal failure that fits),
the retry of a failed send (sent once; 409 after), and the bulk exit of a campaign's
journeys (all, and only at one step) with its progress — each CLI command once."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from core.journey import JourneyStatus, journey_id
from store.entries import reserve_entries
from store.models import Delivery, JourneyEntry
from store.subscriptions import add_suppression, remove_suppression
from temporal.servers import DevServer
from tests.cli.runner import nudge
from tests.fixtures.api import ADMIN, RunningApi, eventually, make_settings, running_api
from tests.fixtures.servers import ProviderDouble, Received, ok_json
from worker.build import create_worker, worker_activities

ERROR_PAGE = "<html><body>" + "Service Unavailable. " * 50_000 + "</body></html>"
"""About 1 MB: what a provider's proxy answers while the provider is down."""


class Provider:
    """503 with a 1 MB page while `down`; a final 400 for the users in `refused`."""

    def __init__(self) -> None:
        self.down = False
        self.refused: set[str] = set()

    def __call__(self, req: Received) -> tuple[int, dict[str, str], bytes]:
        if self.down:
            return 503, {"content-type": "text/html"}, ERROR_PAGE.encode()
        if req.json()["data"]["user_id"] in self.refused:
            return 400, {"content-type": "text/plain"}, b"unknown recipient"
        return ok_json(req)


def receipts(campaign_id: str) -> dict[str, Any]:
    """An order's receipt goes out at once; the journey then waits a week."""
    return {
        "id": campaign_id,
        "name": "Receipts",
        "entry": {"event": "Order Completed"},
        "steps": [
            {
                "id": "receipt",
                "type": "send",
                "channel": "webhook",
                "template": "receipt",
                "next": "later",
            },
            {"id": "later", "type": "wait", "duration": "7d"},
        ],
        "templates": {"receipt": {"body": "Thanks {{ user_id }} for {{ event.properties.item }}"}},
    }


def plans(campaign_id: str) -> dict[str, Any]:
    """Journeys that wait a week at one of two steps, by the plan they signed up to."""
    return {
        "id": campaign_id,
        "name": "Plans",
        "entry": {"event": "Signed Up"},
        "steps": [
            {
                "id": "route",
                "type": "branch",
                "branches": [
                    {
                        "conditions": [{"path": "properties.plan", "op": "eq", "value": "pro"}],
                        "next": "pro-wait",
                    }
                ],
                "else": "free-wait",
            },
            {"id": "pro-wait", "type": "wait", "duration": "7d"},
            {"id": "free-wait", "type": "wait", "duration": "7d"},
        ],
        "templates": {},
    }


@dataclass
class Stack:
    api: RunningApi
    client: Client
    double: ProviderDouble
    provider: Provider
    tmp: Path


@pytest.fixture
async def stack(sqlite_url: str, dev_server: DevServer, tmp_path: Path) -> AsyncIterator[Stack]:
    provider = Provider()
    double = ProviderDouble(provider, key_header="webhook-id").start()
    settings = make_settings(sqlite_url, dev_server.address, webhook_url=double.url)
    try:
        async with worker_activities(settings, dev_server.client) as activities:
            worker = create_worker(dev_server.client, activities, task_queue=settings.task_queue)
            async with worker, running_api(settings) as api:
                yield Stack(api, dev_server.client, double, provider, tmp_path)
    finally:
        double.close()


async def delivery_of(api: RunningApi, campaign_id: str, user: str) -> Delivery:
    async with api.services.sessions() as session:
        rows = list(
            await session.scalars(
                select(Delivery)
                .where(Delivery.campaign_id == campaign_id, Delivery.user_id == user)
                .order_by(Delivery.id)
            )
        )
    assert rows, f"no delivery of {user!r} yet"
    return rows[0]


async def test_stuck_send_shows_its_attempts_fits_temporal_and_a_failed_one_is_retried_once(
    stack: Stack,
) -> None:
    api, provider, double = stack.api, stack.provider, stack.double
    campaign_id = f"receipts-{uuid.uuid4().hex[:8]}"
    await api.campaign(receipts(campaign_id))

    # The provider is down, answering each attempt with a 1 MB error page.
    provider.down = True
    await api.track("bob", "Order Completed", properties={"item": "a lamp"})

    async def retried() -> Delivery:
        row = await delivery_of(api, campaign_id, "bob")
        assert row.status == "pending" and row.attempts >= 2, (row.status, row.attempts)
        return row

    row = await eventually(retried, timeout=20)
    assert row.error is not None and row.error.startswith(
        f"webhook answered 503 from {double.url}: "
    )
    assert "Service Unavailable." in row.error and len(row.error) <= 400, len(row.error)
    answer = row.provider_response
    assert answer is not None
    assert answer["status"] == 503 and answer["url"] == double.url
    assert answer["attempt"] >= 1 and len(answer["body"]) <= 300

    # Temporal's record of the failing attempt: short, whole, no chained cause.
    handle = stack.client.get_workflow_handle(journey_id(campaign_id, "bob"))
    pending = (await handle.describe()).raw_description.pending_activities
    assert len(pending) == 1 and pending[0].attempt >= 2
    failure = pending[0].last_failure
    assert failure.ByteSize() < 4096, failure.ByteSize()  # the server's limit is 4 KB
    assert not failure.HasField("cause")
    error = await stack.client.data_converter.decode_failure(failure)  # the codec's
    assert isinstance(error, ApplicationError) and error.type == "ProviderUnavailable"
    assert error.message.startswith(f"webhook answered 503 from {double.url}: <html><body>Ser")
    assert error.message.endswith(" more characters)") and len(error.message) <= 400

    # The journey view: its state where it always was, and the send's attempts.
    view = await api.http.get(f"/v1/journeys/{campaign_id}/bob", headers=ADMIN)
    assert view.status_code == 200, view.text
    body = view.json()
    assert body["status"] == "running" and body["current_step"] == "receipt"
    [sent] = body["deliveries"]
    assert sent["id"] == row.id and sent["channel"] == "webhook" and sent["step_id"] == "receipt"
    assert sent["status"] == "pending" and sent["attempts"] >= 2
    assert sent["last_error"].startswith("webhook answered 503 from ")
    assert sent["provider_answer"]["status"] == 503

    # Back up, but refusing carol and dan for good: their sends fail once, at once.
    provider.refused |= {"carol", "dan"}
    provider.down = False
    await api.track("carol", "Order Completed", properties={"item": "a chair"})
    await api.track("dan", "Order Completed", properties={"item": "a rug"})

    async def failed() -> tuple[Delivery, Delivery]:
        carol = await delivery_of(api, campaign_id, "carol")
        dan = await delivery_of(api, campaign_id, "dan")
        assert (carol.status, dan.status) == ("failed", "failed"), (carol.status, dan.status)
        return carol, dan

    carol, dan = await eventually(failed, timeout=20)
    assert carol.error == f"webhook answered 400 from {double.url}: unknown recipient"
    view = (await api.http.get(f"/v1/journeys/{campaign_id}/carol", headers=ADMIN)).json()
    assert [(d["status"], d["attempts"]) for d in view["deliveries"]] == [("failed", 1)]

    # Carol's address is fixed: the operator retries her send (the CLI), it goes out once.
    provider.refused.clear()
    ran = await nudge(stack.tmp, "deliveries", "retry", str(carol.id), url=api.url)
    assert ran.code == 0, ran.stderr
    retried_send = json.loads(ran.stdout)
    assert retried_send["delivery_id"] == carol.id and retried_send["retry"] == 1
    assert retried_send["status"] == "sent", retried_send
    new_row = retried_send["delivery"]
    assert new_row["status"] == "sent" and new_row["step_id"] == "receipt"
    assert new_row["id"] != carol.id
    to_carol = [r for r in double.accepted() if r.json()["data"]["user_id"] == "carol"]
    assert len(to_carol) == 1
    assert to_carol[0].json()["data"]["body"] == "Thanks carol for a chair"

    # Once is once: the original again, the new (sent) row, and an unknown id.
    again = await api.http.post(f"/v1/deliveries/{carol.id}/retry", headers=ADMIN)
    assert again.status_code == 409 and "retry 1" in again.json()["detail"], again.text
    sent_one = await api.http.post(f"/v1/deliveries/{new_row['id']}/retry", headers=ADMIN)
    assert sent_one.status_code == 409, sent_one.text
    assert f"delivery {carol.id} was retried (sent)" in sent_one.json()["detail"]
    unknown = await api.http.post("/v1/deliveries/987654321/retry", headers=ADMIN)
    assert unknown.status_code == 404, unknown.text
    assert len([r for r in double.accepted() if r.json()["data"]["user_id"] == "carol"]) == 1

    # Consent still counts: dan's address bounced meanwhile, his send is not retried...
    async with api.services.sessions() as session, session.begin():
        await add_suppression(session=session, user_id="dan", channel="webhook", reason="bounced")
    refused = await api.http.post(f"/v1/deliveries/{dan.id}/retry", headers=ADMIN)
    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"] == (
        f"delivery {dan.id}: webhook is suppressed for 'dan' (bounced)"
    )
    # ...until the suppression is lifted.
    async with api.services.sessions() as session, session.begin():
        await remove_suppression(session=session, user_id="dan", channel="webhook")
    retried = await api.http.post(f"/v1/deliveries/{dan.id}/retry", headers=ADMIN)
    assert retried.status_code == 200 and retried.json()["status"] == "sent", retried.text
    assert [r.json()["data"]["body"] for r in double.accepted()].count("Thanks dan for a rug") == 1


async def states(client: Client, campaign_id: str, users: list[str]) -> dict[str, str | None]:
    """Each user's journey: the step it is at while it runs, else how it ended (None: not
    started yet)."""
    found: dict[str, str | None] = {}
    for user in users:
        try:
            state = await client.get_workflow_handle(journey_id(campaign_id, user)).query("state")
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            found[user] = None
            continue
        found[user] = state["current_step"] if state["status"] == "running" else state["status"]
    return found


async def test_bulk_exit_at_one_step_then_all_with_progress(stack: Stack) -> None:
    api, client = stack.api, stack.client
    campaign_id = f"plans-{uuid.uuid4().hex[:8]}"
    await api.campaign(plans(campaign_id))
    pro, free = ["p1", "p2", "p3"], ["f1", "f2"]
    for user in pro:
        await api.track(user, "Signed Up", properties={"plan": "pro"})
    for user in free:
        await api.track(user, "Signed Up", properties={"plan": "free"})
    everyone = {**dict.fromkeys(pro, "pro-wait"), **dict.fromkeys(free, "free-wait")}

    async def waiting() -> bool:
        assert await states(client, campaign_id, list(everyone)) == everyone
        return True

    await eventually(waiting, timeout=20)
    # A row whose journey never started (its starter died): nothing to end, skipped.
    async with api.services.sessions() as session, session.begin():
        ghost = journey_id(campaign_id, "ghost")
        await reserve_entries(
            session=session,
            campaign_id=campaign_id,
            campaign_version=1,
            entries=[("ghost", ghost, f"m-{uuid.uuid4()}")],
        )

    # Only the journeys at `pro-wait`, two rows a page.
    body = {"reason": "plan retired", "step": "pro-wait", "page_size": 2, "request_id": "r-1"}
    started = await api.http.post(f"/v1/campaigns/{campaign_id}/exit", json=body, headers=ADMIN)
    assert started.status_code == 202, started.text
    operation = started.json()
    assert operation["operation_id"] == "r-1"
    path = f"/v1/campaigns/{campaign_id}/exit/r-1"

    async def finished() -> dict[str, Any]:
        answer = await api.http.get(path, headers=ADMIN)
        assert answer.status_code == 200, answer.text
        # The progress query says `done` a moment before the workflow's own status does.
        assert answer.json()["status"] == "completed", answer.json()
        assert answer.json()["progress"]["done"], answer.json()
        return answer.json()

    done = await eventually(finished, timeout=30)
    progress = done["progress"]
    assert (progress["seen"], progress["exited"], progress["failed"]) == (6, 3, 0), progress
    assert (progress["skipped"], progress["not_at_step"]) == (3, 2), progress
    assert progress["pages"] == 4  # three full pages, then an empty one
    after = await states(client, campaign_id, list(everyone))
    assert after == {**dict.fromkeys(pro, "exited"), **dict.fromkeys(free, "free-wait")}

    # The same request id again is the same operation, not a second one.
    same = await api.http.post(f"/v1/campaigns/{campaign_id}/exit", json=body, headers=ADMIN)
    assert same.status_code == 202 and same.json()["progress"] == progress
    missing = await api.http.get(f"/v1/campaigns/{campaign_id}/exit/nope", headers=ADMIN)
    assert missing.status_code == 404, missing.text
    no_campaign = await api.http.post("/v1/campaigns/no-such/exit", json=body, headers=ADMIN)
    assert no_campaign.status_code == 404, no_campaign.text
    bad = await api.http.post(f"/v1/campaigns/{campaign_id}/exit", json={}, headers=ADMIN)
    assert bad.status_code == 422 and "reason" in bad.text
    typo = {"reason": "plan retired", "step": "pro-wiat"}
    mistyped = await api.http.post(f"/v1/campaigns/{campaign_id}/exit", json=typo, headers=ADMIN)
    assert mistyped.status_code == 422, mistyped.text
    assert "has a step 'pro-wiat' (its steps: " in mistyped.text and "pro-wait" in mistyped.text
    # A misspelt field is refused, not dropped (`steps` would have exited every journey).
    wrong = {"reason": "plan retired", "steps": "pro-wait"}
    unknown = await api.http.post(f"/v1/campaigns/{campaign_id}/exit", json=wrong, headers=ADMIN)
    assert unknown.status_code == 422 and "steps" in unknown.text, unknown.text

    # Everyone left, from the CLI, waiting and printing progress.
    ran = await nudge(
        stack.tmp, "campaigns", "exit", campaign_id, "--reason", "shut down", "--wait", url=api.url
    )
    assert ran.code == 0, ran.stderr
    final = json.loads(ran.stdout)
    assert final["status"] == "completed" and final["progress"]["exited"] == 2
    assert final["progress"]["failed"] == 0
    assert final["progress"]["seen"] == final["progress"]["exited"] + final["progress"]["skipped"]
    last_line = ran.stderr.strip().splitlines()[-1]
    assert "2 exited" in last_line and last_line.endswith("0 failed — done"), ran.stderr
    assert set((await states(client, campaign_id, list(everyone))).values()) == {"exited"}

    async def recorded() -> bool:
        async with api.services.sessions() as session:
            rows = await session.scalars(
                select(JourneyEntry).where(JourneyEntry.campaign_id == campaign_id)
            )
            by_user = {r.user_id: (r.status, r.exit_reason) for r in rows}
        assert by_user.pop("ghost")[0] == JourneyStatus.running.value
        assert by_user == {
            **dict.fromkeys(pro, ("exited", "operator: plan retired")),
            **dict.fromkeys(free, ("exited", "operator: shut down")),
        }
        return True

    await eventually(recorded, timeout=10)
