"""store: engines and session factories, and bringing a database up to the latest schema."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import Insert as PostgresInsert
from sqlalchemy.dialects.sqlite import Insert as SQLiteInsert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS = Path(__file__).parent / "migrations"

# How long a SQLite connection waits for another's lock before "database is locked".
SQLITE_BUSY_SECONDS = 30.0

_migration_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def create_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            _use_wal(dbapi_conn)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_SECONDS * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _use_wal(dbapi_conn: Any) -> None:
    """Put the database in WAL mode, waiting out another connection that is doing the same.

    On a database still in rollback-journal mode (a new file), the switch reads the header and
    then upgrades to a write; SQLite answers that upgrade with SQLITE_BUSY at once, without
    the busy timeout, while another connection holds the write lock, since waiting could
    deadlock. Two processes opening a new database together (the API and the worker, both
    migrating at start) meet exactly that: the one that lost lets go of its read and tries
    again until the other's switch is done. Once the file is in WAL mode the switch writes
    nothing, so later connections never wait here.
    """
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    pause = 0.001
    while True:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        finally:
            cur.close()
        # On the event loop's thread (SQLAlchemy's connect hook is synchronous): a few
        # milliseconds, only while another connection's switch of a new file is under way.
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def dialect_insert(session: AsyncSession, table: Any) -> PostgresInsert | SQLiteInsert:
    """An INSERT that knows ON CONFLICT for the session's backend (SQLite or PostgreSQL).

    The race-safe writes (dedup of events, profiles, journey entries) all lean on
    `INSERT .. ON CONFLICT DO NOTHING`, which SQLAlchemy only offers per dialect.
    """
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"Nudge supports SQLite and PostgreSQL, not {name!r}")


def alembic_config(url: str) -> Config:
    """Alembic's configuration, built in code: there is no alembic.ini to keep in step."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser would read a '%' in a password as interpolation.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migration_engine(url: str) -> AsyncEngine:
    """An engine for migrating only: on SQLite it runs the whole upgrade in one transaction.

    The sqlite3 driver begins no transaction before DDL, so a failed upgrade would leave
    half its tables behind; emitting BEGIN IMMEDIATE ourselves makes the upgrade atomic and
    makes a second `migrate` (API and worker starting together) wait for the first.
    """
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _no_driver_transactions(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _begin_immediate(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _upgrade_to_head(connection: Connection, url: str) -> None:
    config = alembic_config(url)
    # env.py migrates on this connection instead of opening its own event loop.
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(url: str) -> None:
    """Upgrade the database at `url` to the newest revision; a no-op when it is there.

    Alembic's commands are synchronous; they run through `run_sync` on an async
    connection, so this is safe to await from inside a running event loop (an app's
    lifespan, a test) and never calls `asyncio.run` itself.
    """
    # Alembic keeps its running environment in module globals: two upgrades interleaving
    # on one loop would overwrite each other's. Other processes wait on database locks.
    lock = _migration_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        engine = migration_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(_upgrade_to_head, url)
        finally:
            await engine.dispose()


async def lock_users(session: AsyncSession, namespace: int, user_ids: Iterable[str]) -> None:
    """Transaction-scoped advisory locks, one per user (PostgreSQL; SQLite's single writer
    serialises transactions already), held until commit. One statement takes them all in
    the order of their keys, so two transactions naming the same users in different orders
    wait for each other instead of deadlocking; two users whose keys collide merely take
    turns. `namespace` keeps each use's locks apart."""
    users = sorted(set(user_ids))
    if not users or session.get_bind().dialect.name != "postgresql":
        return
    await session.execute(
        text(
            "SELECT count(pg_advisory_xact_lock(:ns, key)) FROM ("
            " SELECT DISTINCT hashtext(user_id) AS key"
            " FROM unnest(CAST(:user_ids AS text[])) AS user_id ORDER BY key"
            ") AS keys"
        ),
        {"ns": namespace, "user_ids": users},
    )
