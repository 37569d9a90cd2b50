"""tests.api: the rejected-events log over HTTP — admin only, newest first, paged, and able
to keep whatever was sent on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from api.client import NudgeClient
from store.rejected import MAX_ITEM_CHARS
from tests.fixtures.api import ADMIN, ADMIN_TOKEN, RunningApi


async def test_rejected_events_need_the_admin_token(api: RunningApi) -> None:
    assert (await api.http.get("/v1/rejected-events")).status_code == 401
    answer = await api.http.get("/v1/rejected-events", headers=ADMIN)
    assert answer.status_code == 200
    assert answer.json() == {"data": [], "count": 0, "next_before": None}


async def test_pages_go_from_newest_to_oldest(api: RunningApi) -> None:
    items = [{"type": "track", "userId": "u", "messageId": f"m-{i}"} for i in range(5)]
    assert (await api.post("/v1/batch", {"batch": items})).status_code == 200
    seen: list[str] = []
    params: dict[str, int] = {"limit": 2}
    while True:
        page = (await api.http.get("/v1/rejected-events", params=params, headers=ADMIN)).json()
        seen += [row["message_id"] for row in page["data"]]
        if page["next_before"] is None:
            break
        params["before"] = page["next_before"]
    assert seen == ["m-4", "m-3", "m-2", "m-1", "m-0"]
    # What `nudge rejected` prints.
    async with NudgeClient(api.url, admin_token=ADMIN_TOKEN) as client:
        page = await client.rejected_events(limit=3)
        older = await client.rejected_events(limit=3, before=page["next_before"])
    assert [r["message_id"] for r in page["data"] + older["data"]] == seen
    assert page["data"][0]["reason"] == "event: Field required"
    for bad in ({"limit": 0}, {"limit": 501}, {"before": 2**63}, {"before": "x"}):
        answer = await api.http.get("/v1/rejected-events", params=bad, headers=ADMIN)
        assert answer.status_code == 422, bad


async def test_whatever_was_sent_is_kept_escaped_and_cut(api_db: RunningApi) -> None:
    # Over 32 KB: refused, and kept cut at 16 KB; ids with NUL kept escaped.
    big = {"userId": "u\u0000", "event": "E", "messageId": "m\u0000", "properties": {}}
    big["properties"] = {"blob": "\u00e9" * 40_000}
    answer = await api_db.post("/v1/track", big)
    assert answer.status_code == 400
    [row] = (await api_db.http.get("/v1/rejected-events", headers=ADMIN)).json()["data"]
    assert (row["endpoint"], row["position"]) == ("track", None)
    assert (row["message_id"], row["user_id"]) == (r"m\u0000", r"u\u0000")
    assert row["reason"].startswith("event is ") and row["reason"].endswith("32 KB per event")
    assert len(row["item"]) == MAX_ITEM_CHARS
    assert row["item"] == json.dumps(big, separators=(",", ":"))[:MAX_ITEM_CHARS]
