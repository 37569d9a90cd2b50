"""The production policy re-check end to end — the real API over HTTP, real workers on the
session's dev server, SQLite, a webhook provider double on 127.0.0.1: sends deferred by quiet
hours, the workers restarted with quiet hours off, and `POST /v1/journeys/recheck` (one
campaign) then `nudge journeys recheck --wait` (every campaign) releasing them hours before
their deferral ends — with the operation's counts, one operation per request id, and the
answers to what cannot be done. Also the store's paging of every campaign's running journeys,
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from core.config import Settings
from core.definition import parse_campaign
from core.journey import JourneyStatus, journey_id
from core.operations import policy_recheck_id
from store.campaigns import save_campaign
from store.entries import record_entry, reserve_entries, running_page_of_every_campaign
from store.models import Campaign, Delivery, JourneyEntry
from temporal.servers import DevServer
from tests.cli.runner import nudge
from tests.fixtures.api import ADMIN, RunningApi, eventually, make_settings, running_api
from tests.fixtures.servers import ProviderDouble
from worker.build import create_worker, worker_activities


def offer(campaign_id: str) -> dict[str, Any]:
    """One marketing message over the webhook channel, sent as the journey starts; entered
    by an event named after the campaign (`{id} opened`), so one campaign's users stay its."""
    return {
        "id": campaign_id,
        "name": campaign_id,
        "entry": {"event": f"{campaign_id} opened"},
        "steps": [{"id": "offer", "type": "send", "channel": "webhook", "template": "t"}],
        "templates": {"t": {"body": "{{ user_id }}: on sale today"}},
    }


@asynccontextmanager
async def worker(client: Client, settings: Settings) -> AsyncIterator[None]:
    """A Nudge worker as `nudge worker` builds it, with these settings."""
    async with worker_activities(settings, client) as activities:
        async with create_worker(client, activities, task_queue=settings.task_queue):
            yield


async def deferred_until(client: Client, campaign_id: str, user: str) -> str | None:
    """When the journey's deferred send is asked again (None: not deferring, or not started
    yet); its status once it ended."""
    try:
        state = await client.get_workflow_handle(journey_id(campaign_id, user)).query("state")
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        return None
    if state["status"] != JourneyStatus.running.value:
        return str(state["status"])
    return state["deferred_until"]


def sent_to(double: ProviderDouble) -> list[str]:
    return sorted(r.json()["data"]["user_id"] for r in double.accepted())


async def deliveries(api: RunningApi, campaign_id: str) -> dict[str, Delivery]:
    async with api.services.sessions() as session:
        rows = await session.scalars(select(Delivery).where(Delivery.campaign_id == campaign_id))
        return {row.user_id: row for row in rows}


