"""End to end on real parts: the dev server, the real worker and activities, the API over
HTTP, SQLite or PostgreSQL, and a webhook provider double on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.channels.webhook import verify
from core.config import DEV_WEBHOOK_SECRET
from core.journey import JourneyState, JourneyStatus, journey_id
from store.entries import count_outcomes
from tests.fixtures.api import (
    ADMIN,
    WRITE_KEY,
    RunningApi,
    eventually,
    make_settings,
    running_api,
)
from tests.fixtures.servers import WebhookReceiver
from worker.build import create_worker, journey_activities

CAMPAIGN = {
    "id": "cart-e2e",
    "name": "Cart (end to end)",
    "entry": {"event": "Product Added", "conditions": [{"path": "properties.sku", "op": "exists"}]},
    "goals": [{"event": "Order Completed"}],
    "steps": [
        {"id": "ack", "type": "send", "channel": "webhook", "template": "ack", "next": "wait"},
        {"id": "wait", "type": "wait", "duration": "24h", "next": "remind"},
        {"id": "remind", "type": "send", "channel": "webhook", "template": "ack"},
    ],
    "templates": {
        "ack": {
            "subject": "Hi {{ traits.first_name | default('there') }}",
            "body": "{{ event.properties.name }} is in your cart",
        }
    },
}


@dataclass
class Stack:
    api: RunningApi
    env: WorkflowEnvironment
    receiver: WebhookReceiver


@pytest.fixture
async def stack(
    database_url: str, dev_env: WorkflowEnvironment, webhook_receiver: WebhookReceiver
) -> AsyncIterator[Stack]:
    settings = make_settings(
        database_url,
        dev_env.client.service_client.config.target_host,
        webhook_url=webhook_receiver.url,
    )
    async with journey_activities(settings) as activities:
        worker = create_worker(dev_env.client, activities, task_queue=settings.task_queue)
        async with worker, running_api(settings) as api:
            await api.campaign(CAMPAIGN)
            yield Stack(api, dev_env, webhook_receiver)


def batch(user: str) -> dict:
    return {
        "batch": [
            {
                "type": "identify",
                "userId": user,
                "messageId": f"{user}-identify",
                "traits": {"first_name": "Ada", "email": "ada@example.com"},
            },
            {
                "type": "track",
                "userId": user,
                "messageId": f"{user}-added",
                "event": "Product Added",
                "properties": {"sku": "U-1", "name": "Umbrella", "price": 19.5},
            },
        ]
    }


async def test_batch_starts_journey_and_webhook_gets_one_signed_request(stack: Stack):
    user = f"ada-{uuid.uuid4().hex[:6]}"
    api, receiver = stack.api, stack.receiver
    body = gzip.compress(json.dumps(batch(user)).encode())
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    response = await api.http.post("/v1/batch", content=body, headers=headers, auth=(WRITE_KEY, ""))
    assert response.status_code == 200, response.text

    await eventually(lambda: _received(receiver, 1), timeout=30)
    hit = receiver.received[0]
    assert verify(DEV_WEBHOOK_SECRET, hit.headers, hit.body)
    data = hit.json()["data"]
    assert data["user_id"] == user and data["campaign_id"] == "cart-e2e"
    assert data["subject"] == "Hi Ada" and data["body"] == "Umbrella is in your cart"

    async def waiting() -> JourneyState:
        r = await api.http.get(f"/v1/journeys/cart-e2e/{user}", headers=ADMIN)
        assert r.status_code == 200, r.text
        state = JourneyState.model_validate(r.json())
        assert state.current_step == "wait"
        return state

    await eventually(waiting)

    # The same batch again: accepted, and nothing changes.
    before = len(await api.events())
    response = await api.http.post("/v1/batch", content=body, headers=headers, auth=(WRITE_KEY, ""))
    assert response.status_code == 200
    assert len(await api.events()) == before
    assert len(await api.entries()) == 1
    state = await waiting()
    assert state.events_received == 0 and state.visits == {"ack": 1, "wait": 1}
    assert len(receiver.received) == 1

    # Operators find it in the Temporal UI by campaign and user (visibility is eventual).
    async def listed() -> list[str]:
        query = f"NudgeCampaign = 'cart-e2e' AND NudgeUser = '{user}'"
        return [w.id async for w in stack.env.client.list_workflows(query)]

    assert await eventually(listed) == [journey_id("cart-e2e", user)]

    # The order arrives: the journey ends as a conversion, counted in the store.
    await api.track(user, "Order Completed", properties={"order_id": "o-1"})

    async def converted() -> bool:
        r = await api.http.get(f"/v1/journeys/cart-e2e/{user}", headers=ADMIN)
        return JourneyState.model_validate(r.json()).status is JourneyStatus.converted

    await eventually(converted)

    async def counted() -> dict[str, int]:
        async with api.services.sessions() as session:
            counts = await count_outcomes(session=session, campaign_id="cart-e2e")
        assert counts == {"converted": 1}
        return counts

    await eventually(counted)
    assert len(receiver.received) == 1


async def test_bad_write_key_and_oversized_event_are_refused(stack: Stack):
    api = stack.api
    event = {"userId": "u", "event": "Product Added", "properties": {"sku": "x"}}
    r = await api.http.post("/v1/track", json=event, auth=("wrong-key", ""))
    assert r.status_code == 401
    big = {**event, "properties": {"sku": "x", "blob": "x" * 33_000}}
    r = await api.http.post("/v1/track", json=big, auth=(WRITE_KEY, ""))
    assert r.status_code == 400 and "32 KB" in r.text
    assert await api.events() == []
    assert stack.receiver.received == []


async def _received(receiver: WebhookReceiver, n: int) -> bool:
    assert len(receiver.received) >= n
    return True
