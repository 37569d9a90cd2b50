"""tests.store: migrations build exactly the tables the models describe, on both backends."""

from __future__ import annotations

import asyncio
import sys

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

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
