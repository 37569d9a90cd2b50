"""End to end on real parts: the dev server, the real worker and activities, the API over
HTTP, SQLite or PostgreSQL, and a webhook provider double on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from activities.channels.webhook import verify
from core.config import DEV_WEBHOOK_SECRET
from core.journey import JourneyState, JourneyStatus, journey_id
from core.links import make_token
from store.entries import count_outcomes
from temporal.servers import DevServer
from tests.fixtures.api import (
    ADMIN,
    WRITE_KEY,
    RunningApi,
    Stack,
    delivery_counts,
    eventually,
    nonzero,
    webhook_stack,
)
from tests.fixtures.servers import WebhookReceiver

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


@pytest.fixture
async def stack(
    database_url: str, dev_server: DevServer, webhook_receiver: WebhookReceiver
) -> AsyncIterator[Stack]:
    async with webhook_stack(database_url, dev_server, webhook_receiver, CAMPAIGN) as stack:
        yield stack


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
        return [w.id async for w in stack.temporal.client.list_workflows(query)]

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
    stats = (await api.http.get("/v1/campaigns/cart-e2e/stats", headers=ADMIN)).json()
    funnel = stats["funnel"]
    assert funnel["entered"] == 1 and nonzero(stats["journeys"]) == {"converted": 1}
    assert delivery_counts(stats) == {"sent": 1} and funnel["conversion_rate"] == 1.0
    assert funnel["converted"] == 1 and funnel["goal_without_message"] == 0


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


SANDBOX = {
    "id": "welcome-e2e",
    "name": "Welcome (end to end)",
    "entry": {"event": "Signed Up"},
    "steps": [{"id": "hello", "type": "send", "channel": "sandbox", "template": "hello"}],
    "templates": {"hello": {"subject": "Welcome {{ traits.first_name }}", "body": "Hi!"}},
}


def nudge(api: RunningApi, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `nudge` command against the running API, as a user types it: in a directory
    of the test's own (no developer's .env is read), with no NUDGE_* from the shell."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")},
        "NUDGE_URL": api.url,
        "NUDGE_WRITE_KEY": WRITE_KEY,
        "NUDGE_ADMIN_TOKEN": ADMIN["Authorization"].split()[1],
        "NUDGE_LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "nudge"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_drives_a_sandbox_journey(stack: Stack, tmp_path: Path):
    api = stack.api
    user = f"grace-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "welcome.yaml"
    path.write_text(yaml.safe_dump(SANDBOX))
    applied = await asyncio.to_thread(
        nudge, api, tmp_path, "campaigns", "apply", str(path), "--activate"
    )
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["status"] == "active"
    shown = await asyncio.to_thread(nudge, api, tmp_path, "campaigns", "show", "welcome-e2e")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert [v["version"] for v in detail["versions"]] == [1]
    assert detail["definition"]["id"] == "welcome-e2e"

    r = await api.post("/v1/identify", {"userId": user, "traits": {"first_name": "Grace"}})
    assert r.status_code == 200
    sent = await asyncio.to_thread(
        nudge, api, tmp_path, "events", "send", "--user", user, "--event", "Signed Up"
    )
    assert sent.returncode == 0, sent.stderr

    async def kept() -> list[dict]:
        shown = await asyncio.to_thread(nudge, api, tmp_path, "messages", "--user", user)
        assert shown.returncode == 0, shown.stderr
        messages = json.loads(shown.stdout)
        assert len(messages) == 1
        return messages

    [message] = await eventually(kept, timeout=30)
    assert message["subject"] == "Welcome Grace" and message["body"] == "Hi!"

    async def done() -> dict:
        stats = await asyncio.to_thread(nudge, api, tmp_path, "campaigns", "stats", "welcome-e2e")
        assert stats.returncode == 0, stats.stderr
        figures = json.loads(stats.stdout)
        assert nonzero(figures["journeys"]) == {"completed": 1}
        return figures

    figures = await eventually(done, timeout=30)
    assert figures["funnel"]["entered"] == 1 and delivery_counts(figures) == {"sent": 1}

    missing = await asyncio.to_thread(
        nudge, api, tmp_path, "journeys", "show", "welcome-e2e", "nobody"
    )
    assert missing.returncode != 0 and "404" in missing.stderr


async def test_an_unsubscribed_user_gets_nothing_and_the_suppression_is_recorded(stack: Stack):
    api, receiver = stack.api, stack.receiver
    user = f"lin-{uuid.uuid4().hex[:6]}"
    token = make_token(
        secret=api.settings.link_secret,
        user_id=user,
        channel="webhook",
        group="marketing",
        expires_at=datetime.now(UTC) + timedelta(days=1),
    )
    # What a mail client's one-click button does (RFC 8058): a POST, no cookies, no auth.
    page = await api.http.get(f"/u/{token}")
    assert page.status_code == 200 and "<form" in page.text
    clicked = await api.http.post(
        f"/u/{token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert clicked.status_code == 200
    tampered = await api.http.post(f"/u/{token[:-2]}xx", content=b"List-Unsubscribe=One-Click")
    assert tampered.status_code == 400

    r = await api.post("/v1/batch", batch(user))
    assert r.status_code == 200, r.text

    async def suppressed() -> JourneyState:
        got = await api.http.get(f"/v1/journeys/cart-e2e/{user}", headers=ADMIN)
        assert got.status_code == 200, got.text
        state = JourneyState.model_validate(got.json())
        ack = next(h for h in state.history if h.step_id == "ack")
        assert ack.outcome == "suppressed: unsubscribed from marketing on webhook"
        return state

    await eventually(suppressed, timeout=30)
    stats = (await api.http.get("/v1/campaigns/cart-e2e/stats", headers=ADMIN)).json()
    assert delivery_counts(stats) == {"suppressed": 1}
    assert stats["funnel"]["suppressed_by_reason"] == {"unsubscribed": 1}
    assert receiver.received == []  # nothing reached the provider
