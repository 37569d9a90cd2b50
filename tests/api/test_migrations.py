"""Migrating waiting journeys through the API and `nudge campaigns migrate`, end to end on
the dev server: the real worker, the `campaign_migration` workflow and its activities,
SQLite, a webhook provider double."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from temporalio.testing import ActivityEnvironment

from activities.operations import OperationsActivities
from cli.migrate import report_lines
from core.journey import JourneyState, journey_id
from core.operations import MigratePage
from store.campaigns import publish_version
from store.models import JourneyEntry
from temporal.servers import DevServer
from tests.cli.runner import nudge
from tests.fixtures.api import ADMIN, RunningApi, eventually, webhook_stack
from tests.fixtures.servers import WebhookReceiver

V1: dict[str, Any] = {
    "id": "migrate-e2e",
    "name": "Cart (migrated)",
    "entry": {"event": "Product Added"},
    "steps": [
        {"id": "wait", "type": "wait", "duration": "24h", "next": "remind"},
        {"id": "remind", "type": "send", "channel": "webhook", "template": "remind"},
    ],
    "templates": {"remind": {"subject": "Cart", "body": "your cart misses you"}},
}
V2: dict[str, Any] = {
    **V1,
    "steps": [
        {"id": "pause", "type": "wait", "duration": "48h", "next": "coupon"},
        {"id": "coupon", "type": "send", "channel": "webhook", "template": "coupon"},
    ],
    "templates": {"coupon": {"subject": "Cart", "body": "10% off your cart"}},
}
V3: dict[str, Any] = {
    **V2,
    "steps": [
        # Shorter than the time the journeys have waited already: they send at once.
        {"id": "pause", "type": "wait", "duration": "1s", "next": "coupon"},
        V2["steps"][1],
    ],
}
URL = "/v1/campaigns/migrate-e2e/migrations"
USERS = 5


async def test_dry_run_then_migration_over_the_api_and_the_cli(
    sqlite_url: str, dev_server: DevServer, webhook_receiver: WebhookReceiver, tmp_path: Path
):
    async with webhook_stack(sqlite_url, dev_server, webhook_receiver, V1) as stack:
        api = stack.api
        users = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(USERS)]
        for user in users:
            await api.track(user, "Product Added")

        async def waiting() -> bool:
            for user in users:
                r = await api.http.get(f"/v1/journeys/migrate-e2e/{user}", headers=ADMIN)
                assert r.status_code == 200, r.text
                assert JourneyState.model_validate(r.json()).current_step == "wait"
            return True

        await eventually(waiting, timeout=30)
        r = await api.http.post("/v1/campaigns", json=V2, headers=ADMIN)
        assert r.status_code in (200, 201), r.text  # version 2, a draft

        # What is wrong is named, each problem on its own.
        r = await api.http.post(
            URL,
            json={"from_version": 1, "to_version": 2, "steps": {"remind": "coupon", "wait": "x"}},
            headers=ADMIN,
        )
        assert r.status_code == 422, r.text
        assert r.json()["detail"]["problems"] == [
            "steps.remind: step 'remind' is a send: only wait and wait_for steps are migrated from",
            "steps.wait: version 2 has no step 'x'",
        ]
        # A misspelt `dry_run` is refused, not dropped (it would migrate for real).
        r = await api.http.post(
            URL, json={"from_version": 1, "to_version": 2, "dryrun": True}, headers=ADMIN
        )
        assert r.status_code == 422 and "dryrun" in r.text, r.text
        r = await api.http.post(URL, json={"from_version": 1, "to_version": 9}, headers=ADMIN)
        assert r.status_code == 404 and "version 9" in r.json()["detail"], r.text
        r = await api.http.post(
            "/v1/campaigns/nope/migrations",
            json={"from_version": 1, "to_version": 2},
            headers=ADMIN,
        )
        assert r.status_code == 404 and r.json()["detail"] == "no campaign 'nope'"
        mapping = {"from_version": 1, "to_version": 2, "steps": {"wait": "pause"}}
        r = await api.http.post(URL, json=mapping, headers=ADMIN)
        assert r.status_code == 409 and "is a draft: publish it first" in r.text, r.text

        # The dry run works on the draft: where each journey would land, nothing moved.
        ran = await nudge(
            tmp_path,
            *("campaigns", "migrate", "migrate-e2e", "--from", "1", "--to", "2"),
            *("--step", "wait=pause", "--dry-run"),
            url=api.url,
        )
        assert ran.code == 0 and ran.stderr == "", ran
        assert ran.stdout.splitlines() == [
            "migrate-e2e: dry run of v1 → v2: 5 journeys, 5 would move",
            "  step wait (wait): 5 journeys → pause: 5 would move",
            "nothing moved (dry run); to move them: nudge campaigns migrate migrate-e2e "
            "--from 1 --to 2 --step wait=pause",
        ]
        await waiting()

        async with api.services.sessions() as session:
            await publish_version(session=session, campaign_id="migrate-e2e", version=2)
            await session.commit()
        # One page of the migration's activity, on its own: it moves the first 2 journeys
        # (by workflow id) and records them before it returns, its cursor heartbeated.
        ids = {journey_id("migrate-e2e", u) for u in users}
        first_two = sorted(ids)[:2]
        beats: list[Any] = []
        env = ActivityEnvironment()
        env.on_heartbeat = lambda *details: beats.append(details[0])
        page = MigratePage(
            campaign_id="migrate-e2e", from_version=1, to_version=2, steps={"wait": "pause"}
        )
        activities = OperationsActivities(
            sessions=api.services.sessions, client=stack.temporal.client
        )
        one = await env.run(activities.migrate_page, page.model_copy(update={"page_size": 2}))
        assert (one.seen, one.after, one.done, one.report.moved) == (2, first_two[1], False, 2)
        assert beats and beats[-1]["after"] == first_two[1]
        assert await versions(api) == {(i, 2 if i in first_two else 1) for i in ids}

        # The migration is an operation: a page of 2 journeys at a time, each page's
        # moves recorded by its own activity; answered with its report once it ended.
        rest = USERS - 2
        body = {**mapping, "by": "ops", "request_id": "first", "page_size": 2}
        r = await api.http.post(URL, json=body, headers=ADMIN)
        assert r.status_code in (200, 202), r.text
        operation = await ended(api, "first")
        assert operation["status"] == "completed", operation
        assert (operation["progress"]["seen"], operation["progress"]["pages"]) == (rest, 2)
        report = operation["progress"]["report"]
        if r.status_code == 200:
            assert r.json() == report
        assert report["operation_id"] == "first"
        assert (report["journeys"], report["movable"], report["moved"]) == (rest, rest, rest)
        assert report["steps"] == [
            {
                "step": "wait",
                "type": "wait",
                "journeys": rest,
                "lands_on": "pause",
                "movable": rest,
                "moved": rest,
                "stays": {},
            }
        ]
        assert {m["workflow_id"] for m in report["moved_journeys"]} == ids - set(first_two)
        assert "moved_ids" not in report
        # Each page's moves were recorded: the membership index says version 2 for all.
        assert await versions(api) == {(i, 2) for i in ids}

        # The same request id again is the same operation: its report, nothing asked again.
        r = await api.http.post(URL, json=body, headers=ADMIN)
        assert r.status_code == 200 and r.json() == report, r.text
        r = await api.http.post(URL, json={**body, "wait_seconds": 0}, headers=ADMIN)
        assert r.status_code == 202 and r.json()["status"] == "completed", r.text
        assert r.json()["progress"]["report"] == report
        r = await api.http.get(f"{URL}/nope", headers=ADMIN)
        assert r.status_code == 404 and "no migration 'nope'" in r.json()["detail"], r.text
        r = await api.http.get(f"{URL}/not%20an%20id", headers=ADMIN)
        assert r.status_code == 404, r.text
        r = await api.http.get(f"/v1/journeys/migrate-e2e/{users[0]}", headers=ADMIN)
        outcomes = [h["outcome"] for h in r.json()["history"]]
        assert outcomes.count("migrated from v1 step wait to v2 step pause by ops") == (
            0 if journey_id("migrate-e2e", users[0]) in first_two else 1
        )

        # Then over the CLI, to a version 3 whose wait is over: each sends at once.
        r = await api.http.post("/v1/campaigns", json=V3, headers=ADMIN)
        assert r.status_code in (200, 201), r.text
        async with api.services.sessions() as session:
            await publish_version(session=session, campaign_id="migrate-e2e", version=3)
            await session.commit()
        ran = await nudge(
            tmp_path,
            *("campaigns", "migrate", "migrate-e2e", "--from", "2", "--to", "3"),
            url=api.url,
        )
        assert ran.code == 0, ran
        # The command polls the operation (progress on stderr while it runs) to its end.
        for line in ran.stderr.splitlines():
            assert line.startswith("migrate-e2e: migrating v2 → v3: "), ran.stderr
        assert ran.stdout.splitlines() == [
            f"migrate-e2e: migrated v2 → v3: {USERS} of {USERS} journeys moved",
            f"  step pause (wait): {USERS} journeys → pause: {USERS} moved",
        ]
        assert await versions(api) == {(i, 3) for i in ids}

        # Each sends version 3's message, once.
        async def sent() -> bool:
            assert len(webhook_receiver.received) == USERS
            return True

        await eventually(sent, timeout=30)
        hits = {r.json()["data"]["user_id"]: r.json()["data"] for r in webhook_receiver.received}
        assert set(hits) == set(users)
        assert {(d["campaign_version"], d["body"]) for d in hits.values()} == {
            (3, "10% off your cart")
        }

        # Nothing runs version 1 any more: a second migration finds no journey.
        r = await api.http.post(URL, json={**mapping, "dry_run": True}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["journeys"] == 0, r.text


async def ended(api: RunningApi, operation_id: str) -> dict[str, Any]:
    """The migration's operation once its workflow has ended (not only its progress)."""

    async def read() -> dict[str, Any]:
        r = await api.http.get(f"{URL}/{operation_id}", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["status"] != "running", r.json()
        return dict(r.json())

    return await eventually(read, timeout=30)


async def versions(api: RunningApi) -> set[tuple[str, int]]:
    async with api.services.sessions() as session:
        rows = (await session.scalars(select(JourneyEntry))).all()
    return {(r.workflow_id, r.campaign_version) for r in rows}


def test_the_cli_prints_a_migration_report_a_step_a_line():
    report = {
        "campaign_id": "cart",
        "from_version": 3,
        "to_version": 4,
        "dry_run": False,
        "journeys": 5,
        "movable": 3,
        "moved": 2,
        "steps": [
            {
                "step": "remind",
                "type": "send",
                "journeys": 2,
                "lands_on": None,
                "movable": 0,
                "moved": 0,
                "stays": {"journey is mid-send (step 'remind'): …": 2},
            },
            {
                "step": "wait",
                "type": "wait",
                "journeys": 3,
                "lands_on": "pause",
                "movable": 3,
                "moved": 2,
                "stays": {"journey already ended: converted": 1},
            },
        ],
    }
    assert report_lines(report, command="unused") == [
        "cart: migrated v3 → v4: 2 of 5 journeys moved",
        "  step remind (send): 2 journeys",
        "      2 stay: journey is mid-send (step 'remind'): …",
        "  step wait (wait): 3 journeys → pause: 2 moved",
        "      1 stays: journey already ended: converted",
    ]
