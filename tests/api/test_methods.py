"""tests.api: OPTIONS answers with every method a path takes, and a method a path does not
take gets 405 listing them all (Starlette listed only the first route's)."""

from __future__ import annotations

from tests.fixtures.api import ADMIN, RunningApi


async def test_options_lists_every_method_of_the_path(api: RunningApi) -> None:
    answer = await api.http.options("/v1/campaigns", headers=ADMIN)
    assert answer.status_code == 204
    assert answer.headers["allow"] == "GET, OPTIONS, POST"
    answer = await api.http.options("/v1/campaigns/welcome", headers=ADMIN)
    assert answer.headers["allow"] == "GET, OPTIONS, PUT"


async def test_a_method_the_path_does_not_take_is_405_with_allow(api: RunningApi) -> None:
    answer = await api.http.delete("/v1/campaigns", headers=ADMIN)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, OPTIONS, POST"
    assert "DELETE is not allowed" in answer.json()["detail"]
    track = await api.http.get("/v1/track")
    assert track.status_code == 405 and track.headers["allow"] == "OPTIONS, POST"


async def test_an_unknown_path_is_still_404(api: RunningApi) -> None:
    for method in ("GET", "OPTIONS", "DELETE"):
        answer = await api.http.request(method, "/v1/nothing-here")
        assert answer.status_code == 404, method
        assert "allow" not in answer.headers
