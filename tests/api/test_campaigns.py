"""tests.api: campaigns over HTTP — admin auth, versions, YAML, problems, status transitions."""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.fixtures.api import ADMIN, RunningApi, eventually, running_api

CART: dict[str, Any] = {
    "id": "cart",
    "name": "Cart abandonment",
    "entry": {"event": "Product Added"},
    "goals": [{"event": "Order Completed"}],
    "steps": [
        {"id": "wait", "type": "wait", "duration": "24h", "next": "remind"},
        {"id": "remind", "type": "send", "channel": "sandbox", "template": "reminder"},
    ],
    "templates": {"reminder": {"body": "Your cart misses you"}},
}

CART_YAML = """\
id: cart
name: Cart abandonment
entry:
  event: Product Added
goals:
  - event: Order Completed
steps:
  - id: wait
    type: wait
    duration: 24h
    next: remind
  - id: remind
    type: send
    channel: sandbox
    template: reminder
templates:
  reminder:
    body: Your cart misses you
"""


def changed(definition: dict[str, Any], **fields: Any) -> dict[str, Any]:
    out = copy.deepcopy(definition)
    out.update(fields)
    return out


async def test_admin_token_is_required(api: RunningApi) -> None:
    calls = [
        ("GET", "/v1/campaigns"),
        ("POST", "/v1/campaigns"),
        ("GET", "/v1/campaigns/cart"),
        ("POST", "/v1/campaigns/cart/activate"),
        ("GET", "/v1/journeys/cart/ada"),
        ("POST", "/v1/journeys/cart/ada/exit"),
    ]
    for method, path in calls:
        missing = await api.http.request(method, path)
        wrong = await api.http.request(method, path, headers={"Authorization": "Bearer nope"})
        basic = await api.http.request(method, path, auth=("test-admin-token", ""))
        for answer in (missing, wrong, basic):
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.headers["www-authenticate"].startswith("Bearer")


async def test_save_versions_and_read_them_back(api_db: RunningApi) -> None:
    http = api_db.http
    created = await http.post("/v1/campaigns", json=CART, headers=ADMIN)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["new_version"] is True
    assert body["campaign"]["status"] == "draft"
    assert body["campaign"]["current_version"] == 1
    assert body["version"]["version"] == 1

    again = await http.post("/v1/campaigns", json=CART, headers=ADMIN)
    assert again.status_code == 200
    assert again.json()["new_version"] is False
    assert again.json()["version"]["version"] == 1

    edited = changed(CART, name="Cart abandonment, gentler")
    second = await http.put("/v1/campaigns/cart", json=edited, headers=ADMIN)
    assert second.status_code == 201, second.text
    assert second.json()["campaign"]["current_version"] == 2

    detail = (await http.get("/v1/campaigns/cart", headers=ADMIN)).json()
    assert detail["name"] == "Cart abandonment, gentler"
    assert detail["current_version"] == 2
    assert detail["definition"]["name"] == "Cart abandonment, gentler"
    assert [v["version"] for v in detail["versions"]] == [1, 2]

    v1 = await http.get("/v1/campaigns/cart/versions/1", headers=ADMIN)
    assert v1.status_code == 200
    assert v1.json()["definition"]["name"] == "Cart abandonment"
    assert v1.json()["definition"]["steps"][0]["duration"] == "1d"

    listed = (await http.get("/v1/campaigns", headers=ADMIN)).json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == "cart"


async def test_yaml_body(api: RunningApi) -> None:
    headers = {**ADMIN, "Content-Type": "application/yaml"}
    created = await api.http.post("/v1/campaigns", content=CART_YAML, headers=headers)
    assert created.status_code == 201, created.text
    # The same campaign as JSON is the same definition: no new version.
    as_json = await api.http.post("/v1/campaigns", json=CART, headers=ADMIN)
    assert as_json.status_code == 200
    assert as_json.json()["new_version"] is False


