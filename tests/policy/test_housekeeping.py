"""The send ledger is pruned on a Temporal Schedule: what no cap counts any more is
forgotten, what a cap still counts is kept — the schedule put in place by the worker on the
real dev server, the pruning on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from temporalio.client import ScheduleActionStartWorkflow

from core.config import CapRule
from core.definition import parse_campaign
from core.housekeeping import WORKFLOW_PRUNE_LEDGER, LedgerPruned
from store.campaigns import cap_windows, save_campaign
from store.caps import prune_ledger, reserve_send
from store.db import create_engine, session_factory
from store.models import SendReservation
from temporal.schedules import PRUNE_EVERY, ensure_schedules, prune_ledger_id
from temporal.servers import DevServer
from tests.fixtures.api import eventually, make_settings
from worker.build import create_worker, worker_activities

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MONTHLY = parse_campaign(
    {
        "id": "monthly",
        "name": "Monthly digest",
        "entry": {"event": "Signed Up"},
        "caps": [{"limit": 1, "window": "30d"}],
        "steps": [{"id": "mail", "type": "send", "channel": "sandbox", "template": "t"}],
        "templates": {"t": {"body": "x"}},
    }
)


async def ledger(sessions, *sends: tuple[str, timedelta], now: datetime = NOW) -> None:
    """One reservation per (campaign, age), as the send policy writes them."""
    async with sessions() as session, session.begin():
        for i, (campaign_id, age) in enumerate(sends):
            await reserve_send(
                session=session,
                idempotency_key=f"k-{uuid.uuid4().hex[:12]}-{i}",
                user_id=f"u{i}",
                channel="email",
                campaign_id=campaign_id,
                group="marketing",
                priority="normal",
                caps=[],
                at=now - age,
            )


async def kept(sessions, now: datetime = NOW) -> list[tuple[str, timedelta]]:
    async with sessions() as session:
        rows = (await session.scalars(select(SendReservation))).all()
    return sorted((r.campaign_id, now - r.at) for r in rows)


SENDS = [
    ("cart", timedelta(hours=1)),
    ("cart", timedelta(days=3)),
    ("cart", timedelta(days=10)),
    ("monthly", timedelta(days=10)),
    ("monthly", timedelta(days=40)),
]


async def test_prune_keeps_each_campaigns_longer_window(sessions) -> None:
    await ledger(sessions, *SENDS)
    async with sessions() as session, session.begin():
        deleted = await prune_ledger(
            session=session,
            before=NOW - timedelta(days=7),
            keep={"monthly": NOW - timedelta(days=30)},
        )
    assert deleted == 2
    assert await kept(sessions) == [
        ("cart", timedelta(hours=1)),
        ("cart", timedelta(days=3)),
        ("monthly", timedelta(days=10)),
    ]


async def test_cap_windows_come_from_every_version(sessions) -> None:
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=MONTHLY)
        weekly = MONTHLY.model_copy(update={"caps": [], "name": "No caps now"})
        await save_campaign(session=session, definition=weekly)
    async with sessions() as session:
        assert await cap_windows(session=session) == {"monthly": [timedelta(days=30)]}


async def test_the_worker_puts_the_schedule_in_place_and_a_run_prunes(
    dev_server: DevServer, sqlite_url: str
) -> None:
    week = timedelta(days=7)
    caps = [CapRule(group="marketing", limit=3, window=week)]
    settings = make_settings(sqlite_url, dev_server.address, caps=caps)
    engine = create_engine(sqlite_url)
    sessions = session_factory(engine)
    client = dev_server.client
    try:
        async with sessions() as session, session.begin():
            await save_campaign(session=session, definition=MONTHLY)
        started = datetime.now(UTC)
        await ledger(sessions, *SENDS, now=started)
        async with (
            worker_activities(settings, client) as activities,
            create_worker(client, activities, task_queue=settings.task_queue),
        ):
            await ensure_schedules(client, task_queue=settings.task_queue)
            handle = client.get_schedule_handle(prune_ledger_id(settings.task_queue))
            try:
                # An operator pauses it; a second worker starting keeps it paused.
                await handle.pause(note="maintenance")
                await ensure_schedules(client, task_queue=settings.task_queue)
                assert (await handle.describe()).schedule.state.paused
                await handle.unpause()
                described = await handle.describe()
                action = described.schedule.action
                assert isinstance(action, ScheduleActionStartWorkflow)
                assert action.workflow == WORKFLOW_PRUNE_LEDGER
                assert action.task_queue == settings.task_queue
                assert described.schedule.spec.intervals[0].every == PRUNE_EVERY

                await handle.trigger()

                async def fired() -> str:
                    recent = (await handle.describe()).info.recent_actions
                    assert recent, "the triggered run has not started yet"
                    return recent[-1].action.workflow_id

                run = client.get_workflow_handle(await eventually(fired), result_type=LedgerPruned)
                pruned = await run.result()
            finally:
                await handle.delete()
        assert pruned.deleted == 2
        assert set(pruned.kept_longer) == {"monthly"}
        assert started - week <= pruned.kept_since <= datetime.now(UTC) - week
        assert await kept(sessions, started) == [
            ("cart", timedelta(hours=1)),
            ("cart", timedelta(days=3)),
            ("monthly", timedelta(days=10)),
        ]
    finally:
        await engine.dispose()
