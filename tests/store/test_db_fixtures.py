"""tests.store: the database fixtures skip without PostgreSQL, and fail instead under CI; a
transient failure to reach it is not remembered."""

from __future__ import annotations

import pytest

from tests.fixtures import db

UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:9/test"


@pytest.fixture
def fresh_probe_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests probe on their own: they neither see nor leave what the run learnt."""
    monkeypatch.setattr(db, "_reachable", set())
    monkeypatch.setattr(db, "_skipped", [])
    monkeypatch.setattr(db, "PROBE_PAUSE_SECONDS", 0)


async def test_without_postgres_the_test_is_skipped_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, fresh_probe_state: None
) -> None:
    monkeypatch.setenv(db.POSTGRES_URL_ENV, UNREACHABLE)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="is not reachable") as skipped:
        await db.require_postgres()
    message = str(skipped.value)
    assert "127.0.0.1:9" in message
    assert "start PostgreSQL on 127.0.0.1:5432" in message
    assert db.POSTGRES_URL_ENV in message
    assert db._skipped == [message]  # said again in the run's summary


async def test_under_ci_a_missing_postgres_fails(
    monkeypatch: pytest.MonkeyPatch, fresh_probe_state: None
) -> None:
    monkeypatch.setenv(db.POSTGRES_URL_ENV, UNREACHABLE)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"127\.0\.0\.1:9/test is not reachable"):
        await db.require_postgres()


class FlakyServer:
    """A probe's answers, in order: a problem (str) or reachable (None)."""

    def __init__(self, *answers: str | None) -> None:
        self.answers = list(answers)
        self.probes = 0

    async def __call__(self, server_url: str) -> str | None:
        self.probes += 1
        return self.answers.pop(0)


async def test_one_failed_probe_is_tried_again_at_once(
    monkeypatch: pytest.MonkeyPatch, fresh_probe_state: None
) -> None:
    monkeypatch.setenv(db.POSTGRES_URL_ENV, UNREACHABLE)
    server = FlakyServer("OSError: the database system is starting up", None)
    monkeypatch.setattr(db, "_probe", server)
    assert await db.require_postgres() == UNREACHABLE
    assert server.probes == 2


async def test_a_failure_is_not_remembered_but_success_is(
    monkeypatch: pytest.MonkeyPatch, fresh_probe_state: None
) -> None:
    monkeypatch.setenv(db.POSTGRES_URL_ENV, UNREACHABLE)
    monkeypatch.delenv("CI", raising=False)
    down = "OSError: Connect call failed"
    server = FlakyServer(down, down, None)
    monkeypatch.setattr(db, "_probe", server)
    with pytest.raises(pytest.skip.Exception, match="Connect call failed"):
        await db.require_postgres()
    # The next test asks again, and finds it back; later ones need not ask.
    assert await db.require_postgres() == UNREACHABLE
    assert await db.require_postgres() == UNREACHABLE
    assert server.probes == 3


async def test_database_url_backends_are_separate_files(database_url: str, sqlite_url: str) -> None:
    assert database_url != sqlite_url
    if database_url.startswith("postgresql"):
        assert "/nudge_test_" in database_url
