"""tests.api: a user id in a URL is checked like one in a message — NUL, lone surrogates and
more than 512 bytes get a 422 naming it, on both backends (PostgreSQL cannot even compare
text holding NUL: these were 500s there)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from temporal.servers import DevServer
from tests.fixtures.api import ADMIN, RunningApi, make_settings, running_api

BAD_IDS = {  # as sent in the URL
    "a%00b": "NUL",
    "%F0%9F%98%80" * 129: "bytes of UTF-8",  # 129 emoji: 516 bytes
}
ROUTES = [
    ("GET", "/v1/messages?user_id={user}"),
    ("GET", "/v1/profiles/{user}/subscriptions"),
    ("PUT", "/v1/profiles/{user}/subscriptions"),
    ("DELETE", "/v1/profiles/{user}/suppressions/email"),
    ("GET", "/v1/journeys/welcome/{user}"),
    ("POST", "/v1/journeys/welcome/{user}/exit"),
]


@pytest.fixture
async def api_db(database_url: str, dev_server: DevServer) -> AsyncIterator[RunningApi]:
    """Connected to Temporal: the journey routes must not answer 503 first."""
    async with running_api(make_settings(database_url, dev_server.address)) as api:
        yield api


@pytest.mark.parametrize(("method", "route"), ROUTES)
async def test_a_user_id_that_cannot_be_stored_is_a_422_naming_it(
    api_db: RunningApi, method: str, route: str
) -> None:
    for encoded, words in BAD_IDS.items():
        body = {"subscriptions": []} if method == "PUT" else {"reason": "x"}
        answer = await api_db.http.request(
            method,
            route.format(user=encoded),
            headers=ADMIN,
            json=body if method in ("PUT", "POST") else None,
        )
        assert answer.status_code in (400, 422), (route, encoded, answer.text)
        assert "user_id" in answer.text, answer.text
        assert words in answer.text, answer.text
