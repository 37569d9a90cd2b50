"""Migrating waiting journeys through the API and `nudge campaigns migrate`, end to end on
the dev server: the real worker, the `campaign_migration` workflow and its activities,
SQLite, a webhook provider double."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment

from activities.operations import OperationsActivities
from cli.migrate import report_lines
from core.journey import QUERY_POSITION, JourneyPosition, JourneyState, journey_id
from core.operations import MigratePage
from store.campaigns import load_definition, publish_version
from store.models import JourneyEntry
from temporal.migrate import migrate_journeys
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
        assert ran.code == 0, ran
        # Paged on the server like the migration: the command follows it to its end.
        for line in ran.stderr.splitlines():
            assert line.startswith("migrate-e2e: dry run of v1 → v2: "), ran.stderr
        assert ran.stdout.splitlines() == [
            "migrate-e2e: dry run of v1 → v2: 5 journeys, 5 would move",
            "  step wait (wait): 5 journeys → pause: 5 would move",
            "nothing moved (dry run); to move them: nudge campaigns migrate migrate-e2e "
            "--from 1 --to 2 --step wait=pause",
        ]
        await waiting()
        ids = {journey_id("migrate-e2e", u) for u in users}
        assert await versions(api) == {(i, 1) for i in ids}

        async with api.services.sessions() as session:
            await publish_version(session=session, campaign_id="migrate-e2e", version=2)
            await session.commit()
        # One page of the migration's activity, on its own: it moves the first 2 journeys
        # (by workflow id) and records them before it returns, its cursor heartbeated.
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


async def ended(api: RunningApi, operation_id: str, url: str = URL) -> dict[str, Any]:
    """The migration's operation once its workflow has ended (not only its progress)."""

    async def read() -> dict[str, Any]:
        r = await api.http.get(f"{url}/{operation_id}", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["status"] != "running", r.json()
        return dict(r.json())

    return await eventually(read, timeout=30)


DRY: dict[str, Any] = {**V1, "id": "migrate-dry"}
DRY_URL = "/v1/campaigns/migrate-dry/migrations"


async def test_a_dry_run_pages_like_the_migration_and_moves_nothing(
    sqlite_url: str, dev_server: DevServer, webhook_receiver: WebhookReceiver
):
    """A dry run is the migration's own workflow and pages: over several pages it reports
    what the migration that follows does, moving no journey and writing no row — not even
    the row of a journey found on the new version already."""
    async with webhook_stack(sqlite_url, dev_server, webhook_receiver, DRY) as stack:
        api = stack.api
        users = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(USERS)]
        for user in users:
            await api.track(user, "Product Added")
        ids = sorted(journey_id("migrate-dry", u) for u in users)
        client = stack.temporal.client

        async def at(workflow_id: str) -> tuple[int, str | None]:
            position = await client.get_workflow_handle(workflow_id).query(
                QUERY_POSITION, result_type=JourneyPosition
            )
            return position.campaign_version, position.current_step

        async def waiting() -> bool:
            try:
                assert [await at(i) for i in ids] == [(1, "wait")] * USERS
            except RPCError as exc:  # not started yet
                raise AssertionError(exc) from exc
            return True

        await eventually(waiting, timeout=30)
        r = await api.http.post("/v1/campaigns", json={**V2, "id": "migrate-dry"}, headers=ADMIN)
        assert r.status_code in (200, 201), r.text
        async with api.services.sessions() as session:
            await publish_version(session=session, campaign_id="migrate-dry", version=2)
            # A row whose journey Temporal no longer has: it stays, with its reason.
            session.add(
                JourneyEntry(
                    campaign_id="migrate-dry",
                    campaign_version=1,
                    user_id="gone",
                    workflow_id=journey_id("migrate-dry", "gone"),
                    entry_message_id=f"gone-{uuid.uuid4().hex}",
                )
            )
            await session.commit()
            plan = (
                await load_definition(session=session, campaign_id="migrate-dry", version=2)
            ).plan()
        # One journey moved by a migration that never recorded it: its row says version 1.
        ahead = await migrate_journeys(
            client,
            workflow_ids=ids[:1],
            campaign_id="migrate-dry",
            from_version=1,
            to_version=2,
            plan=plan,
            steps={"wait": "pause"},
            dry_run=False,
        )
        assert ahead.moved == 1
        rows = await entries(api)
        assert {(w, v) for w, v, _ in rows} == {(i, 1) for i in [*ids, "journey/migrate-dry/gone"]}

        # The dry run, 2 journeys a page: 6 rows, 4 pages (the last one empty).
        request_id = f"same-{uuid.uuid4().hex[:8]}"
        body = {
            "from_version": 1,
            "to_version": 2,
            "steps": {"wait": "pause"},
            "dry_run": True,
            "request_id": request_id,
            "page_size": 2,
        }
        r = await api.http.post(DRY_URL, json=body, headers=ADMIN)
        assert r.status_code in (200, 202), r.text
        dry_op = await ended(api, f"dry-{request_id}", DRY_URL)
        assert dry_op["status"] == "completed", dry_op
        assert dry_op["workflow_id"] == f"campaign-migration/migrate-dry/dry-{request_id}"
        assert (dry_op["progress"]["seen"], dry_op["progress"]["pages"]) == (6, 4)
        dry = dry_op["progress"]["report"]
        if r.status_code == 200:
            assert r.json() == dry
        assert (dry["dry_run"], dry["operation_id"]) == (True, f"dry-{request_id}")
        assert (dry["journeys"], dry["movable"], dry["moved"]) == (6, 4, 0)
        already = "already on version 2"
        assert [
            (s["step"], s["journeys"], s["lands_on"], s["movable"], s["stays"])
            for s in dry["steps"]
        ] == [
            ("pause", 1, None, 0, {already: 1}),
            ("wait", 4, "pause", 4, {}),
            (None, 1, None, 0, {"no such journey in Temporal": 1}),
        ]
        assert dry["moved_journeys"] == []
        assert [(j["workflow_id"], j["reason"]) for j in dry["staying_journeys"]] == [
            ("journey/migrate-dry/gone", "no such journey in Temporal"),
        ]
        # Nothing moved, nothing written: not even the row of the journey on v2 already.
        assert await entries(api) == rows
        assert [await at(i) for i in ids] == [(2, "pause")] + [(1, "wait")] * (USERS - 1)
        # Asked again (at once): the same dry run, ended; its operation read back.
        r = await api.http.post(DRY_URL, json={**body, "wait_seconds": 0}, headers=ADMIN)
        assert r.status_code == 202, r.text
        assert (r.json()["operation_id"], r.json()["status"]) == (f"dry-{request_id}", "completed")
        assert r.json()["progress"]["report"] == dry
        # A migration may not take a name that reads as a dry run's.
        real = {**body, "dry_run": False}
        r = await api.http.post(DRY_URL, json={**real, "request_id": "dry-run"}, headers=ADMIN)
        assert r.status_code == 422 and "request_id: 'dry-run' begins with" in r.text, r.text

        # The migration with the same request id is its own operation: it does what the dry
        # run said, and records every row the dry run left.
        r = await api.http.post(DRY_URL, json=real, headers=ADMIN)
        assert r.status_code in (200, 202), r.text
        operation = await ended(api, request_id, DRY_URL)
        assert operation["status"] == "completed", operation
        assert (operation["progress"]["seen"], operation["progress"]["pages"]) == (6, 4)
        report = operation["progress"]["report"]
        assert (report["dry_run"], report["operation_id"]) == (False, request_id)
        assert (report["journeys"], report["movable"], report["moved"]) == (6, 4, 4)
        assert [{**s, "moved": s["movable"]} for s in report["steps"]] == [
            {**s, "moved": s["movable"]} for s in dry["steps"]
        ]
        assert [s["moved"] for s in report["steps"]] == [s["movable"] for s in dry["steps"]]
        assert report["staying_journeys"] == dry["staying_journeys"]
        assert {j["workflow_id"] for j in report["moved_journeys"]} == set(ids[1:])
        assert {(w, v) for w, v, _ in await entries(api)} == {(i, 2) for i in ids} | {
            ("journey/migrate-dry/gone", 1)
        }
        assert [await at(i) for i in ids] == [(2, "pause")] * USERS


async def entries(api: RunningApi) -> list[tuple[str, int, str]]:
    """Every membership row as stored: (workflow id, version, status), in id order."""
    async with api.services.sessions() as session:
        rows = (await session.scalars(select(JourneyEntry).order_by(JourneyEntry.id))).all()
    return [(r.workflow_id, r.campaign_version, r.status) for r in rows]


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
