"""tests.api: an unsubscribe link mangled into non-ASCII is refused (400), not a crash."""

from __future__ import annotations

from tests.fixtures.api import RunningApi


async def test_a_non_ascii_token_is_a_400(api: RunningApi) -> None:
    for token in ("abc.d\u00e9f", "abc.\U0001f600", "\u00e9.abc"):
        for method in ("GET", "POST"):
            answer = await api.http.request(method, f"/u/{token}")
            assert answer.status_code == 400, (method, token, answer.text)
            assert "not valid" in answer.text