async def test_a_recheck_releases_sends_deferred_by_quiet_hours_that_are_now_off(
    sqlite_url: str, dev_server: DevServer, tmp_path: Path
) -> None:
    client = dev_server.client
    now = datetime.now(UTC)
    double = ProviderDouble(key_header="webhook-id").start()
    quiet = make_settings(
        sqlite_url,
        dev_server.address,
        webhook_url=double.url,
        default_timezone="UTC",
        quiet_hours_start=f"{now - timedelta(hours=1):%H:%M}",
        quiet_hours_end=f"{now + timedelta(hours=2):%H:%M}",
    )
    # The same stack restarted by its operator with quiet hours off.
    off = make_settings(
        sqlite_url,
        dev_server.address,
        webhook_url=double.url,
        task_queue=quiet.task_queue,
        quiet_hours_start=None,
        quiet_hours_end=None,
    )
    offers, news = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("offers", "news"))
    # Operation ids are global on the session's dev server: one of this run's own.
    op = f"r-{uuid.uuid4().hex[:8]}"
    users = {offers: ["a1", "a2", "a3", "a4"], news: ["b1"]}
    try:
        async with running_api(quiet) as api:
            async with worker(client, quiet):
                for campaign_id, members in users.items():
                    await api.campaign(offer(campaign_id))
                    for user in members:
                        await api.track(user, f"{campaign_id} opened")

                async def all_deferred() -> dict[tuple[str, str], datetime]:
                    found = {
                        (c, u): await deferred_until(client, c, u)
                        for c, members in users.items()
                        for u in members
                    }
                    assert all(until is not None for until in found.values()), found
                    return {key: datetime.fromisoformat(str(v)) for key, v in found.items()}

                until = await eventually(all_deferred, timeout=20)
            assert min(until.values()) > now + timedelta(hours=1), until
            assert sent_to(double) == []
            # a4's journey ends behind the store's back (its row still says running), and
            # a row whose journey never started: both counted as skipped, neither fails.
            await client.get_workflow_handle(journey_id(offers, "a4")).terminate("test")
            async with api.services.sessions() as session, session.begin():
                await reserve_entries(
                    session=session,
                    campaign_id=offers,
                    campaign_version=1,
                    entries=[("ghost", journey_id(offers, "ghost"), f"m-{uuid.uuid4()}")],
                )

            async with worker(client, off):
                # One campaign, two journeys a page.
                body = {"campaign_id": offers, "request_id": op, "page_size": 2}
                started = await api.http.post("/v1/journeys/recheck", json=body, headers=ADMIN)
                assert started.status_code == 202, started.text
                operation = started.json()
                assert operation["operation_id"] == op and operation["campaign_id"] == offers
                assert operation["workflow_id"] == policy_recheck_id(op)

                async def finished(operation_id: str) -> dict[str, Any]:
                    answer = await api.http.get(
                        "/v1/journeys/recheck",
                        params={"operation_id": operation_id},
                        headers=ADMIN,
                    )
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["status"] == "completed", answer.json()
                    return answer.json()

                done = await eventually(lambda: finished(op), timeout=20)
                progress = done["progress"]
                assert done["campaign_id"] == offers
                counts = [progress[k] for k in ("seen", "told", "skipped", "failed", "pages")]
                # a1, a2 | a3, a4 | ghost: the last page is short, so the last.
                assert counts == [5, 3, 2, 0, 3], progress
                assert progress["done"] and progress["errors"] == []

                async def released() -> dict[str, Delivery]:
                    sent = await deliveries(api, offers)
                    assert {u: d.status for u, d in sent.items()} == dict.fromkeys(
                        ["a1", "a2", "a3"], "sent"
                    ), sent
                    return sent

                sent = await eventually(released, timeout=20)
                for user, row in sent.items():
                    assert row.sent_at is not None
                    assert row.sent_at.replace(tzinfo=UTC) < until[offers, user] - timedelta(
                        hours=1
                    ), (user, row.sent_at)
                assert sent_to(double) == ["a1", "a2", "a3"]
                # The other campaign's journey was not told: still deferred, nothing sent.
                b1_until = await deferred_until(client, news, "b1")
                assert b1_until is not None and b1_until != "completed"
                assert datetime.fromisoformat(b1_until) == until[news, "b1"]
                assert await deliveries(api, news) == {}

                # The same request id again: the same operation, not a second run.
                handle = client.get_workflow_handle(policy_recheck_id(op))
                first_run = (await handle.describe()).run_id
                same = await api.http.post("/v1/journeys/recheck", json=body, headers=ADMIN)
                assert same.status_code == 202, same.text
                assert same.json()["progress"] == progress and same.json()["status"] == "completed"
                described = await handle.describe()
                assert described.run_id == first_run
                assert described.status is WorkflowExecutionStatus.COMPLETED
                # ...and for another scope, refused rather than answered for the first one.
                other = {"campaign_id": news, "request_id": op}
                reused = await api.http.post("/v1/journeys/recheck", json=other, headers=ADMIN)
                assert reused.status_code == 409, reused.text
                assert f"names a re-check of {offers!r}" in reused.json()["detail"]

                # What cannot be done, said.
                unknown = await api.http.post(
                    "/v1/journeys/recheck", json={"campaign_id": "no-such"}, headers=ADMIN
                )
                assert unknown.status_code == 404, unknown.text
                assert unknown.json()["detail"] == "no campaign 'no-such'"
                for bad, field in [
                    ({"campaign_id": "Not A Slug"}, "campaign_id"),
                    ({"campaign": offers}, "campaign"),  # a typo must not mean every campaign
                    ({"page_size": 0}, "page_size"),
                    ({"request_id": "a/b"}, "request_id"),
                ]:
                    refused = await api.http.post("/v1/journeys/recheck", json=bad, headers=ADMIN)
                    assert refused.status_code == 422, refused.text
                    assert [e["loc"] for e in refused.json()["detail"]] == [["body", field]]
                missing = await api.http.get(
                    "/v1/journeys/recheck", params={"operation_id": "nope"}, headers=ADMIN
                )
                assert missing.status_code == 404, missing.text
                assert missing.json()["detail"] == "no policy re-check 'nope'"
                unnamed = await api.http.get("/v1/journeys/recheck", headers=ADMIN)
                assert unnamed.status_code == 422 and "operation_id" in unnamed.text
                no_token = await api.http.post("/v1/journeys/recheck", json={})
                assert no_token.status_code == 401, no_token.text

                async def recorded() -> bool:
                    async with api.services.sessions() as session:
                        rows = await session.scalars(
                            select(JourneyEntry).where(JourneyEntry.campaign_id == offers)
                        )
                        by_user = {r.user_id: r.status for r in rows}
                    assert by_user == {
                        **dict.fromkeys(["a1", "a2", "a3"], "completed"),
                        **dict.fromkeys(["a4", "ghost"], "running"),
                    }, by_user
                    return True

                await eventually(recorded, timeout=10)

                # Every campaign, from the CLI, waiting and printing progress.
                ran = await nudge(tmp_path, "journeys", "recheck", "--wait", url=api.url)
                assert ran.code == 0, ran.stderr
                final = json.loads(ran.stdout)
                assert final["status"] == "completed" and final["campaign_id"] is None
                counts = [final["progress"][k] for k in ("seen", "told", "skipped", "failed")]
                assert counts == [3, 1, 2, 0], final  # b1 told; a4 and the ghost skipped
                last_line = ran.stderr.strip().splitlines()[-1]
                assert last_line == (
                    "every campaign: 3 seen, 1 told, 2 skipped (not running), 0 failed — done"
                ), ran.stderr

                async def b1_sent() -> bool:
                    sent = await deliveries(api, news)
                    assert [(u, d.status) for u, d in sent.items()] == [("b1", "sent")], sent
                    return True

                await eventually(b1_sent, timeout=20)
                assert sent_to(double) == ["a1", "a2", "a3", "b1"]  # each once
    finally:
        double.close()


