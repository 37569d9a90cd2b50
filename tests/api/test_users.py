"""`GET /v1/users/{id}` (and `nudge users show`) end to end — the real API over HTTP, a real
worker on the session's dev server, SQLite: one call with the person's profile, other ids,
consent, every journey (a running one with its current step, an ended one, one Temporal
cannot answer for) and latest deliveries; 404 for a user Nudge never heard of."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.journey import journey_id
from store.entries import reserve_entries
from store.subscriptions import (
    SubscriptionSource,
    SubscriptionStatus,
    add_suppression,
    set_subscription,
)
from temporal.servers import DevServer
from tests.cli.runner import nudge
from tests.fixtures.api import ADMIN, WRITE_KEY, RunningApi, eventually, make_settings, running_api
from worker.build import create_worker, worker_activities

USER = "ada/eu"
"""A user id with a slash: the path takes it whole."""


def waiting(campaign_id: str) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "name": "Nap",
        "entry": {"event": "Signed Up"},
        "steps": [{"id": "nap", "type": "wait", "duration": "7d"}],
        "templates": {},
    }


def greeting(campaign_id: str) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "name": "Hello",
        "entry": {"event": "Signed Up"},
        "subscription_group": "marketing",
        "steps": [{"id": "hi", "type": "send", "channel": "sandbox", "template": "hi"}],
        "templates": {"hi": {"body": "Hi {{ traits.first_name }}"}},
    }


@pytest.fixture
async def api(sqlite_url: str, dev_server: DevServer) -> AsyncIterator[RunningApi]:
    settings = make_settings(sqlite_url, dev_server.address)
    async with worker_activities(settings, dev_server.client) as activities:
        worker = create_worker(dev_server.client, activities, task_queue=settings.task_queue)
        async with worker, running_api(settings) as api:
            yield api


async def test_one_call_shows_profile_consent_journeys_and_sends(
    api: RunningApi, tmp_path: Path
) -> None:
    nap, hello = f"nap-{uuid.uuid4().hex[:8]}", f"hello-{uuid.uuid4().hex[:8]}"
    await api.campaign(waiting(nap))
    await api.campaign(greeting(hello))
    identify = {
        "userId": USER,
        "anonymousId": "device-1",
        "traits": {"first_name": "Ada", "plan": "pro"},
        "timestamp": "2026-01-02T03:04:05Z",
    }
    answer = await api.http.post("/v1/identify", json=identify, auth=(WRITE_KEY, ""))
    assert answer.status_code == 200, answer.text
    await api.track(USER, "Signed Up", timestamp="2026-01-03T00:00:00Z")
    async with api.services.sessions() as session, session.begin():
        await set_subscription(
            session=session,
            user_id=USER,
            channel="email",
            group="marketing",
            status=SubscriptionStatus.unsubscribed,
            source=SubscriptionSource.api,
        )
        await add_suppression(session=session, user_id=USER, channel="sms", reason="hard bounce")
        # A journey whose starter died before starting it: a row Temporal knows nothing of.
        await reserve_entries(
            session=session,
            campaign_id=nap,
            campaign_version=1,
            entries=[("anon:device-1", journey_id(nap, "anon:device-1"), f"m-{uuid.uuid4()}")],
        )

    async def settled() -> dict[str, Any]:
        got = await api.http.get(f"/v1/users/{USER}", headers=ADMIN)
        assert got.status_code == 200, got.text
        view = got.json()
        by_campaign = {(j["campaign_id"], j["user_id"]): j for j in view["journeys"]}
        assert by_campaign.get((nap, USER), {}).get("current_step") == "nap", by_campaign
        assert by_campaign.get((hello, USER), {}).get("status") == "completed", by_campaign
        return view

    view = await eventually(settled, timeout=20)
    assert view["user_id"] == USER and view["other_ids"] == ["anon:device-1"]
    assert view["traits"] == {"first_name": "Ada", "plan": "pro"}
    assert datetime.fromisoformat(view["first_seen"]) < datetime.fromisoformat(view["last_seen"])
    assert view["last_seen"].startswith("2026-01-03T00:00:00")
    assert [
        (s["channel"], s["subscription_group"], s["status"])
        for s in view["consent"]["subscriptions"]
    ] == [("email", "marketing", "unsubscribed")]
    assert [(s["channel"], s["reason"]) for s in view["consent"]["suppressions"]] == [
        ("sms", "hard bounce")
    ]

    journeys = {(j["campaign_id"], j["user_id"]): j for j in view["journeys"]}
    assert len(journeys) == 3
    running = journeys[(nap, USER)]
    assert running["status"] == "running" and running["campaign_version"] == 1
    assert running["workflow_id"] == journey_id(nap, USER) and running["note"] is None
    assert running["step_started_at"] is not None and running["ended_at"] is None
    ended = journeys[(hello, USER)]
    assert ended["ended_at"] is not None and ended["current_step"] is None
    ghost = journeys[(nap, "anon:device-1")]
    assert ghost["status"] == "running" and ghost["current_step"] is None
    assert "did not answer" in ghost["note"] and "not found" in ghost["note"]

    [sent] = view["deliveries"]
    assert (sent["campaign_id"], sent["step_id"], sent["channel"]) == (hello, "hi", "sandbox")
    assert sent["status"] == "sent" and sent["attempts"] == 1 and sent["last_error"] is None

    # Any id of the person finds them; the CLI prints the same view.
    by_device = await api.http.get("/v1/users/anon:device-1", headers=ADMIN)
    assert by_device.status_code == 200 and by_device.json()["user_id"] == USER
    ran = await nudge(tmp_path, "users", "show", USER, url=api.url)
    assert ran.code == 0, ran.stderr
    shown = json.loads(ran.stdout)
    assert shown["user_id"] == USER and shown["traits"]["first_name"] == "Ada"
    assert len(shown["journeys"]) == 3

    nobody = await api.http.get("/v1/users/nobody-at-all", headers=ADMIN)
    assert nobody.status_code == 404 and "nobody-at-all" in nobody.json()["detail"]
