"""A migration that ends without its report — terminated by an operator, or failed because
its target version became unusable mid-way — still answers `GET …/migrations/{id}` with the
pages it completed and why it ended, read from its workflow's history.

End to end on the dev server with the real worker, the `campaign_migration` workflow and its
`migrate_page` activity, on PostgreSQL: the test holds a row lock on one journey's
membership row, so the page that records that journey waits — a real wait the test sees in
`pg_stat_activity` — and the migration is stopped (or its target broken) between pages, at
a moment the test chooses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core.journey import JourneyState, journey_id
from core.operations import migration_id
from store.campaigns import publish_version
from store.db import create_engine
from store.models import CampaignVersion, JourneyEntry
from temporal.servers import DevServer
from tests.api import test_migrations as migrations
from tests.fixtures.api import ADMIN, RunningApi, eventually, webhook_stack
from tests.fixtures.db import migrated_database
from tests.fixtures.servers import WebhookReceiver

CAMPAIGN = "migrate-cut"
# The cart of tests/api/test_migrations.py, under a campaign id of its own.
V1: dict[str, Any] = {**migrations.V1, "id": CAMPAIGN, "name": "Cart (migrated, then stopped)"}
V2: dict[str, Any] = {**migrations.V2, "id": CAMPAIGN, "name": V1["name"]}
URL = f"/v1/campaigns/{CAMPAIGN}/migrations"
MAPPING = {"from_version": 1, "to_version": 2, "steps": {"wait": "pause"}, "by": "ops"}


@pytest.fixture
async def postgres_url(tmp_path: Path) -> AsyncIterator[str]:
    """A fresh PostgreSQL database at the newest schema (the row lock is PostgreSQL's)."""
    async with migrated_database("postgresql", tmp_path) as url:
        yield url


@asynccontextmanager
async def row_locked(engine: AsyncEngine, workflow_id: str) -> AsyncIterator[None]:
    """Hold a row lock on the journey's membership row: recording its move waits."""
    async with engine.connect() as connection, connection.begin() as transaction:
        locked = await connection.execute(
            text("SELECT id FROM journey_entries WHERE workflow_id = :id FOR UPDATE"),
            {"id": workflow_id},
        )
        assert len(locked.all()) == 1
        try:
            yield
        finally:
            await transaction.rollback()


async def a_page_waits_on_the_lock(engine: AsyncEngine) -> None:
    """A migration page's `UPDATE journey_entries` waits for the test's row lock."""

    async def waiting() -> bool:
        async with engine.connect() as connection:
            found = await connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'UPDATE journey_entries%' AND datname = current_database()"
                )
            )
        assert found == 1, found
        return True

    await eventually(waiting, timeout=20, interval=0.05)


async def read(api: RunningApi, operation_id: str) -> dict[str, Any]:
    r = await api.http.get(f"{URL}/{operation_id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def ended(api: RunningApi, operation_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any]:
        operation = await read(api, operation_id)
        assert operation["status"] != "running", operation
        return operation

    return await eventually(done, timeout=30)


async def test_a_stopped_migration_keeps_the_counts_it_reached(
    postgres_url: str, dev_server: DevServer, webhook_receiver: WebhookReceiver
) -> None:
    async with webhook_stack(postgres_url, dev_server, webhook_receiver, V1) as stack:
        api, client = stack.api, dev_server.client
        users = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(4)]
        # Operation ids are global on the session's dev server: this run's own.
        cut_id, broken_id = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("cut", "broken"))
        for user in users:
            await api.track(user, "Product Added")

        async def waiting() -> bool:
            for user in users:
                r = await api.http.get(f"/v1/journeys/{CAMPAIGN}/{user}", headers=ADMIN)
                assert r.status_code == 200, r.text
                assert JourneyState.model_validate(r.json()).current_step == "wait"
            return True

        await eventually(waiting, timeout=30)
        r = await api.http.post("/v1/campaigns", json=V2, headers=ADMIN)
        assert r.status_code in (200, 201), r.text
        async with api.services.sessions() as session:
            await publish_version(session=session, campaign_id=CAMPAIGN, version=2)
            await session.commit()
        # Pages of one journey, in workflow id order: a, b, c, d.
        a, b, c, d = sorted(journey_id(CAMPAIGN, u) for u in users)
        engine = create_engine(postgres_url)
        try:
            # 1. Terminated by an operator while its second page (b) records its move.
            async with row_locked(engine, b):
                body = {**MAPPING, "request_id": cut_id, "page_size": 1, "wait_seconds": 0}
                r = await api.http.post(URL, json=body, headers=ADMIN)
                assert r.status_code == 202, r.text
                await a_page_waits_on_the_lock(engine)
                running = await read(api, cut_id)
                assert running["status"] == "running", running
                assert (running["progress"]["pages"], running["progress"]["seen"]) == (1, 1)
                await client.get_workflow_handle(migration_id(CAMPAIGN, cut_id)).terminate(
                    reason="stopped by ops"
                )
            cut = await ended(api, cut_id)
            assert (cut["status"], cut["failure"]) == ("terminated", "stopped by ops"), cut
            # What the running migration showed, it still shows: the page it completed.
            assert cut["progress"] == running["progress"], (cut, running)
            assert (cut["progress"]["seen"], cut["progress"]["pages"]) == (1, 1)
            assert cut["progress"]["after"] == a
            report = cut["progress"]["report"]
            assert (report["operation_id"], report["journeys"], report["moved"]) == (cut_id, 1, 1)
            assert [m["workflow_id"] for m in report["moved_journeys"]] == [a]
            assert [(s["step"], s["moved"]) for s in report["steps"]] == [("wait", 1)]

            # 2. Failed: its target version becomes unusable while its second page (d)
            # records its move; the third page finds it so.
            async def only_c_and_d_on_version_1() -> bool:
                async with api.services.sessions() as session:
                    rows = await session.scalars(
                        select(JourneyEntry.workflow_id).where(JourneyEntry.campaign_version == 1)
                    )
                    assert sorted(rows) == [c, d]
                return True

            # b's page went on once the lock was gone: it moved b, uncounted by `cut` (the
            # page in flight when it was stopped).
            await eventually(only_c_and_d_on_version_1, timeout=20)
            async with row_locked(engine, d):
                body = {**MAPPING, "request_id": broken_id, "page_size": 1, "wait_seconds": 0}
                r = await api.http.post(URL, json=body, headers=ADMIN)
                assert r.status_code == 202, r.text
                await a_page_waits_on_the_lock(engine)
                async with engine.begin() as connection:
                    await connection.execute(
                        update(CampaignVersion)
                        .where(
                            CampaignVersion.campaign_id == CAMPAIGN,
                            CampaignVersion.version == 2,
                        )
                        .values(definition={"id": CAMPAIGN})
                    )
            broken = await ended(api, broken_id)
        finally:
            await engine.dispose()
        assert broken["status"] == "failed", broken
        assert broken["failure"].startswith(
            f"campaign {CAMPAIGN!r} version 2 no longer validates"
        ), broken["failure"]
        progress = broken["progress"]
        assert (progress["seen"], progress["pages"], progress["after"]) == (2, 2, d)
        assert (progress["report"]["journeys"], progress["report"]["moved"]) == (2, 2)
        assert [m["workflow_id"] for m in progress["report"]["moved_journeys"]] == [c, d]
        assert progress["report"]["operation_id"] == broken_id