async def test_running_journeys_of_every_campaign_page_campaign_by_campaign(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    campaigns = ["c-a", "c-b", "c-c", "c-d"]
    running = {"c-a": ["u2", "u1"], "c-c": ["u1", "u3", "u2"], "c-d": ["u9"]}
    async with sessions() as session, session.begin():
        for campaign_id in campaigns:
            await save_campaign(session=session, definition=parse_campaign(offer(campaign_id)))
        for campaign_id, members in running.items():
            await reserve_entries(
                session=session,
                campaign_id=campaign_id,
                campaign_version=1,
                entries=[(u, journey_id(campaign_id, u), f"m-{uuid.uuid4()}") for u in members],
            )
        # An ended journey is not paged; c-b has only ended ones.
        await record_entry(
            session=session,
            campaign_id="c-b",
            campaign_version=1,
            user_id="u0",
            workflow_id=journey_id("c-b", "u0"),
            run_id=f"run-{uuid.uuid4()}",
            entry_message_id=f"m-{uuid.uuid4()}",
        )
        await session.execute(
            update(JourneyEntry)
            .where(JourneyEntry.campaign_id == "c-b")
            .values(status=JourneyStatus.completed.value)
        )

    pages: list[list[tuple[str, str]]] = []
    walks: list[list[str]] = []
    after_campaign: str | None = None
    after: tuple[str, int] | None = None
    while True:
        walked: list[str] = []
        async with sessions() as session:
            rows = await running_page_of_every_campaign(
                session=session,
                after_campaign=after_campaign,
                after=after,
                limit=2,
                walked=walked.append,
            )
        pages.append([(r.campaign_id, r.user_id) for r in rows])
        walks.append(walked)
        if len(rows) < 2:
            break
        after_campaign, after = rows[-1].campaign_id, (rows[-1].user_id, rows[-1].id)
    assert pages == [
        [("c-a", "u1"), ("c-a", "u2")],
        [("c-c", "u1"), ("c-c", "u2")],
        [("c-c", "u3"), ("c-d", "u9")],
        [],
    ]
    # Each campaign read is told, those without running journeys (c-b) too: the caller's
    # heartbeat while it walks past them.
    campaigns_before = [c for c in await _campaign_ids(sessions) if c < "c-a"]
    assert walks == [
        [*campaigns_before, "c-a"],
        ["c-a", "c-b", "c-c"],
        ["c-c", "c-d"],
        ["c-d", *[c for c in await _campaign_ids(sessions) if c > "c-d"]],
    ]


async def _campaign_ids(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as session:
        return sorted(await session.scalars(select(Campaign.id)))
