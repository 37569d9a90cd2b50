"""End to end on real parts (the dev server, the real worker and activities, the API over
HTTP, SQLite or PostgreSQL, a webhook provider double): a campaign with a holdout and a
two-variant split. The holdout gets no message and its orders are counted; each variant's
users get their variant's message; orders placed after the journeys ended are credited to
the messages that came before them, and the stats API adds it all up."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from core.definition import parse_campaign
from core.experiments import HOLDOUT, choose_variant, in_holdout
from temporal.servers import DevServer
from tests.fixtures.api import ADMIN, WRITE_KEY, Stack, eventually, nonzero, webhook_stack
from tests.fixtures.servers import WebhookReceiver

CAMPAIGN = {
    "id": "ab-e2e",
    "name": "Reminder A/B with a holdout",
    "entry": {"event": "Product Added"},
    "goals": [{"event": "Order Completed"}],
    "holdout": 0.3,
    "attribution": {"window": "1d", "after": "delivered"},
    "steps": [
        {
            "id": "split",
            "type": "split",
            "variants": [
                {"name": "plain", "weight": 1, "next": "remind_plain"},
                {"name": "coupon", "weight": 1, "next": "remind_coupon"},
            ],
        },
        {"id": "remind_plain", "type": "send", "channel": "webhook", "template": "plain"},
        {"id": "remind_coupon", "type": "send", "channel": "webhook", "template": "coupon"},
    ],
    "templates": {"plain": {"body": "come back"}, "coupon": {"body": "10% off"}},
}
USERS = 24


@pytest.fixture
async def stack(
    database_url: str, dev_server: DevServer, webhook_receiver: WebhookReceiver
) -> AsyncIterator[Stack]:
    async with webhook_stack(database_url, dev_server, webhook_receiver, CAMPAIGN) as stack:
        yield stack


def group_of(user: str) -> str:
    definition = parse_campaign(CAMPAIGN)
    if in_holdout(definition.id, user, definition.holdout):
        return HOLDOUT
    split = definition.steps[0]
    return choose_variant(definition.id, split.id, user, split.variants).name  # type: ignore[union-attr]


async def test_holdout_gets_nothing_and_every_group_counts_its_orders(stack: Stack) -> None:
    api, receiver = stack.api, stack.receiver
    run = uuid.uuid4().hex[:6]
    users = [f"u{i}-{run}" for i in range(USERS)]
    groups = {user: group_of(user) for user in users}
    assert set(groups.values()) == {HOLDOUT, "plain", "coupon"}, groups  # all three present
    batch = [
        {"type": "track", "userId": user, "event": "Product Added", "messageId": f"add-{user}"}
        for user in users
    ]
    r = await api.http.post("/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
    assert r.status_code == 200, r.text

    async def all_ended() -> dict:
        r = await api.http.get("/v1/campaigns/ab-e2e/stats", headers=ADMIN)
        stats = r.json()
        assert nonzero(stats["journeys"]) == {"completed": USERS}, stats["journeys"]
        return stats

    await eventually(all_ended, timeout=60)
    # Only users outside the holdout got a message, their variant's.
    got = {hit.json()["data"]["user_id"]: hit.json()["data"]["body"] for hit in receiver.received}
    expected = {
        user: "10% off" if group == "coupon" else "come back"
        for user, group in groups.items()
        if group != HOLDOUT
    }
    assert got == expected

    # Everyone orders, after the journeys ended: the relay credits each order.
    orders = [
        {
            "type": "track",
            "userId": user,
            "event": "Order Completed",
            "messageId": f"order-{user}",
            "properties": {"revenue": 10},
        }
        for user in users
    ]
    r = await api.http.post("/v1/batch", json={"batch": orders}, auth=(WRITE_KEY, ""))
    assert r.status_code == 200, r.text
    sizes = Counter(groups.values())

    async def credited() -> dict:
        stats = (await api.http.get("/v1/campaigns/ab-e2e/stats", headers=ADMIN)).json()
        assert stats["funnel"]["converted"] == USERS, stats["funnel"]
        return stats

    stats = await eventually(credited, timeout=30)
    funnel = stats["funnel"]
    assert funnel["entered"] == USERS and funnel["revenue"] == 10 * USERS
    assert funnel["sent"] == USERS - sizes[HOLDOUT] and funnel["held_out"] == sizes[HOLDOUT]
    by_group = {g["group"]: g for g in stats["groups"]}
    assert by_group[HOLDOUT]["funnel"]["entered"] == sizes[HOLDOUT]
    assert by_group[HOLDOUT]["funnel"]["converted"] == sizes[HOLDOUT]
    assert by_group[HOLDOUT]["funnel"]["sent"] == 0
    for variant in ("plain", "coupon"):
        found = by_group[variant]["funnel"]
        assert (found["entered"], found["sent"], found["converted"]) == (sizes[variant],) * 3
        assert {lift["baseline"] for lift in by_group[variant]["lift"]} == (
            {HOLDOUT} if variant == "plain" else {HOLDOUT, "plain"}
        )
    messaged = by_group["messaged"]
    assert messaged["funnel"]["entered"] == USERS - sizes[HOLDOUT]
    assert [lift["verdict"] for lift in messaged["lift"]] == ["collecting data"]
    # Second orders: each message is credited once, so nothing more is counted.
    again = [{**order, "messageId": f"again-{order['userId']}"} for order in orders]
    r = await api.http.post("/v1/batch", json={"batch": again}, auth=(WRITE_KEY, ""))
    assert r.status_code == 200, r.text

    async def taken_in() -> bool:
        pending = [
            e
            for e in await api.events()
            if e.message_id.startswith("again-") and e.status == "pending"
        ]
        assert pending == []
        return True

    await eventually(taken_in, timeout=30)
    stats = (await api.http.get("/v1/campaigns/ab-e2e/stats", headers=ADMIN)).json()
    assert (stats["funnel"]["converted"], stats["funnel"]["revenue"]) == (USERS, 10 * USERS)
