"""tests.store: the database fixtures skip without PostgreSQL, and fail instead under CI."""

from __future__ import annotations

import pytest

from tests.fixtures import db

UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:9/test"


async def test_without_postgres_the_test_is_skipped_with_a_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(db.POSTGRES_URL_ENV, UNREACHABLE)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        await db.require_postgres()
    message = str(skipped.value)
    assert "127.0.0.1:9" in message
    assert "start PostgreSQL on 127.0.0.1:5432" in message
    assert db.POSTGRES_URL_ENV in message


async def test_under_ci_a_missing_postgres_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(db.POSTGRES_URL_ENV, UNREACHABLE)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not reachable"):
        await db.require_postgres()


async def test_database_url_backends_are_separate_files(database_url: str, sqlite_url: str) -> None:
    assert database_url != sqlite_url
    if database_url.startswith("postgresql"):
        assert "/nudge_test_" in database_url
