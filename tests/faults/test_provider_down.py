"""The webhook provider is down (503) while journeys start, then comes back: nothing goes out
during the outage, the sends wait as `pending` with the error kept, and after it every
message arrives exactly once. A final refusal (400) is tried once and ends `failed`."""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from core.journey import DeliveryStatus, JourneyState, JourneyStatus, idempotency_key, journey_id
from store.models import Delivery
from temporal.servers import DevServer
from tests.fixtures.api import ADMIN, WRITE_KEY, RunningApi, eventually, make_settings, running_api
from tests.fixtures.servers import ProviderDouble, Received, ok_json
from worker.build import create_worker, worker_activities

CAMPAIGN = {
    "name": "Provider outage",
    "entry": {"event": "Signed Up"},
    "steps": [
        {
            "id": "hello",
            "type": "send",
            "channel": "webhook",
            "template": "hello",
            "next": "bye",
            "on_failure": "exit",
        },
        {"id": "bye", "type": "exit"},
    ],
    "templates": {"hello": {"subject": "Welcome", "body": "Hi {{ user_id }}"}},
}
USERS = [f"user-{i:02d}" for i in range(10)]
REFUSED = "refused-user"
"""The provider refuses this recipient for good (400)."""
FAILED_ATTEMPTS_IN_OUTAGE = 3
"""Each send fails this often before the provider is back: the first try and two retries
(1 s, then 2 s later, per the deliver retry policy), an outage of about 3 s."""


class FlakyProvider:
    """503 for everything while `down`; afterwards 400 for REFUSED, 200 for the rest."""

    def __init__(self) -> None:
        self.down = True

    def __call__(self, req: Received) -> tuple[int, dict[str, str], bytes]:
        if self.down:
            return 503, {"content-type": "text/plain"}, b"maintenance"
        if req.json()["data"]["user_id"] == REFUSED:
            return 400, {"content-type": "text/plain"}, b"unknown recipient"
        return ok_json(req)


@dataclass
class Stack:
    api: RunningApi
    double: ProviderDouble
    provider: FlakyProvider
    campaign_id: str


@pytest.fixture
async def stack(database_url: str, dev_server: DevServer) -> AsyncIterator[Stack]:
    provider = FlakyProvider()
    double = ProviderDouble(provider, key_header="webhook-id").start()
    settings = make_settings(database_url, dev_server.address, webhook_url=double.url)
    try:
        async with worker_activities(settings, dev_server.client) as activities:
            worker = create_worker(dev_server.client, activities, task_queue=settings.task_queue)
            async with worker, running_api(settings) as api:
                # Ids of this run only: the dev server is shared by the session, and a
                # journey id it already knows (the other database's run) would be joined.
                campaign_id = f"outage-{uuid.uuid4().hex[:8]}"
                await api.campaign({"id": campaign_id, **CAMPAIGN})
                yield Stack(api, double, provider, campaign_id)
    finally:
        double.close()


def key(campaign_id: str, user: str) -> str:
    return idempotency_key(journey_id(campaign_id, user), f"{user}-signup", "hello", 1)


async def sign_up(api: RunningApi, users: list[str]) -> None:
    batch = [
        {"type": "track", "userId": u, "messageId": f"{u}-signup", "event": "Signed Up"}
        for u in users
    ]
    response = await api.http.post("/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
    assert response.status_code == 200, response.text


async def rows(api: RunningApi, campaign_id: str) -> dict[str, Delivery]:
    async with api.services.sessions() as session:
        found = await session.scalars(select(Delivery).where(Delivery.campaign_id == campaign_id))
        return {r.idempotency_key: r for r in found}


async def journey(api: RunningApi, campaign_id: str, user: str) -> JourneyState:
    r = await api.http.get(f"/v1/journeys/{campaign_id}/{user}", headers=ADMIN)
    assert r.status_code == 200, r.text
    return JourneyState.model_validate(r.json())


async def test_provider_down_then_back_every_message_once(stack: Stack):
    if not stack.api.settings.database_url.startswith("sqlite"):
        # The suite's time: the outage is the provider's, not the database's; the other
        # fault tests take PostgreSQL.
        pytest.skip("runs on sqlite; the provider's outage does not depend on the database")
    api, double, provider, campaign_id = stack.api, stack.double, stack.provider, stack.campaign_id
    started = time.monotonic()
    keys = {u: key(campaign_id, u) for u in USERS}

    def tries() -> collections.Counter[str | None]:
        return collections.Counter(r.headers.get("webhook-id") for r in double.received)

    # The outage: journeys start, every send is tried and retried, nothing goes out.
    await sign_up(api, USERS)

    async def waiting_out_the_outage() -> dict[str, Delivery]:
        assert all(tries()[k] >= FAILED_ATTEMPTS_IN_OUTAGE for k in keys.values()), tries()
        found = await rows(api, campaign_id)
        assert sorted(found) == sorted(keys.values())
        for row in found.values():
            assert row.status == DeliveryStatus.pending.value, row.status
            assert row.attempts >= FAILED_ATTEMPTS_IN_OUTAGE
            assert row.error is not None and "503" in row.error, row.error
        return found

    await eventually(waiting_out_the_outage, timeout=30)
    assert double.processed == {} and double.accepted() == []
    assert all(r.status == 503 for r in double.received)
    assert (await journey(api, campaign_id, USERS[0])).status is JourneyStatus.running
    outage_tries = sum(tries().values())

    # The provider is back; a user it refuses for good signs up too.
    provider.down = False
    outage_s = time.monotonic() - started
    await sign_up(api, [REFUSED])

    async def all_ended() -> bool:
        for user in [*USERS, REFUSED]:
            assert (await journey(api, campaign_id, user)).status is not JourneyStatus.running, user
        return True

    await eventually(all_ended, timeout=60, interval=0.3)

    # Every retryable send arrived exactly once; none was sent again after it went out.
    assert set(double.processed) == set(keys.values())
    answered = collections.Counter(r.headers.get("webhook-id") for r in double.accepted())
    assert answered == collections.Counter(keys.values()), answered
    found = await rows(api, campaign_id)
    for user, k in keys.items():
        assert found[k].status == DeliveryStatus.sent.value
        assert double.processed[k].json()["data"]["user_id"] == user
        state = await journey(api, campaign_id, user)
        assert state.status is JourneyStatus.exited and state.sends == 1, state  # step bye

    # The refusal: tried once, never retried, recorded as failed, the journey exits failed.
    refused = key(campaign_id, REFUSED)
    assert tries()[refused] == 1
    assert refused not in double.processed
    assert found[refused].status == DeliveryStatus.failed.value
    assert found[refused].attempts == 1
    assert "400" in (found[refused].error or "")
    state = await journey(api, campaign_id, REFUSED)
    assert state.status is JourneyStatus.failed and state.sends == 0, state

    counts: dict[str, Any] = {
        "database": api.settings.database_url.split(":", 1)[0],
        "journeys": len(USERS) + 1,
        "requests_during_outage": outage_tries,
        "requests_received": len(double.received),
        "messages_processed": len(double.processed),
        "refused_attempts": tries()[refused],
        "outage_s": round(outage_s, 1),
        "total_s": round(time.monotonic() - started, 1),
    }
    print(f"\nprovider-down counts: {counts}")
