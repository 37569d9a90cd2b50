"""tests.api: posting external triggers — who may, what a bad one is told, and that an
occurrence is kept once whatever the repeats."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from store.models import Event
from temporal.servers import free_port
from tests.fixtures.api import ADMIN, RunningApi, make_settings, running_api

RAIN = {
    "id": "rain",
    "name": "Umbrellas",
    "entry": {
        "trigger": "rain",
        "audience": {
            "conditions": [{"path": "traits.city", "value_from": "trigger.properties.city"}]
        },
    },
    "steps": [{"id": "done", "type": "exit"}],
}


async def post(api: RunningApi, name: str, body: Any, headers: dict[str, str] = ADMIN) -> Any:
    return await api.http.post(f"/v1/triggers/{name}", json=body, headers=headers)


async def test_an_occurrence_is_stored_once_and_answered_202(api_db: RunningApi) -> None:
    await api_db.campaign(RAIN)
    body = {"id": "rain-2026-12-01-sh", "properties": {"city": "Shanghai", "mm": 12}}
    first = await post(api_db, "rain", body)
    assert first.status_code == 202, first.text
    assert first.json() == {
        "trigger": "rain",
        "id": "rain-2026-12-01-sh",
        "occurrence": "trigger/rain/rain-2026-12-01-sh",
        "campaigns": ["rain"],
        "duplicate": False,
    }
    second = await post(api_db, "rain", body)
    assert second.status_code == 202 and second.json()["duplicate"] is True
    async with api_db.services.sessions() as session:
        [stored] = (await session.scalars(select(Event).where(Event.type == "trigger"))).all()
    assert stored.name == "rain"
    assert stored.payload["properties"] == {"city": "Shanghai", "mm": 12}


async def test_bad_triggers_are_told_what_is_wrong(api: RunningApi) -> None:
    await api.campaign(RAIN)
    unknown = await post(api, "snow", {"id": "s-1"})
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == (
        "unknown trigger 'snow': no active campaign starts on it (triggers: rain)"
    )
    no_id = await post(api, "rain", {"properties": {"city": "Shanghai"}})
    assert no_id.status_code == 400 and no_id.json()["detail"] == "id: Field required"
    empty_id = await post(api, "rain", {"id": ""})
    assert empty_id.status_code == 400 and empty_id.json()["detail"].startswith("id: ")
    extra = await post(api, "rain", {"id": "x", "city": "Shanghai"})
    assert extra.status_code == 400 and extra.json()["detail"].startswith("city: ")
    nul = await post(api, "rain", {"id": "x", "properties": {"city": "Sh\u0000"}})
    assert nul.status_code == 400 and nul.json()["detail"].startswith("properties.city: ")
    not_json = await api.http.post("/v1/triggers/rain", content=b"{", headers=ADMIN)
    assert not_json.status_code == 400 and not_json.json()["detail"].startswith("body: not JSON")
    assert (await post(api, "Not A Slug", {"id": "x"})).status_code == 422


async def test_the_admin_token_or_the_trigger_token_may_post(sqlite_url: str) -> None:
    settings = make_settings(
        sqlite_url, f"127.0.0.1:{free_port()}", trigger_token="weather-service-token"
    )
    async with running_api(settings) as api:
        await api.campaign(RAIN)
        scoped = {"Authorization": "Bearer weather-service-token"}
        assert (await post(api, "rain", {"id": "a"}, scoped)).status_code == 202
        wrong = await post(api, "rain", {"id": "b"}, {"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert (await post(api, "rain", {"id": "c"}, {})).status_code == 401
        # The trigger token opens triggers only.
        assert (await api.http.get("/v1/campaigns", headers=scoped)).status_code == 401
