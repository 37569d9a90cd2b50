"""store: Alembic's environment — migrates on the caller's connection or opens its own."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection, text

from store.db import migration_engine
from store.models import Base, UTCDateTime

# Any constant will do: every Nudge process that migrates takes the same one.
POSTGRES_MIGRATION_LOCK = 0x4E55_4447_45

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Autogenerate writes model types as plain SQLAlchemy: revisions never import models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: object) -> None:
    url = config.get_main_option("sqlalchemy.url") or ""
    context.configure(
        target_metadata=target_metadata,
        # SQLite alters a table by copying it; batch mode writes migrations that way.
        render_as_batch=url.startswith("sqlite"),
        render_item=_render_item,
        **kwargs,  # type: ignore[arg-type]
    )


def run_offline() -> None:
    """`--sql`: print the SQL instead of running it (for a DBA to review)."""
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # API and worker may start together: the second waits, then finds head.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_MIGRATION_LOCK}
            )
        context.run_migrations()


async def run_with_own_engine() -> None:
    """From the `alembic` command line, where no event loop is running yet."""
    engine = migration_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
elif (connection := config.attributes.get("connection")) is not None:
    run_on(connection)
else:
    asyncio.run(run_with_own_engine())
