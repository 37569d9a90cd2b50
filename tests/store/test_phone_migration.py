"""Revision 0003 brings phone traits stored before it to E.164, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from store.db import alembic_config, create_engine


async def test_phones_stored_before_0003_become_e164(blank_database_url: str) -> None:
    engine = create_engine(blank_database_url)
    config = alembic_config(blank_database_url)

    def upgrade_to(revision: str):
        def run(sync: sa.Connection) -> None:
            config.attributes["connection"] = sync
            command.upgrade(config, revision)

        return run

    profiles = sa.table(
        "profiles",
        sa.column("user_id", sa.String),
        sa.column("traits", sa.JSON),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    at = datetime(2026, 11, 1, tzinfo=UTC)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade_to("0002"))
            await connection.execute(
                profiles.insert(),
                [
                    {"user_id": user, "traits": traits, "created_at": at, "updated_at": at}
                    for user, traits in (
                        ("ada", {"phone": "+44 7700 900123", "name": "Ada"}),
                        ("bo", {"phone": "07700 900124"}),
                        ("cy", {"email": "cy@example.com"}),
                    )
                ],
            )
        async with engine.begin() as connection:
            await connection.run_sync(upgrade_to("0003"))
            query = sa.select(profiles.c.user_id, profiles.c.traits)
            rows = dict((await connection.execute(query)).all())
    finally:
        await engine.dispose()
    assert rows == {
        "ada": {"phone": "+447700900123", "name": "Ada"},
        "bo": {"phone": "07700 900124"},  # no country code: left as written
        "cy": {"email": "cy@example.com"},
    }
