"""tests.store: migrations build exactly the tables the models describe, on both backends."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from store.db import alembic_config, create_engine, migrate
from store.models import Base


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


async def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()


async def test_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
            tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    assert diff == []
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


async def test_migrate_is_a_no_op_at_head(database_url: str) -> None:
    assert await _revision(database_url) == _head()
    await migrate(database_url)
    await migrate(database_url)
    assert await _revision(database_url) == _head()


async def test_concurrent_migrations_of_a_new_database_agree(blank_database_url: str) -> None:
    # The API and the worker start together and both migrate at start-up.
    await asyncio.gather(*(migrate(blank_database_url) for _ in range(3)))
    assert await _revision(blank_database_url) == _head()


async def test_migrations_from_several_processes_agree(blank_database_url: str) -> None:
    # Separate processes share no lock in memory: the database itself must serialize them.
    script = "import asyncio, sys; from store.db import migrate; asyncio.run(migrate(sys.argv[1]))"
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, blank_database_url, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    results = [await process.communicate() for process in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err.decode() for _, err in results]
    assert await _revision(blank_database_url) == _head()


async def test_a_connection_waits_for_another_switching_a_new_database_to_wal(
    tmp_path: Path,
) -> None:
    # What processes opening a new database together meet: while one connection holds the
    # write lock of a file still in rollback-journal mode (switching it to WAL itself),
    # SQLite refuses another's switch at once, busy timeout or not. It must wait instead.
    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE written_first (x)")
    release = threading.Timer(0.2, holder.execute, ["COMMIT"])
    release.start()
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    began = time.monotonic()
    try:
        async with engine.connect() as connection:
            # It waited for the holder (connected before the release, it met the lock).
            assert time.monotonic() - began >= 0.15
            mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar_one()
            tables = (
                await connection.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
            ).scalars()
            assert (mode, list(tables)) == ("wal", ["written_first"])
    finally:
        release.join()
        holder.close()
        await engine.dispose()


async def test_downgrade_to_base_and_back(blank_database_url: str) -> None:
    def downgrade(connection: Connection) -> None:
        config = alembic_config(blank_database_url)
        config.attributes["connection"] = connection
        command.downgrade(config, "base")

    await migrate(blank_database_url)
    engine = create_engine(blank_database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(downgrade)
        async with engine.connect() as connection:
            left = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        assert left <= {"alembic_version"}
    finally:
        await engine.dispose()
    await migrate(blank_database_url)
    assert await _revision(blank_database_url) == _head()


async def test_sqlite_url_fixture_is_migrated(sqlite_url: str) -> None:
    assert sqlite_url.startswith("sqlite+aiosqlite:///")
    assert await _revision(sqlite_url) == _head()


async def test_the_funnel_starts_from_what_was_recorded_before_the_aggregates(
    blank_database_url: str,
) -> None:
    """Upgrading to 0005 counts the journeys and deliveries already recorded, into the same
    hourly rows later counts add to."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import JSON, Integer, String, column, insert, table

    from api.stats import campaign_funnel
    from core.stats import SENT
    from store.db import session_factory
    from store.models import UTCDateTime
    from store.stats import Bump, bump
    from tests.store.test_attribution import campaign

    def to_0004(connection: Connection) -> None:
        config = alembic_config(blank_database_url)
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")

    def old(table_name: str, /, **types: Any) -> Any:
        return table(table_name, *(column(n, t) for n, t in types.items()))

    at = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    definition = campaign()
    await migrate(blank_database_url)
    engine = create_engine(blank_database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(to_0004)
            text_, time_, int_ = String(), UTCDateTime(), Integer()
            await connection.execute(
                insert(
                    old(
                        "campaigns",
                        id=text_,
                        name=text_,
                        status=text_,
                        current_version=int_,
                        created_at=time_,
                        updated_at=time_,
                    )
                ),
                [
                    dict(
                        id="cart",
                        name="Cart",
                        status="active",
                        current_version=1,
                        created_at=at,
                        updated_at=at,
                    )
                ],
            )
            await connection.execute(
                insert(
                    old(
                        "campaign_versions",
                        campaign_id=text_,
                        version=int_,
                        definition=JSON(),
                        definition_hash=text_,
                        created_at=time_,
                    )
                ),
                [
                    dict(
                        campaign_id="cart",
                        version=1,
                        definition=definition.model_dump(mode="json", by_alias=True),
                        definition_hash="x",
                        created_at=at,
                    )
                ],
            )
            await connection.execute(
                insert(
                    old(
                        "journey_entries",
                        campaign_id=text_,
                        campaign_version=int_,
                        user_id=text_,
                        workflow_id=text_,
                        run_id=text_,
                        entry_message_id=text_,
                        entered_at=time_,
                        status=text_,
                        ended_at=time_,
                    )
                ),
                [
                    dict(
                        campaign_id="cart",
                        campaign_version=1,
                        user_id=f"u{i}",
                        workflow_id=f"journey/cart/u{i}",
                        run_id=f"r{i}",
                        entry_message_id=f"m{i}",
                        entered_at=at,
                        status="converted" if i == 0 else "running",
                        ended_at=at + timedelta(hours=1) if i == 0 else None,
                    )
                    for i in range(3)
                ],
            )
            rows = [
                ("sent", None),
                ("sent", None),
                ("failed", "smtp said no"),
                ("suppressed", "cap: 3 messages per 24h"),
            ]
            await connection.execute(
                insert(
                    old(
                        "deliveries",
                        idempotency_key=text_,
                        workflow_id=text_,
                        campaign_id=text_,
                        campaign_version=int_,
                        step_id=text_,
                        visit=int_,
                        channel=text_,
                        user_id=text_,
                        status=text_,
                        attempts=int_,
                        error=text_,
                        created_at=time_,
                        updated_at=time_,
                        sent_at=time_,
                    )
                ),
                [
                    dict(
                        idempotency_key=f"k{i}",
                        workflow_id="w",
                        campaign_id="cart",
                        campaign_version=1,
                        step_id="remind",
                        visit=1,
                        channel="sandbox",
                        user_id=f"u{i}",
                        status=status,
                        attempts=1,
                        error=error,
                        created_at=at,
                        updated_at=at,
                        sent_at=at if status == "sent" else None,
                    )
                    for i, (status, error) in enumerate(rows)
                ],
            )
    finally:
        await engine.dispose()
    await migrate(blank_database_url)

    engine = create_engine(blank_database_url)
    try:
        sessions = session_factory(engine)
        async with sessions() as session, session.begin():
            # A send counted after the upgrade, in the same hour, adds to the same row.
            await bump(session, Bump("cart", 1, SENT, at + timedelta(minutes=10), step_id="remind"))
        async with sessions() as session:
            found = await campaign_funnel(session, campaign_id="cart")
    finally:
        await engine.dispose()
    funnel = found.funnel
    assert (funnel.entered, funnel.sent, funnel.delivered, funnel.failed) == (3, 3, 2, 1)
    assert funnel.suppressed_by_reason == {"frequency_cap": 1}
    assert (found.journeys.converted, found.journeys.running) == (1, 2)
    [step] = found.steps
    assert step.step_id == "remind" and step.funnel.sent == 3
