"""tests.api: segments over HTTP — admin auth, JSON and YAML, versions, problems naming
paths, members kept as identify and track arrive, the member count and paging."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from api.client import NudgeClient, NudgeClientError
from store.segments import build_step
from tests.fixtures.api import ADMIN, ADMIN_TOKEN, RunningApi, eventually

SHANGHAI: dict[str, Any] = {
    "id": "shanghai",
    "name": "Users in Shanghai",
    "traits": [{"path": "traits.city", "op": "eq", "value": "Shanghai"}],
}

LOYAL_YAML = """\
id: loyal-buyers
name: Loyal buyers
events:
  - event: Order Completed
    at_least: 2
    within: 30d
"""

YAML = {**ADMIN, "Content-Type": "application/yaml"}


async def build(api: RunningApi) -> None:
    """What the clock does every minute: build the segments that are building."""
    while True:
        async with api.services.sessions() as session:
            progress = await build_step(session, now=datetime.now(UTC), limit=500)
            await session.commit()
        if progress.segment_id is None:
            return


async def test_admin_token_is_required(api: RunningApi) -> None:
    for method, path in [
        ("GET", "/v1/segments"),
        ("POST", "/v1/segments"),
        ("GET", "/v1/segments/shanghai"),
        ("GET", "/v1/segments/shanghai/members"),
        ("DELETE", "/v1/segments/shanghai"),
    ]:
        answer = await api.http.request(method, path)
        assert answer.status_code == 401, (method, path, answer.text)


async def test_apply_json_and_yaml_as_versions(api_db: RunningApi) -> None:
    http = api_db.http
    created = await http.post("/v1/segments", json=SHANGHAI, headers=ADMIN)
    assert created.status_code == 201, created.text
    assert created.json()["segment"]["version"] == 1
    assert created.json()["segment"]["status"] == "building"
    again = await http.post("/v1/segments", json=SHANGHAI, headers=ADMIN)
    assert again.status_code == 200
    assert again.json()["new_version"] is False
    changed = await http.post(
        "/v1/segments", json={**SHANGHAI, "name": "Shanghai users"}, headers=ADMIN
    )
    assert changed.status_code == 201
    assert changed.json()["segment"]["version"] == 2

    yaml = await http.post("/v1/segments", content=LOYAL_YAML, headers=YAML)
    assert yaml.status_code == 201, yaml.text
    listed = await http.get("/v1/segments", headers=ADMIN)
    assert [s["id"] for s in listed.json()["data"]] == ["loyal-buyers", "shanghai"]
    shown = await http.get("/v1/segments/loyal-buyers", headers=ADMIN)
    assert shown.json()["definition"]["events"] == [
        {"event": "Order Completed", "at_least": 2, "within": "30d"}
    ]
    assert shown.json()["member_count"] == 0

    gone = await http.delete("/v1/segments/loyal-buyers", headers=ADMIN)
    assert gone.status_code == 200
    assert (await http.get("/v1/segments/loyal-buyers", headers=ADMIN)).status_code == 404
    assert (await http.delete("/v1/segments/loyal-buyers", headers=ADMIN)).status_code == 404


async def test_problems_name_their_paths(api: RunningApi) -> None:
    bad_op = {
        "id": "big",
        "name": "Big spenders",
        "events": [
            {
                "event": "Order Completed",
                "where": [{"path": "properties.total", "op": "bigger", "value": 100}],
            }
        ],
    }
    answer = await api.http.post("/v1/segments", json=bad_op, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    problems = answer.json()["detail"]["problems"]
    assert any(p.startswith("events[0].where[0].op: ") for p in problems), problems

    yaml = LOYAL_YAML.replace("at_least: 2", "at_least: -1")
    answer = await api.http.post("/v1/segments", content=yaml, headers=YAML)
    assert answer.status_code == 422
    assert any(p.startswith("events[0].at_least: ") for p in answer.json()["detail"]["problems"])

    answer = await api.http.post("/v1/segments", content=b"{nope", headers=ADMIN)
    assert answer.status_code == 422
    assert answer.json()["detail"]["problems"][0].startswith("not valid JSON")

    assert (await api.http.get("/v1/segments/No%20Such", headers=ADMIN)).status_code == 422
    assert (await api.http.get("/v1/segments/nosuch", headers=ADMIN)).status_code == 404


async def test_members_as_identify_and_track_arrive_counted_and_paged(
    api_db: RunningApi,
) -> None:
    http = api_db.http
    assert (await http.post("/v1/segments", json=SHANGHAI, headers=ADMIN)).status_code == 201
    assert (await http.post("/v1/segments", content=LOYAL_YAML, headers=YAML)).status_code == 201
    await build(api_db)

    for user in ("u3", "u1", "u2", "u4"):
        city = "Paris" if user == "u4" else "Shanghai"
        answer = await api_db.post("/v1/identify", {"userId": user, "traits": {"city": city}})
        assert answer.status_code == 200, answer.text
    await api_db.track("u1", "Order Completed")
    await api_db.track("u1", "Order Completed")

    async def counted() -> bool:
        shown = await http.get("/v1/segments/shanghai", headers=ADMIN)
        loyal = await http.get("/v1/segments/loyal-buyers", headers=ADMIN)
        return shown.json()["member_count"] == 3 and loyal.json()["member_count"] == 1

    await eventually(counted)
    shown = (await http.get("/v1/segments/shanghai", headers=ADMIN)).json()
    assert shown["status"] == "ready" and shown["version"] == 1

    first = await http.get("/v1/segments/shanghai/members", params={"limit": 2}, headers=ADMIN)
    assert first.json() == {"data": ["u1", "u2"], "next_after": "u2"}
    second = await http.get(
        "/v1/segments/shanghai/members", params={"limit": 2, "after": "u2"}, headers=ADMIN
    )
    assert second.json() == {"data": ["u3"], "next_after": None}

    # Entering wrote internal events to the outbox, for campaigns entered by a segment.
    async def entered() -> list[tuple[str, str]]:
        return sorted(
            (e.user_id, e.payload["properties"]["segment"])
            for e in await api_db.events()
            if e.type == "internal" and e.name == "Segment Entered"
        )

    assert await eventually(entered) == [
        ("u1", "loyal-buyers"),
        ("u1", "shanghai"),
        ("u2", "shanghai"),
        ("u3", "shanghai"),
    ]


async def test_the_client_the_cli_uses(api: RunningApi) -> None:
    async with NudgeClient(api.url, admin_token=ADMIN_TOKEN) as client:
        saved = await client.apply_segment(LOYAL_YAML)
        assert (saved["id"], saved["version"], saved["new_version"]) == ("loyal-buyers", 1, True)
        assert (await client.apply_segment(LOYAL_YAML))["new_version"] is False
        assert [s["id"] for s in await client.list_segments()] == ["loyal-buyers"]
        shown = await client.get_segment("loyal-buyers")
        assert (shown["member_count"], shown["status"]) == (0, "building")
        assert await client.segment_members("loyal-buyers", limit=10) == {
            "data": [],
            "next_after": None,
        }
        with pytest.raises(NudgeClientError) as caught:
            await client.apply_segment(LOYAL_YAML.replace("within: 30d", "within: soon"))
        assert caught.value.status_code == 422
        assert "events[0].within" in str(caught.value)
        await client.delete_segment("loyal-buyers")
        assert await client.list_segments() == []
