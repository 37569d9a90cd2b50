"""tests.api: one identity per person at ingestion — identify, alias and any message with both
ids link them, traits land in the person's profile, and a watched trait's change is written
as a `Trait Changed` event in the same transaction. Temporal is unreachable here: the
outbox is read as ingestion left it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from api.ingestion import links, trait_changed_events
from core.events import TRAIT_CHANGED, Alias, Identify, Track
from core.journey import journey_id
from core.routing import INTERNAL_TYPE
from store.events import NewEvent
from store.identities import person_ids
from tests.api.doubles import FINISH_EVENT
from tests.fixtures.api import RoutingApi, RunningApi, eventually

MOVED = {
    "id": "moved-house",
    "name": "Moved house",
    "entry": {"trait": "city", "conditions": [{"path": "properties.new", "value": "Berlin"}]},
    "steps": [{"id": "hello", "type": "send", "channel": "sandbox", "template": "hello"}],
    "templates": {"hello": {"body": "Welcome to {{ event.properties.new }}"}},
}
WHEN = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


async def send(api: RunningApi, path: str, body: dict[str, Any]) -> None:
    response = await api.post(path, body)
    assert response.status_code == 200, response.text


async def person(api: RunningApi, user_id: str) -> list[str]:
    async with api.services.sessions() as session:
        return await person_ids(session, user_id)


async def trait_events(api: RunningApi) -> list[tuple[str, dict[str, Any]]]:
    return [
        (e.user_id, e.payload["properties"])
        for e in await api.events()
        if (e.type, e.name) == (INTERNAL_TYPE, TRAIT_CHANGED)
    ]


# -- which ids a message links (plain values) ------------------------------------------------


def test_a_message_with_both_ids_links_the_visitor() -> None:
    identify = Identify.model_validate({"userId": "real-9", "anonymousId": "v-1"})
    track = Track.model_validate({"userId": "real-9", "anonymousId": "v-1", "event": "X"})
    assert links(identify) == links(track) == (("anon:v-1", "real-9"),)
    assert links(Track.model_validate({"anonymousId": "v-1", "event": "X"})) == ()
    assert links(Identify.model_validate({"userId": "real-9"})) == ()


def test_an_alias_links_its_previous_id() -> None:
    browser = Alias.model_validate({"userId": "u2", "anonymousId": "v-1", "previousId": "v-1"})
    assert links(browser) == (("anon:v-1", "u2"),)
    server = Alias.model_validate({"userId": "u2", "previousId": "u1"})
    assert links(server) == (("u1", "u2"), ("anon:u1", "u2"))


def test_trait_changed_events_are_named_by_their_cause() -> None:
    changes = {"city": (None, "Berlin"), "plan": ("free", "pro"), "same": (1, 1)}
    events = trait_changed_events(
        message_id="m-1", timestamp=WHEN, user_id="ada", changes=changes, watched=None
    )
    assert [e.payload["properties"] for e in events] == [
        {"trait": "city", "old": None, "new": "Berlin"},
        {"trait": "plan", "old": "free", "new": "pro"},
    ]
    [city, _] = events
    digest = hashlib.sha256(b"m-1\ncity").hexdigest()[:40]
    assert city == NewEvent(
        message_id=f"nudge:trait:{digest}",
        type=INTERNAL_TYPE,
        name=TRAIT_CHANGED,
        user_id="ada",
        timestamp=WHEN,
        payload={
            "type": INTERNAL_TYPE,
            "event": TRAIT_CHANGED,
            "userId": "ada",
            "messageId": f"nudge:trait:{digest}",
            "timestamp": WHEN.isoformat(),
            "properties": {"trait": "city", "old": None, "new": "Berlin"},
        },
    )
    watched = trait_changed_events(
        message_id="m-1",
        timestamp=WHEN,
        user_id="ada",
        changes=changes,
        watched=frozenset({"plan"}),
    )
    assert [e.payload["properties"]["trait"] for e in watched] == ["plan"]


# -- over HTTP, on SQLite and PostgreSQL -------------------------------------------------------


async def test_identify_links_the_visitor_and_merges_the_profiles(api_db: RunningApi) -> None:
    await send(api_db, "/v1/identify", {"anonymousId": "v-1", "traits": {"city": "Paris"}})
    await send(api_db, "/v1/track", {"anonymousId": "v-1", "event": "Product Added"})
    await send(api_db, "/v1/identify", {"userId": "real-9", "traits": {"email": "ada@example.com"}})
    assert await person(api_db, "anon:v-1") == ["anon:v-1"]

    await send(
        api_db,
        "/v1/identify",
        {"userId": "real-9", "anonymousId": "v-1", "traits": {"first_name": "Ada"}},
    )
    assert await person(api_db, "anon:v-1") == ["real-9", "anon:v-1"]
    assert await api_db.traits("real-9") == {
        "email": "ada@example.com",
        "first_name": "Ada",
        "city": "Paris",
    }
    assert await api_db.traits("anon:v-1") is None
    # Events keep the id they came with; the router resolves the person.
    assert [e.user_id for e in await api_db.events() if e.type != INTERNAL_TYPE] == [
        "anon:v-1",
        "anon:v-1",
        "real-9",
        "real-9",
    ]

    # Later traits of the visitor's device reach the person's profile.
    await send(
        api_db,
        "/v1/track",
        {"anonymousId": "v-1", "event": "Page Seen", "context": {"traits": {"plan": "pro"}}},
    )
    assert (await api_db.traits("real-9") or {})["plan"] == "pro"
    assert await api_db.traits("anon:v-1") is None


async def test_alias_links_a_former_user_id(api_db: RunningApi) -> None:
    await send(api_db, "/v1/identify", {"userId": "old-id", "traits": {"city": "Rome"}})
    await send(api_db, "/v1/identify", {"userId": "new-id", "anonymousId": "v-7"})
    await send(api_db, "/v1/alias", {"userId": "new-id", "previousId": "old-id"})
    assert await person(api_db, "old-id") == ["new-id", "anon:old-id", "anon:v-7", "old-id"]
    assert await api_db.traits("new-id") == {"city": "Rome"}


async def test_a_watched_trait_change_is_written_once_with_old_and_new(
    api_db: RunningApi,
) -> None:
    await api_db.campaign(MOVED)
    first = {
        "userId": "ada",
        "messageId": "i-1",
        "timestamp": WHEN.isoformat(),
        "traits": {"city": "Paris", "plan": "free"},
    }
    await send(api_db, "/v1/identify", first)
    assert await trait_events(api_db) == [("ada", {"trait": "city", "old": None, "new": "Paris"})]
    moved = await api_db.event("nudge:trait:" + hashlib.sha256(b"i-1\ncity").hexdigest()[:40])
    # In the outbox at the identify's time; the relay may have routed it already (Paris is
    # not Berlin: it starts nothing), or not yet.
    assert moved.timestamp == WHEN and moved.status in ("pending", "ignored")

    # The same identify again (an SDK retry), and one that changes nothing watched.
    await send(api_db, "/v1/identify", first)
    await send(
        api_db,
        "/v1/identify",
        {"userId": "ada", "messageId": "i-2", "traits": {"city": "Paris", "plan": "pro"}},
    )
    assert len(await trait_events(api_db)) == 1

    await send(
        api_db, "/v1/identify", {"userId": "ada", "messageId": "i-3", "traits": {"city": "Berlin"}}
    )
    assert await trait_events(api_db) == [
        ("ada", {"trait": "city", "old": None, "new": "Paris"}),
        ("ada", {"trait": "city", "old": "Paris", "new": "Berlin"}),
    ]


async def test_a_trait_gained_by_a_link_changes_for_the_person(api_db: RunningApi) -> None:
    await api_db.campaign(MOVED)
    await send(api_db, "/v1/identify", {"anonymousId": "v-3", "traits": {"city": "Berlin"}})
    await send(
        api_db,
        "/v1/batch",
        {
            "batch": [
                {
                    "type": "identify",
                    "userId": "bo",
                    "anonymousId": "v-3",
                    "traits": {"city": "Oslo"},
                },
            ]
        },
    )
    # One event per trait per message: from the person's value before it to the one after.
    assert await trait_events(api_db) == [
        ("anon:v-3", {"trait": "city", "old": None, "new": "Berlin"}),
        ("bo", {"trait": "city", "old": None, "new": "Oslo"}),
    ]
    assert await api_db.traits("bo") == {"city": "Oslo"}


# -- routing by person, on a dev server with the journey double --------------------------------

ONCE = {
    "id": "welcome-once",
    "name": "Welcome, once",
    "entry": {
        "event": "Signed Up",
        "conditions": [{"path": "traits.plan", "op": "eq", "value": "pro"}],
    },
    "re_entry": "once",
    "exits": [{"event": FINISH_EVENT}],
    "steps": [{"id": "hello", "type": "send", "channel": "sandbox", "template": "hello"}],
    "templates": {"hello": {"body": "Welcome!"}},
}


async def settled(api: RunningApi, *message_ids: str) -> dict[str, str]:
    async def check() -> dict[str, str]:
        now = {e.message_id: e.status for e in await api.events()}
        assert all(now.get(m) not in (None, "pending") for m in message_ids), now
        return {m: now[m] for m in message_ids}

    return await eventually(check)


async def test_re_entry_once_counts_every_id_of_the_person(routing_api: RoutingApi) -> None:
    api, client = routing_api, routing_api.temporal()
    await api.campaign(ONCE)
    await send(api, "/v1/identify", {"anonymousId": "v-5", "traits": {"plan": "pro"}})
    await send(api, "/v1/track", {"anonymousId": "v-5", "event": "Signed Up", "messageId": "s-1"})
    assert await settled(api, "s-1") == {"s-1": "routed"}
    handle = client.get_workflow_handle(journey_id("welcome-once", "anon:v-5"))
    await send(api, "/v1/track", {"anonymousId": "v-5", "event": FINISH_EVENT, "messageId": "f-1"})
    await handle.result()

    await send(api, "/v1/identify", {"userId": "cy", "anonymousId": "v-5"})
    await send(api, "/v1/track", {"userId": "cy", "event": "Signed Up", "messageId": "s-2"})
    # The person entered once already, as a visitor; their profile (merged) says pro.
    assert await settled(api, "s-2") == {"s-2": "ignored"}
    assert [(e.user_id, e.entry_message_id) for e in await api.entries()] == [("anon:v-5", "s-1")]


async def test_a_visitors_event_after_login_starts_under_the_person(
    routing_api: RoutingApi,
) -> None:
    api, client = routing_api, routing_api.temporal()
    await api.campaign({**ONCE, "id": "welcome-person", "re_entry": "after_exit"})
    # The plan is the user's trait: the visitor's event reads the person's profile.
    await send(
        api, "/v1/identify", {"userId": "dee", "anonymousId": "v-6", "traits": {"plan": "pro"}}
    )
    await send(api, "/v1/track", {"anonymousId": "v-6", "event": "Signed Up", "messageId": "s-1"})
    assert await settled(api, "s-1") == {"s-1": "routed"}
    assert [e.user_id for e in await api.entries()] == ["dee"]
    handle = client.get_workflow_handle(journey_id("welcome-person", "dee"))
    started = await handle.describe()
    assert started.status is not None
    await send(api, "/v1/track", {"anonymousId": "v-6", "event": FINISH_EVENT, "messageId": "f-1"})
    await handle.result()