async def test_definition_problems_are_422_with_each_path(api: RunningApi) -> None:
    broken = changed(
        CART,
        steps=[
            {"id": "wait", "type": "wait", "duration": "24h", "next": "remind"},
            {"id": "ask", "type": "wait_for", "event": "E", "timeout": "1h", "on_timeout": "nag"},
        ],
    )
    answer = await api.http.post("/v1/campaigns", json=broken, headers=ADMIN)
    assert answer.status_code == 422
    problems = answer.json()["detail"]["problems"]
    assert "steps[0].next: no step named 'remind'" in problems
    assert "steps[1].on_timeout: no step named 'nag'" in problems

    missing = await api.http.post(
        "/v1/campaigns", json={k: v for k, v in CART.items() if k != "entry"}, headers=ADMIN
    )
    assert missing.status_code == 422
    assert "entry: Field required" in missing.json()["detail"]["problems"]

    yaml_junk = await api.http.post(
        "/v1/campaigns",
        content="id: [unclosed",
        headers={**ADMIN, "Content-Type": "application/yaml"},
    )
    assert yaml_junk.status_code == 422
    assert yaml_junk.json()["detail"]["problems"][0].startswith("not valid YAML or JSON")

    json_junk = await api.http.post(
        "/v1/campaigns", content="{nope", headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert json_junk.status_code == 422
    assert "not valid JSON" in json_junk.json()["detail"]["problems"][0]
    listed = (await api.http.get("/v1/campaigns", headers=ADMIN)).json()
    assert listed["count"] == 0


async def test_put_needs_the_same_id(api: RunningApi) -> None:
    answer = await api.http.put("/v1/campaigns/other", json=CART, headers=ADMIN)
    assert answer.status_code == 400
    assert "'other'" in answer.json()["detail"] and "'cart'" in answer.json()["detail"]


async def test_unknown_campaign_is_404(api: RunningApi) -> None:
    for method, path in [
        ("GET", "/v1/campaigns/nope"),
        ("GET", "/v1/campaigns/nope/versions/1"),
        ("POST", "/v1/campaigns/nope/activate"),
        ("POST", "/v1/campaigns/nope/pause"),
        ("POST", "/v1/campaigns/nope/archive"),
    ]:
        answer = await api.http.request(method, path, headers=ADMIN)
        assert answer.status_code == 404, (method, path)
        assert "nope" in answer.json()["detail"]
    await api.http.post("/v1/campaigns", json=CART, headers=ADMIN)
    no_version = await api.http.get("/v1/campaigns/cart/versions/7", headers=ADMIN)
    assert no_version.status_code == 404
    assert "no version 7" in no_version.json()["detail"]


async def test_status_transitions(api_db: RunningApi) -> None:
    http = api_db.http
    await http.post("/v1/campaigns", json=CART, headers=ADMIN)

    async def move(action: str) -> tuple[int, Any]:
        answer = await http.post(f"/v1/campaigns/cart/{action}", headers=ADMIN)
        return answer.status_code, answer.json()

    code, body = await move("pause")
    assert code == 409 and "draft" in body["detail"]
    assert (await move("activate"))[1]["status"] == "active"
    assert (await move("activate"))[0] == 200  # the same status is a no-op
    assert (await move("pause"))[1]["status"] == "paused"

    paused = (await http.get("/v1/campaigns", params={"status": "paused"}, headers=ADMIN)).json()
    active = (await http.get("/v1/campaigns", params={"status": "active"}, headers=ADMIN)).json()
    assert (paused["count"], active["count"]) == (1, 0)
    bad_filter = await http.get("/v1/campaigns", params={"status": "sleepy"}, headers=ADMIN)
    assert bad_filter.status_code == 422

    assert (await move("activate"))[1]["status"] == "active"
    assert (await move("archive"))[1]["status"] == "archived"
    code, body = await move("activate")
    assert code == 409 and "archived" in body["detail"]
    # An archived campaign takes no new versions.
    edited = await http.post("/v1/campaigns", json=changed(CART, name="Again"), headers=ADMIN)
    assert edited.status_code == 409
    assert "archived" in edited.json()["detail"]


async def test_activating_reloads_the_routing_index_at_once(api: RunningApi) -> None:
    campaigns = api.services.campaigns
    await api.http.post("/v1/campaigns", json=CART, headers=ADMIN)
    assert ("track", "Product Added") not in campaigns.index.entries
    # Reactions (goals, exits, wait_for) count from the first saved version.
    assert campaigns.index.reactions["Order Completed"] == {"cart"}
    await api.http.post("/v1/campaigns/cart/activate", headers=ADMIN)
    [entry] = campaigns.index.entries[("track", "Product Added")]
    assert (entry.campaign_id, entry.version) == ("cart", 1)
    await api.http.post("/v1/campaigns/cart/pause", headers=ADMIN)
    assert ("track", "Product Added") not in campaigns.index.entries
    assert "Order Completed" in campaigns.index.reactions


async def test_another_api_process_sees_campaign_changes(api: RunningApi) -> None:
    """Two API processes on one database: a change made through one reaches the other's
    routing index within `campaign_refresh_seconds`, without a restart."""
    async with running_api(api.settings) as other:
        await api.http.post("/v1/campaigns", json=CART, headers=ADMIN)
        await api.http.post("/v1/campaigns/cart/activate", headers=ADMIN)

        async def other_sees(active: bool) -> bool:
            index = other.services.campaigns.index
            assert (("track", "Product Added") in index.entries) is active
            return True

        await eventually(lambda: other_sees(True), timeout=10)
        await api.http.post("/v1/campaigns/cart/pause", headers=ADMIN)
        await eventually(lambda: other_sees(False), timeout=10)


async def test_journeys_need_temporal(api: RunningApi) -> None:
    answer = await api.http.get("/v1/journeys/cart/ada", headers=ADMIN)
    assert answer.status_code == 503
    assert "Temporal is unreachable" in answer.json()["detail"]


# -- hostile definitions and paths: a 4xx naming the field, on SQLite and PostgreSQL --------

YAML = {**ADMIN, "Content-Type": "application/yaml"}
JSON = {**ADMIN, "Content-Type": "application/json"}
HUGE = "1" * 5000
BODY = "body: Your cart misses you"
CONDITION = (
    "entry:\n  event: Product Added\n  conditions:\n    - {path: properties.n, op: eq, value: "
)
BOMB = "".join(
    f"      {chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}' if i else 'x'] * 10)}]\n"
    for i in range(9)
)
"""YAML aliases in a template's data: nine lines that stand for 10^9 values."""
CART_WITH_CONDITION = changed(
    CART,
    entry={
        "event": "Product Added",
        "conditions": [{"path": "properties.n", "op": "eq", "value": "VALUE"}],
    },
)


def cart_json(placeholder: str, raw: str, base: dict[str, Any] = CART) -> str:
    """A campaign as JSON text, with raw JSON (NaN, 5000 digits, escapes) for one string."""
    return json.dumps(base).replace(json.dumps(placeholder), raw)


def cart_yaml(old: str, new: str) -> str:
    """CART_YAML with one part changed."""
    assert old in CART_YAML
    return CART_YAML.replace(old, new)


ENTRY = "entry:\n  event: Product Added\n"
HOSTILE_DEFINITIONS: list[tuple[dict[str, str], str, str]] = [
    # (headers, body, how the first problem starts)
    (
        JSON,
        cart_json("VALUE", HUGE, CART_WITH_CONDITION),
        "entry.conditions[0].value: must be an integer from",
    ),
    (
        JSON,
        cart_json("VALUE", "-9223372036854775809", CART_WITH_CONDITION),
        "entry.conditions[0].value: must be an integer from",
    ),
    (JSON, cart_json("VALUE", "[Infinity]", CART_WITH_CONDITION), "entry.conditions[0].value[0]"),
    (YAML, cart_yaml(ENTRY, CONDITION + HUGE + "}\n"), "entry.conditions[0].value: must be an"),
    (YAML, cart_yaml(ENTRY, CONDITION + "0x" + "f" * 40 + "}\n"), "entry.conditions[0].value: "),
    (YAML, cart_yaml(ENTRY, CONDITION + ".nan}\n"), "entry.conditions[0].value: must be a finite"),
    (JSON, "[" * 100_000 + "]" * 100_000, "the definition nests deeper than 64 levels"),
    (YAML, "a: " + "[" * 10_000 + "]" * 10_000, "the definition nests deeper than 64 levels"),
    (
        JSON,
        cart_json("Your cart misses you", '"x", "data": {"x": ' + "[" * 70 + "]" * 70 + "}"),
        "templates.reminder.data.x" + "[0]" * 60 + ": nests deeper than 64 levels",
    ),
    (
        JSON,
        cart_json("Your cart misses you", r'"a\u0000"'),
        r"templates.reminder.body: contains NUL",
    ),
    (
        JSON,
        cart_json("Cart abandonment", r'"a\ud800"'),
        r"name: contains a lone surrogate (\ud800)",
    ),
    (YAML, cart_yaml(BODY, 'body: "a\\0"'), r"templates.reminder.body: contains NUL (\u0000)"),
    (
        YAML,
        cart_yaml("name: Cart abandonment", 'name: "\\ud800"'),
        r"name: contains a lone surrogate",
    ),
    (YAML, cart_yaml(BODY, BODY + '\n    data: {"k\\0": 1}'), r"templates.reminder.data.k\u0000"),
    (YAML, cart_yaml(BODY, BODY + "\n    data: {x: !!binary /w==}"), "templates.reminder.data.x"),
    (YAML, cart_yaml(BODY, BODY + "\n    data:\n" + BOMB), "has more than 100000 values"),
]


async def test_hostile_definitions_are_422_naming_the_field(api_db: RunningApi) -> None:
    for headers, body, problem in HOSTILE_DEFINITIONS:
        answer = await api_db.http.post("/v1/campaigns", content=body.encode(), headers=headers)
        assert answer.status_code == 422, (body[:80], answer.text[:300])
        first = answer.json()["detail"]["problems"][0]
        assert first.startswith(problem), (body[:80], first)
    assert (await api_db.http.get("/v1/campaigns", headers=ADMIN)).json()["count"] == 0


async def test_numbers_and_ids_in_paths_are_bounded(api_db: RunningApi) -> None:
    await api_db.http.post("/v1/campaigns", json=CART, headers=ADMIN)
    for number in ("3619885528510541319897088", "2147483648", "0", "-1"):
        answer = await api_db.http.get(f"/v1/campaigns/cart/versions/{number}", headers=ADMIN)
        assert answer.status_code == 422, (number, answer.text)
        [error] = answer.json()["detail"]
        assert error["loc"] == ["path", "version"]
    largest = await api_db.http.get("/v1/campaigns/cart/versions/2147483647", headers=ADMIN)
    assert largest.status_code == 404
    for method, path in [
        ("GET", "/v1/campaigns/a%00b"),
        ("GET", "/v1/campaigns/a%00b/stats"),
        ("GET", "/v1/campaigns/a%00b/versions/1"),
        ("POST", "/v1/campaigns/a%00b/activate"),
        ("PUT", "/v1/campaigns/a%00b"),
        ("POST", "/v1/campaigns/a%00b/preview"),
        ("GET", "/v1/campaigns/" + "x" * 64),
    ]:
        answer = await api_db.http.request(method, path, headers=ADMIN, json=CART)
        assert answer.status_code == 422, (method, path, answer.text)
        assert answer.json()["detail"][0]["loc"] == ["path", "campaign_id"]
