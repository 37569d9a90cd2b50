"""The hourly housekeeping run also forgets refused ingestion messages past their retention
(NUDGE_REJECTED_EVENTS_DAYS) and segment counters no segment reads (store.segments:
prune_counters), on the real dev server with the real worker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from core.housekeeping import WORKFLOW_PRUNE_LEDGER, LedgerPruned
from store.db import create_engine, session_factory
from store.models import EventCounter, RejectedEvent
from store.rejected import Rejection, record_rejections
from temporal.servers import DevServer
from tests.fixtures.api import make_settings
from worker.build import create_worker, worker_activities


async def test_a_housekeeping_run_forgets_rejections_and_unread_counters(
    dev_server: DevServer, database_url: str
) -> None:
    settings = make_settings(database_url, dev_server.address, rejected_events_days=7)
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    now = datetime.now(UTC)
    ages = {"old": timedelta(days=8), "recent": timedelta(days=6), "new": timedelta(0)}
    tag = uuid.uuid4().hex[:8]
    try:
        async with sessions() as session, session.begin():
            await record_rejections(
                session=session,
                rejections=[
                    Rejection("batch", 0, f"{tag}-{name}", "u", "userId: missing", {})
                    for name in ages
                ],
            )
            # A counter of a criterion no segment has (its segment was deleted).
            session.add(EventCounter(user_id="u", counter=f"gone-{tag}", day=now.date(), count=2))
            for name, age in ages.items():
                await session.execute(
                    update(RejectedEvent)
                    .where(RejectedEvent.message_id == f"{tag}-{name}")
                    .values(received_at=now - age)
                )
        async with (
            worker_activities(settings, dev_server.client) as activities,
            create_worker(dev_server.client, activities, task_queue=settings.task_queue),
        ):
            pruned = await dev_server.client.execute_workflow(
                WORKFLOW_PRUNE_LEDGER,
                id=f"prune-{tag}",
                task_queue=settings.task_queue,
                result_type=LedgerPruned,
            )
        assert pruned.rejected_deleted >= 1
        assert pruned.counters_deleted == 1
        async with sessions() as session:
            left = await session.scalars(
                select(RejectedEvent.message_id).where(RejectedEvent.message_id.like(f"{tag}-%"))
            )
            assert sorted(left) == [f"{tag}-new", f"{tag}-recent"]
    finally:
        await engine.dispose()
