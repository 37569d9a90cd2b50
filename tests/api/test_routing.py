"""tests.api: routing events to journeys on a real dev server, with a test double of `journey`.

The double (tests/api/doubles.py) stands in for the journey; what the router sent, and in
which order, is read from the journey's history on the server (`received`), not from the
double.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import uuid
from typing import Any

from sqlalchemy import update
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from api.client import NudgeClient, NudgeClientError
from core.events import JourneyEvent
from core.journey import QUERY_STATE, SIGNAL_EVENT, JourneyInput, JourneyState, journey_id
from store.models import Event
from temporal import search_attributes
from temporal.servers import DevServerOptions, dev_server, free_port
from tests.api.doubles import FINISH_EVENT, RecordingJourney
from tests.fixtures.api import (
    ADMIN,
    ADMIN_TOKEN,
    WRITE_KEY,
    RoutingApi,
    RunningApi,
    eventually,
    make_settings,
    running_api,
)

CART: dict[str, Any] = {
    "id": "cart",
    "name": "Cart abandonment",
    "entry": {
        "event": "Product Added",
        "conditions": [{"path": "properties.price", "op": "gt", "value": 0}],
    },
    "goals": [{"event": "Order Completed"}],
    "exits": [{"event": FINISH_EVENT}],
    "steps": [
        {
            "id": "await-order",
            "type": "wait_for",
            "event": "Checkout Started",
            "timeout": "24h",
            "on_timeout": "remind",
        },
        {"id": "remind", "type": "send", "channel": "sandbox", "template": "reminder"},
    ],
    "templates": {"reminder": {"body": "Your cart misses you"}},
}

WELCOME: dict[str, Any] = {
    "id": "welcome",
    "name": "Welcome",
    "entry": {
        "event": "Signed Up",
        "conditions": [{"path": "traits.plan", "op": "eq", "value": "pro"}],
    },
    "re_entry": "once",
    "exits": [{"event": FINISH_EVENT}],
    "steps": [{"id": "hello", "type": "send", "channel": "sandbox", "template": "hello"}],
    "templates": {"hello": {"body": "Welcome!"}},
}


async def received(client: Client, campaign_id: str, user_id: str) -> list[JourneyEvent]:
    """Every `event` signal Temporal recorded for the journey's latest run, in order: what
    the router sent, read from the server's history, not from the double's own account."""
    handle = client.get_workflow_handle(journey_id(campaign_id, user_id))
    history = await handle.fetch_history()
    converter = client.data_converter
    events: list[JourneyEvent] = []
    for event in history.events:
        if event.HasField("workflow_execution_signaled_event_attributes"):
            signal = event.workflow_execution_signaled_event_attributes
            if signal.signal_name == SIGNAL_EVENT:
                [decoded] = await converter.decode(signal.input.payloads, [JourneyEvent])
                events.append(decoded)
    return events


async def statuses(api: RunningApi) -> dict[str, str]:
    return {e.message_id: e.status for e in await api.events()}


async def settled(api: RunningApi, *message_ids: str) -> dict[str, str]:
    """Wait until these events left the outbox; their statuses."""

    async def check() -> dict[str, str]:
        now = await statuses(api)
        assert all(now.get(m) not in (None, "pending") for m in message_ids), now
        return {m: now[m] for m in message_ids}

    return await eventually(check)


async def test_entry_starts_a_journey_then_events_signal_it(routing_api: RoutingApi) -> None:
    api, client = routing_api, routing_api.temporal()
    await api.campaign(CART)
    await api.track("ada", "Product Added", messageId="e-1", properties={"price": 10})
    assert await settled(api, "e-1") == {"e-1": "routed"}

    handle = client.get_workflow_handle(journey_id("cart", "ada"))
    description = await handle.describe()
    attributes = description.typed_search_attributes
    assert attributes.get(search_attributes.CAMPAIGN) == "cart"
    assert attributes.get(search_attributes.USER) == "ada"
    assert attributes.get(search_attributes.CAMPAIGN_VERSION) == 1
    assert attributes.get(search_attributes.STEP) == "await-order"
    assert await description.static_summary() == "Cart abandonment for ada"
    journey_input = await handle.query("input", result_type=JourneyInput)
    assert (journey_input.campaign_id, journey_input.campaign_version) == ("cart", 1)
    assert journey_input.entry_event.message_id == "e-1"
    assert journey_input.entry_event.properties == {"price": 10}
    assert journey_input.plan.start_step == "await-order"
    assert not hasattr(journey_input.plan, "templates")  # content stays out of history

    [entry] = await api.entries()
    assert (entry.campaign_id, entry.user_id, entry.entry_message_id) == ("cart", "ada", "e-1")
    assert entry.run_id == description.run_id

    # A step's event and a goal reach the running journey; a second entry event joins it.
    await api.track("ada", "Checkout Started", messageId="e-2")
    await api.track("ada", "Product Added", messageId="e-3", properties={"price": 5})
    await api.track("ada", "Order Completed", messageId="e-4")
    assert await settled(api, "e-2", "e-3", "e-4") == dict.fromkeys(("e-2", "e-3", "e-4"), "routed")
    names = [e.message_id for e in await received(client, "cart", "ada")]
    assert names == ["e-1", "e-2", "e-3", "e-4"]
    assert len(await api.entries()) == 1  # joining the running journey is no new entry

    # The journey over HTTP: its state (the query), then ended by an operator (the update).
    state = await api.http.get("/v1/journeys/cart/ada", headers=ADMIN)
    assert state.status_code == 200, state.text
    assert state.json()["status"] == "running"
    # The API answers with the journey's own query result, unchanged.
    queried = await handle.query(QUERY_STATE, result_type=JourneyState)
    assert JourneyState.model_validate(state.json()) == queried
    ended = await api.http.post(
        "/v1/journeys/cart/ada/exit", json={"reason": "support asked"}, headers=ADMIN
    )
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "exited"
    assert ended.json()["exit_reason"] == "operator: support asked"
    await handle.result()
    again = await api.http.post("/v1/journeys/cart/ada/exit", json={"reason": "x"}, headers=ADMIN)
    assert again.status_code == 409, again.text
    # A closed journey can still be read.
    closed = await api.http.get("/v1/journeys/cart/ada", headers=ADMIN)
    assert closed.status_code == 200 and closed.json()["status"] == "exited"

    # After the journey ended (re_entry: after_exit) the next entry event starts a new one.
    await api.track("ada", "Product Added", messageId="e-5", properties={"price": 1})
    await settled(api, "e-5")
    second = await client.get_workflow_handle(journey_id("cart", "ada")).describe()
    assert second.run_id != description.run_id
    assert second.status == WorkflowExecutionStatus.RUNNING
    assert [e.entry_message_id for e in await api.entries()] == ["e-1", "e-5"]


async def test_an_entry_event_routed_again_never_restarts_an_ended_journey(
    routing_api: RoutingApi,
) -> None:
    api, client = routing_api, routing_api.temporal()
    user = f"ada-{uuid.uuid4().hex[:8]}"  # the dev server is shared: a journey of our own
    await api.campaign(CART)
    await api.track(user, "Product Added", messageId="r-1", properties={"price": 10})
    await settled(api, "r-1")
    handle = client.get_workflow_handle(journey_id("cart", user))
    first = await handle.describe()
    await api.track(user, FINISH_EVENT, messageId="r-2")
    await settled(api, "r-2")
    await asyncio.wait_for(handle.result(), timeout=30)

    # The relay meets the entry event again (a crash before it was marked, a failed pass).
    async with api.services.sessions() as session:
        await session.execute(
            update(Event).where(Event.message_id == "r-1").values(status="pending")
        )
        await session.commit()
    api.services.relay.wake()
    # It did start its journey: routed, as the first time, not `ignored`.
    assert await settled(api, "r-1") == {"r-1": "routed"}
    latest = await client.get_workflow_handle(journey_id("cart", user)).describe()
    assert latest.run_id == first.run_id  # no second journey from the same entry event
    assert latest.status == WorkflowExecutionStatus.COMPLETED
    assert [e.entry_message_id for e in await api.entries()] == ["r-1"]


async def test_an_event_tried_before_is_labelled_by_what_its_journey_heard(
    routing_api: RoutingApi,
) -> None:
    """An earlier attempt may have landed (its answer timed out, its relay died before
    settling it) and ended the journey — a goal or an exit does. Routed again, the event
    finds no journey running; it is `routed` when the journey's history has it, and
    `ignored` when it never got there."""
    api, client = routing_api, routing_api.temporal()
    user = f"gus-{uuid.uuid4().hex[:8]}"  # the dev server is shared: a journey of our own
    await api.campaign(CART)
    await api.track(user, "Product Added", messageId=f"{user}-1", properties={"price": 10})
    await api.track(user, FINISH_EVENT, messageId=f"{user}-2")
    assert await settled(api, f"{user}-2") == {f"{user}-2": "routed"}
    await asyncio.wait_for(client.get_workflow_handle(journey_id("cart", user)).result(), 30)
    await api.track(user, "Checkout Started", messageId=f"{user}-3")
    # The journey had ended: nobody heard it.
    assert await settled(api, f"{user}-3") == {f"{user}-3": "ignored"}

    # Both are met again, as after an attempt that may have landed.
    async with api.services.sessions() as session:
        await session.execute(
            update(Event)
            .where(Event.message_id.in_([f"{user}-2", f"{user}-3"]))
            .values(status="pending", attempts=1)
        )
        await session.commit()
    api.services.relay.wake()
    assert await settled(api, f"{user}-2", f"{user}-3") == {
        f"{user}-2": "routed",  # it ended the journey: it got there
        f"{user}-3": "ignored",
    }
    heard = [e.message_id for e in await received(client, "cart", user)]
    assert heard == [f"{user}-1", f"{user}-2"]  # and nothing was signalled twice


async def test_entry_conditions_decide(routing_api: RoutingApi) -> None:
    api, client = routing_api, routing_api.temporal()
    await api.campaign(CART)
    await api.track("bo", "Product Added", messageId="free", properties={"price": 0})
    await api.track("bo", "Checkout Started", messageId="later")
    # Conditions unmet and no journey running: nothing was sent, so both are ignored.
    assert await settled(api, "free", "later") == {"free": "ignored", "later": "ignored"}
    try:
        await client.get_workflow_handle(journey_id("cart", "bo")).describe()
    except RPCError as exc:
        assert exc.status == RPCStatusCode.NOT_FOUND
    else:
        raise AssertionError("no journey should exist for bo")


async def test_re_entry_once_and_traits_in_conditions(routing_api: RoutingApi) -> None:
    api, client = routing_api, routing_api.temporal()
    await api.campaign(WELCOME)
    await api.track("cy", "Signed Up", messageId="s-0")  # no profile yet: plan != pro
    assert await settled(api, "s-0") == {"s-0": "ignored"}

    answer = await api.post("/v1/identify", {"userId": "cy", "traits": {"plan": "pro"}})
    assert answer.status_code == 200
    await api.track("cy", "Signed Up", messageId="s-1")
    assert await settled(api, "s-1") == {"s-1": "routed"}
    handle = client.get_workflow_handle(journey_id("welcome", "cy"))
    first = await handle.describe()
    await api.track("cy", FINISH_EVENT, messageId="s-2")
    await handle.result()

    # once: the journey ended, and still a new sign-up does not start another.
    await api.track("cy", "Signed Up", messageId="s-3")
    assert (await settled(api, "s-3"))["s-3"] == "ignored"
    assert (await handle.describe()).run_id == first.run_id
    assert [e.entry_message_id for e in await api.entries()] == ["s-1"]


async def test_uninteresting_events_never_touch_temporal(api: RunningApi) -> None:
    """Temporal is unreachable here: events no campaign cares about are settled anyway."""
    await api.campaign(CART)
    await api.track("dee", "Newsletter Opened", messageId="n-1")
    await api.post("/v1/identify", {"userId": "dee", "traits": {"a": 1}, "messageId": "n-2"})
    await api.post("/v1/page", {"userId": "dee", "name": "Home", "messageId": "n-3"})
    assert await settled(api, "n-1", "n-2", "n-3") == dict.fromkeys(
        ("n-1", "n-2", "n-3"), "ignored"
    )
    assert all(e.attempts == 0 for e in await api.events())


async def test_temporal_down_then_back(sqlite_url: str) -> None:
    """Ingestion answers 200 while Temporal is down; events wait, in order per user; once
    a dev server is up at that address, the relay delivers them."""
    port = free_port()
    settings = make_settings(sqlite_url, f"127.0.0.1:{port}")
    async with running_api(settings) as api:
        await api.campaign(CART)
        sent = [
            ("ada", "Product Added", "a-1", {"price": 3}),
            ("bob", "Product Added", "b-1", {"price": 4}),
            ("ada", "Checkout Started", "a-2", {}),
            ("ada", "Order Completed", "a-3", {}),
            ("bob", "Newsletter Opened", "b-2", {}),
            ("bob", "Order Completed", "b-3", {}),
            ("cat", "Newsletter Opened", "c-1", {}),
        ]
        for user, name, message_id, properties in sent:
            await api.track(user, name, messageId=message_id, properties=properties)

        ready = await api.http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["database"] == "ok"
        assert "not connected" in ready.json()["temporal"]

        # Each pass stops calling Temporal at the first sign of the outage, and counts the
        # failed attempt on that event. A user's events wait behind their first one (even
        # b-2, which no campaign cares about); cat's uninteresting event is settled.
        await eventually(lambda: _attempted(api, "a-1"))
        await asyncio.sleep(5 * settings.relay_interval_seconds)
        now = await statuses(api)
        assert now.pop("c-1") == "ignored"
        assert set(now.values()) == {"pending"}
        events = {e.message_id: e for e in await api.events()}
        assert "not connected to Temporal" in (events["a-1"].last_error or "")
        assert events["a-2"].attempts == 0  # waiting behind a-1, not tried

        async with (
            dev_server(DevServerOptions(port=port)) as server,
            Worker(server.client, task_queue=settings.task_queue, workflows=[RecordingJourney]),
        ):
            ids = [m for _, _, m, _ in sent]
            assert await settled(api, *ids) == {
                **dict.fromkeys(ids, "routed"),
                "b-2": "ignored",
                "c-1": "ignored",
            }
            ada = [e.message_id for e in await received(server.client, "cart", "ada")]
            bob = [e.message_id for e in await received(server.client, "cart", "bob")]
            assert ada == ["a-1", "a-2", "a-3"]
            assert bob == ["b-1", "b-3"]
            assert (await api.http.get("/readyz")).status_code == 200
            assert len(await api.entries()) == 2


async def _attempted(api: RunningApi, *message_ids: str) -> bool:
    events = {e.message_id: e for e in await api.events()}
    assert all(events[m].attempts > 0 for m in message_ids), {
        m: events[m].attempts for m in message_ids
    }
    return True


async def test_the_client_drives_a_journey(routing_api: RoutingApi) -> None:
    definition = copy.deepcopy(CART)
    async with NudgeClient(routing_api.url, admin_token=ADMIN_TOKEN, write_key=WRITE_KEY) as nudge:
        applied = await nudge.apply_campaign(json.dumps(definition), activate=True)
        assert (applied["id"], applied["status"], applied["current_version"]) == (
            "cart",
            "active",
            1,
        )
        assert applied["new_version"] is True
        assert (await nudge.apply_campaign(json.dumps(definition)))["new_version"] is False
        assert [c["id"] for c in await nudge.list_campaigns(status="active")] == ["cart"]

        sent = await nudge.track(user_id="ed/1", event="Product Added", properties={"price": 2})
        await settled(routing_api, sent["messageId"])
        state = await nudge.journey_state("cart", "ed/1")
        assert state["status"] == "running"
        ended = await nudge.exit_journey("cart", "ed/1", "testing")
        assert ended["status"] == "exited"

        try:
            await nudge.journey_state("cart", "nobody")
        except NudgeClientError as exc:
            assert exc.status_code == 404
        else:
            raise AssertionError("expected 404")
        nobody = await routing_api.http.post(
            "/v1/journeys/cart/nobody/exit", json={"reason": "x"}, headers=ADMIN
        )
        assert nobody.status_code == 404
        await nudge.set_campaign_status("cart", "pause")
        assert (await nudge.get_campaign("cart"))["status"] == "paused"


async def test_temporal_lost_after_connecting(sqlite_url: str) -> None:
    """A server that goes away under a connected client: RPCs fail UNAVAILABLE, events wait;
    a server back at the same address gets them (the client reconnects by itself)."""
    port = free_port()
    settings = make_settings(sqlite_url, f"127.0.0.1:{port}")
    async with contextlib.AsyncExitStack() as stack:
        first = contextlib.AsyncExitStack()
        stack.push_async_callback(first.aclose)
        await first.enter_async_context(dev_server(DevServerOptions(port=port)))
        api = await stack.enter_async_context(running_api(settings))
        assert (await api.http.get("/readyz")).status_code == 200
        await api.campaign(CART)
        await first.aclose()  # the server goes away under the connected client

        await api.track("fay", "Product Added", messageId="f-1", properties={"price": 1})
        await api.track("fay", "Order Completed", messageId="f-2")
        assert (await api.http.get("/readyz")).status_code == 503
        await eventually(lambda: _attempted(api, "f-1"), timeout=60)
        event = await api.event("f-1")
        assert event.status == "pending"
        assert (event.last_error or "").startswith("RPCError UNAVAILABLE")

        async with (
            dev_server(DevServerOptions(port=port)) as server,
            Worker(server.client, task_queue=settings.task_queue, workflows=[RecordingJourney]),
        ):
            assert await settled(api, "f-1", "f-2") == {"f-1": "routed", "f-2": "routed"}
            fay = [e.message_id for e in await received(server.client, "cart", "fay")]
            assert fay == ["f-1", "f-2"]
