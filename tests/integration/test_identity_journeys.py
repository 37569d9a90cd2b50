"""End to end, one identity per person: an anonymous visitor's journey hears the person once
they log in, reads the person's profile, and counts against the person's caps; a changed
trait starts a journey. The dev server, the real worker, the API over HTTP, SQLite and
PostgreSQL, a webhook provider double on 127.0.0.1.

No test waits for a journey timer: the cart's 24 h wait is only ever cut short by the
order, and the other journeys wait for events the test sends."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.journey import JourneyState, JourneyStatus
from temporal.servers import DevServer
from tests.fixtures.api import ADMIN, RunningApi, Stack, eventually, webhook_stack
from tests.fixtures.servers import WebhookReceiver

CART = {
    "id": "cart-anon",
    "name": "Cart (anonymous, then logged in)",
    "entry": {"event": "Product Added"},
    "goals": [{"event": "Order Completed"}],
    "steps": [
        {"id": "ack", "type": "send", "channel": "webhook", "template": "ack", "next": "wait"},
        {"id": "wait", "type": "wait", "duration": "24h", "next": "remind"},
        {"id": "remind", "type": "send", "channel": "webhook", "template": "remind"},
    ],
    "templates": {
        "ack": {"body": "{{ event.properties.name }} is in your cart"},
        "remind": {"body": "Your cart misses you"},
    },
}

CHECKOUT = {
    "id": "checkout-help",
    "name": "Checkout help",
    "entry": {"event": "Product Added"},
    "steps": [
        {
            "id": "wait_checkout",
            "type": "wait_for",
            "event": "Checkout Started",
            "timeout": "24h",
            "on_event": "help",
        },
        {"id": "help", "type": "send", "channel": "webhook", "template": "help"},
    ],
    "templates": {
        "help": {
            "subject": "Hi {{ traits.first_name | default('there') }}",
            "body": "Need help, {{ traits.email | default('nobody') }}? ({{ user_id }})",
        }
    },
}

WELCOME = {
    "id": "welcome-person",
    "name": "Welcome",
    "entry": {"event": "Signed Up"},
    "steps": [{"id": "hello", "type": "send", "channel": "webhook", "template": "hello"}],
    "templates": {"hello": {"body": "Welcome"}},
}

MOVED = {
    "id": "moved-berlin",
    "name": "Moved to Berlin",
    "entry": {"trait": "city", "conditions": [{"path": "properties.new", "value": "Berlin"}]},
    "steps": [{"id": "offer", "type": "send", "channel": "webhook", "template": "offer"}],
    "templates": {
        "offer": {
            "body": "From {{ event.properties.old }} to {{ event.properties.new }}: "
            "new fridge, {{ traits.first_name }}?"
        }
    },
}


@pytest.fixture
async def cart(
    database_url: str, dev_server: DevServer, webhook_receiver: WebhookReceiver
) -> AsyncIterator[Stack]:
    async with webhook_stack(database_url, dev_server, webhook_receiver, CART) as stack:
        yield stack


async def post(api: RunningApi, path: str, body: dict[str, Any]) -> None:
    response = await api.post(path, {"messageId": f"m-{uuid.uuid4()}", **body})
    assert response.status_code == 200, response.text


async def journey(api: RunningApi, campaign: str, user: str) -> JourneyState:
    response = await api.http.get(f"/v1/journeys/{campaign}/{user}", headers=ADMIN)
    assert response.status_code == 200, response.text
    return JourneyState.model_validate(response.json())


async def received(receiver: WebhookReceiver, n: int) -> list[dict[str, Any]]:
    assert len(receiver.received) >= n
    return [hit.json()["data"] for hit in receiver.received]


async def settled(api: RunningApi) -> bool:
    """Every event the relay had is routed or ignored."""
    assert all(e.status != "pending" for e in await api.events())
    return True


async def test_an_anonymous_cart_converts_when_the_person_pays_logged_in(cart: Stack) -> None:
    api, receiver = cart.api, cart.receiver
    visitor, user = f"v-{uuid.uuid4().hex[:8]}", f"real-{uuid.uuid4().hex[:8]}"
    anon = f"anon:{visitor}"

    await post(
        api,
        "/v1/track",
        {"anonymousId": visitor, "event": "Product Added", "properties": {"name": "Umbrella"}},
    )

    async def waiting() -> JourneyState:
        state = await journey(api, "cart-anon", anon)
        assert state.current_step == "wait"
        return state

    await eventually(waiting, timeout=30)
    [ack] = await eventually(lambda: received(receiver, 1))
    assert ack["user_id"] == anon and ack["body"] == "Umbrella is in your cart"

    # The visitor logs in, then pays with only the userId on the event.
    await post(api, "/v1/identify", {"userId": user, "anonymousId": visitor})
    await post(api, "/v1/track", {"userId": user, "event": "Order Completed"})

    async def converted() -> JourneyState:
        state = await journey(api, "cart-anon", anon)
        assert state.status is JourneyStatus.converted, state
        return state

    await eventually(converted, timeout=30)
    await eventually(lambda: settled(api))
    # One journey for the person, the one the visitor started; no reminder.
    assert [(e.user_id, e.status) for e in await api.entries()] == [(anon, "converted")]
    # Asked for by the user id, the person's journey is the visitor's.
    found = await api.http.get(f"/v1/journeys/cart-anon/{user}", headers=ADMIN)
    assert found.status_code == 200 and found.json()["status"] == "converted"
    assert (await api.http.get("/v1/journeys/cart-anon/nobody", headers=ADMIN)).status_code == 404
    assert [hit["body"] for hit in await received(receiver, 1)] == ["Umbrella is in your cart"]


async def test_a_logged_in_add_joins_the_visitors_journey(cart: Stack) -> None:
    api = cart.api
    visitor, user = f"v-{uuid.uuid4().hex[:8]}", f"real-{uuid.uuid4().hex[:8]}"
    await post(api, "/v1/track", {"anonymousId": visitor, "event": "Product Added"})
    await eventually(lambda: journey(api, "cart-anon", f"anon:{visitor}"), timeout=30)
    await post(api, "/v1/identify", {"userId": user, "anonymousId": visitor})
    await post(api, "/v1/track", {"userId": user, "event": "Product Added"})

    async def heard() -> JourneyState:
        state = await journey(api, "cart-anon", f"anon:{visitor}")
        assert state.events_received == 1, state
        return state

    await eventually(heard)
    await eventually(lambda: settled(api))
    # The person still has one cart journey: none started under the user id.
    assert [e.user_id for e in await api.entries()] == [f"anon:{visitor}"]


async def test_a_visitors_journey_reads_the_persons_profile_and_caps(
    database_url: str, dev_server: DevServer, webhook_receiver: WebhookReceiver
) -> None:
    caps = [{"group": "marketing", "limit": 1, "window": "24h"}]
    async with webhook_stack(
        database_url, dev_server, webhook_receiver, CHECKOUT, caps=caps
    ) as stack:
        api, receiver = stack.api, stack.receiver
        await api.campaign(WELCOME)
        visitor, user = f"v-{uuid.uuid4().hex[:8]}", f"real-{uuid.uuid4().hex[:8]}"
        anon = f"anon:{visitor}"
        await post(api, "/v1/track", {"anonymousId": visitor, "event": "Product Added"})

        async def waiting() -> JourneyState:
            state = await journey(api, "checkout-help", anon)
            assert state.current_step == "wait_checkout"
            return state

        await eventually(waiting, timeout=30)
        await post(
            api,
            "/v1/identify",
            {
                "userId": user,
                "anonymousId": visitor,
                "traits": {"first_name": "Ada", "email": "ada@example.com"},
            },
        )
        # An event of the user reaches the journey the visitor started, which sends with
        # the person's profile: the traits were given after the journey began.
        await post(api, "/v1/track", {"userId": user, "event": "Checkout Started"})
        [help_] = await eventually(lambda: received(receiver, 1), timeout=30)
        assert help_["subject"] == "Hi Ada"
        assert help_["body"] == f"Need help, ada@example.com? ({user})"
        assert help_["user_id"] == user

        # The person's next marketing message, from another journey under the user id,
        # meets the cap of one a day: the visitor's send counted for the person.
        await post(api, "/v1/track", {"userId": user, "event": "Signed Up"})

        async def suppressed() -> JourneyState:
            state = await journey(api, "welcome-person", user)
            assert state.status is not JourneyStatus.running, state
            [hello] = [h for h in state.history if h.step_id == "hello"]
            assert hello.outcome == "suppressed: cap: 1 marketing message per 24h", hello
            return state

        await eventually(suppressed, timeout=30)
        assert len(receiver.received) == 1


async def test_a_changed_trait_starts_a_journey(
    database_url: str, dev_server: DevServer, webhook_receiver: WebhookReceiver
) -> None:
    async with webhook_stack(database_url, dev_server, webhook_receiver, MOVED) as stack:
        api, receiver = stack.api, stack.receiver
        user = f"mo-{uuid.uuid4().hex[:8]}"
        await post(api, "/v1/identify", {"userId": user, "traits": {"city": "Paris"}})
        await eventually(lambda: settled(api), timeout=30)
        assert receiver.received == []  # Paris is not Berlin: no journey

        await post(
            api, "/v1/identify", {"userId": user, "traits": {"city": "Berlin", "first_name": "Mo"}}
        )
        [offer] = await eventually(lambda: received(receiver, 1), timeout=30)
        assert offer["user_id"] == user
        assert offer["body"] == "From Paris to Berlin: new fridge, Mo?"
        await eventually(lambda: settled(api))
        assert [(e.campaign_id, e.user_id) for e in await api.entries()] == [("moved-berlin", user)]
