"""tests.api: campaign lifecycle over HTTP and from the `nudge` command — a changed definition
of a live campaign is a draft that the routing index does not enter until it is published;
publish, rollback, diff, `?activate=true`, and each refusal."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import yaml

from cli.lifecycle import applied_line, summary_line
from core.definition import CampaignStatus
from tests.api.test_campaigns import CART
from tests.cli.runner import nudge
from tests.fixtures.api import ADMIN, RunningApi

ENTRY = ("track", "Product Added")


def v2() -> dict[str, Any]:
    """CART with a gentler reminder (a template changed), a shorter wait (a step changed)
    and a last step (added)."""
    definition = copy.deepcopy(CART)
    definition["steps"][0]["duration"] = "2h"
    definition["steps"][1]["next"] = "bye"
    definition["steps"].append({"id": "bye", "type": "exit"})
    definition["templates"]["reminder"]["body"] = "Ça vous manque ? 10 € de remise"
    return definition


def live_version(api: RunningApi) -> int:
    """The version this API process's routing index starts new journeys on."""
    [entry] = api.services.campaigns.index.entries[ENTRY]
    return entry.version


async def detail(api: RunningApi) -> tuple[int, int, dict[int, str]]:
    """(current version, latest version, {version: state}) as GET shows them."""
    answer = await api.http.get("/v1/campaigns/cart", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    states = {v["version"]: v["state"] for v in body["versions"]}
    return body["current_version"], body["latest_version"], states


async def test_a_draft_reaches_new_journeys_only_once_published(api: RunningApi) -> None:
    http = api.http
    created = await http.post(
        "/v1/campaigns", params={"activate": "true"}, json=CART, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    assert created.json()["campaign"]["status"] == CampaignStatus.active
    assert created.json()["version"]["state"] == "live"
    assert live_version(api) == 1

    # Saving a change: a draft. The routing index still starts version 1.
    saved = await http.put("/v1/campaigns/cart", json=v2(), headers=ADMIN)
    assert saved.status_code == 201, saved.text
    body = saved.json()
    assert (body["campaign"]["current_version"], body["version"]["version"]) == (1, 2)
    assert (body["version"]["state"], body["version"]["published_at"]) == ("draft", None)
    assert live_version(api) == 1
    assert await detail(api) == (1, 2, {1: "live", 2: "draft"})
    shown = (await http.get("/v1/campaigns/cart", headers=ADMIN)).json()
    assert shown["definition"]["templates"]["reminder"]["body"] == "Your cart misses you"
    draft = (await http.get("/v1/campaigns/cart/versions/2", headers=ADMIN)).json()
    assert draft["state"] == "draft" and draft["definition"]["steps"][2]["id"] == "bye"

    # What changes (default: live → latest), readable.
    diff = await http.get("/v1/campaigns/cart/diff", headers=ADMIN)
    assert diff.status_code == 200, diff.text
    changes = diff.json()
    assert (changes["from_version"], changes["to_version"]) == (1, 2)
    assert changes["steps_added"] == ["bye"] and changes["steps_removed"] == []
    assert changes["steps_changed"] == ["wait", "remind"]
    assert changes["fields_changed"] == ["templates"]
    text = changes["text"]
    assert text.startswith("--- cart v1\n+++ cart v2\n")
    for line in ("-  duration: 1d", "+  duration: 2h", "+- id: bye", "+    body: Ça vous manque"):
        assert any(row.startswith(line) for row in text.splitlines()), (line, text)
    same = (await http.get("/v1/campaigns/cart/diff?from=2&to=2", headers=ADMIN)).json()
    assert (same["text"], same["steps_changed"], same["fields_changed"]) == ("", [], [])

    # Publish (default: the latest): new journeys enter version 2.
    published = await http.post("/v1/campaigns/cart/publish", headers=ADMIN)
    assert published.status_code == 200, published.text
    body = published.json()
    assert (body["previous_version"], body["changed"], body["version"]["state"]) == (
        1,
        True,
        "live",
    )
    assert body["version"]["published_at"] is not None
    assert live_version(api) == 2
    assert await detail(api) == (2, 2, {1: "retired", 2: "live"})

    # Roll back (the version in the query, then in a body: the same, nothing changes).
    back = await http.post("/v1/campaigns/cart/publish?version=1", headers=ADMIN)
    assert (back.json()["previous_version"], back.json()["changed"]) == (2, True)
    assert live_version(api) == 1
    again = await http.post("/v1/campaigns/cart/publish", json={"version": 1}, headers=ADMIN)
    assert again.status_code == 200 and again.json()["changed"] is False
    assert await detail(api) == (1, 2, {1: "live", 2: "retired"})

    # Save, publish and activate in one request, on a paused campaign.
    await http.post("/v1/campaigns/cart/pause", headers=ADMIN)
    v3 = {**v2(), "name": "Cart, v3"}
    saved = await http.put("/v1/campaigns/cart?activate=true", json=v3, headers=ADMIN)
    assert saved.status_code == 201, saved.text
    body = saved.json()
    assert (body["campaign"]["status"], body["campaign"]["current_version"]) == ("active", 3)
    assert (body["campaign"]["name"], body["version"]["state"]) == ("Cart, v3", "live")
    assert live_version(api) == 3
    # The same definition again with ?activate=true: no version, nothing to publish.
    same = await http.post("/v1/campaigns?activate=true", json=v3, headers=ADMIN)
    assert same.status_code == 200 and same.json()["new_version"] is False
    assert await detail(api) == (3, 3, {1: "retired", 2: "retired", 3: "live"})


async def test_lifecycle_refusals_name_what_is_wrong(api: RunningApi) -> None:
    http = api.http
    for method, path in [
        ("POST", "/v1/campaigns/nope/publish"),
        ("GET", "/v1/campaigns/nope/diff"),
    ]:
        answer = await http.request(method, path, headers=ADMIN)
        assert answer.status_code == 404, (path, answer.text)
        assert "no campaign 'nope'" in answer.json()["detail"]
    await http.post("/v1/campaigns", json=CART, headers=ADMIN)

    missing = await http.post("/v1/campaigns/cart/publish?version=7", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.json()["detail"] == "campaign 'cart' version 7 does not exist (versions: 1 to 1)"
    no_side = await http.get("/v1/campaigns/cart/diff?from=1&to=7", headers=ADMIN)
    assert no_side.status_code == 404 and "no version 7" in no_side.json()["detail"]
    twice = await http.post(
        "/v1/campaigns/cart/publish?version=1", json={"version": 2}, headers=ADMIN
    )
    assert twice.status_code == 400
    assert "query names version 1 but the body version 2" in twice.json()["detail"]
    for method, path, body, where in [
        ("POST", "/v1/campaigns/cart/publish?version=0", None, ["query", "version"]),
        ("POST", "/v1/campaigns/cart/publish", {"version": "two"}, ["body", "version"]),
        ("POST", "/v1/campaigns/cart/publish", {"versoin": 1}, ["body", "versoin"]),
        ("GET", "/v1/campaigns/cart/diff?from=-1", None, ["query", "from"]),
        ("GET", "/v1/campaigns/cart/diff?to=2147483648", None, ["query", "to"]),
        ("POST", "/v1/campaigns?activate=maybe", CART, ["query", "activate"]),
    ]:
        answer = await http.request(method, path, json=body, headers=ADMIN)
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["detail"][0]["loc"] == where, (path, answer.text)

    await http.post("/v1/campaigns/cart/archive", headers=ADMIN)
    archived = await http.post("/v1/campaigns/cart/publish", headers=ADMIN)
    assert archived.status_code == 409 and "archived" in archived.json()["detail"]
    activated = await http.post("/v1/campaigns?activate=true", json=CART, headers=ADMIN)
    assert activated.status_code == 409 and "archived" in activated.json()["detail"]

    # The OpenAPI document says what `activate` does.
    spec = (await http.get("/openapi.json")).json()
    [activate] = [p for p in spec["paths"]["/v1/campaigns"]["post"]["parameters"]]
    assert activate["name"] == "activate" and "publish" in activate["description"]
    assert "/v1/campaigns/{campaign_id}/publish" in spec["paths"]


async def test_the_cli_saves_a_draft_publishes_it_and_shows_the_diff(
    api: RunningApi, tmp_path: Path
) -> None:
    (tmp_path / "v2.yaml").write_text(yaml.safe_dump(v2(), allow_unicode=True), encoding="utf-8")

    live = await api.http.post("/v1/campaigns?activate=true", json=CART, headers=ADMIN)
    assert live.status_code == 201, live.text
    second = await nudge(tmp_path, "campaigns", "apply", "v2.yaml", url=api.url)
    assert second.code == 0, second.stderr
    assert second.stderr.splitlines() == [
        "cart: version 2 saved (draft); version 1 stays live until you publish it: "
        "nudge campaigns publish cart --version 2 (what changes: nudge campaigns diff cart 1 2)"
    ]
    assert '"version_state": "draft"' in second.stdout and '"current_version": 1' in second.stdout
    assert live_version(api) == 1

    # Reading the diff and publishing do not depend on each other: run them together.
    diff, published = await asyncio.gather(
        nudge(tmp_path, "campaigns", "diff", "cart", "1", "2", url=api.url),
        nudge(tmp_path, "campaigns", "publish", "cart", url=api.url),
    )
    assert diff.code == 0, diff.stderr
    assert diff.stdout.startswith("--- cart v1\n+++ cart v2\n")
    assert "+    body: Ça vous manque ? 10 € de remise\n" in diff.stdout  # UTF-8, not escaped
    assert diff.stderr == (
        "cart v1 → v2: steps added: bye; steps changed: wait, remind; fields changed: templates\n"
    )

    assert published.code == 0, published.stderr
    assert published.stderr.startswith("cart: version 2 is live (was 1)")
    assert live_version(api) == 2


def test_what_apply_says_it_did() -> None:
    """The line `nudge campaigns apply` prints on stderr, for each outcome (its JSON goes to
    stdout, for scripts)."""

    def line(status: str, current: int, version: int, state: str, new: bool = True) -> str:
        return applied_line(
            {
                "id": "cart",
                "status": status,
                "current_version": current,
                "version": version,
                "version_state": state,
                "new_version": new,
            }
        )

    assert line("active", 1, 1, "live") == "cart: version 1 saved, live; the campaign is active"
    assert line("active", 3, 3, "live", new=False) == (
        "cart: version 3 unchanged, live; the campaign is active"
    )
    # Reverted to the live definition with a draft above it: said, so a bare publish is not
    # a surprise.
    reverted = applied_line(
        {
            "id": "cart",
            "status": "active",
            "current_version": 1,
            "version": 1,
            "version_state": "live",
            "new_version": False,
        },
        latest=2,
    )
    assert reverted == (
        "cart: version 1 unchanged, live; the campaign is active; version 2, a newer draft, "
        "stays unpublished (nudge campaigns publish cart without --version would make it live)"
    )
    assert line("draft", 2, 2, "draft") == (
        "cart: version 2 saved; the campaign is a draft, nothing enters it until: "
        "nudge campaigns activate cart"
    )
    assert line("paused", 2, 3, "retired", new=False) == (
        "cart: version 3 unchanged (retired); version 2 stays live until you publish it: "
        "nudge campaigns publish cart --version 3 (what changes: nudge campaigns diff cart 2 3)"
    )
    same = {
        "campaign_id": "cart",
        "from_version": 2,
        "to_version": 2,
        "text": "",
        **{key: [] for key in ("steps_added", "steps_removed", "steps_changed", "fields_changed")},
    }
    assert summary_line(same) == "cart v2 → v2: the same definition"
