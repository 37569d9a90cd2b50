"""tests.api: two `nudge api` processes on one database and one Temporal, each with its relay
draining the same outbox, while events for the same users arrive at both.

What Temporal got is read from the journeys' histories: every signal each journey received,
in order. Each event must be there once (none routed twice, none lost), each user's events in
the order the outbox gave them, and each event labelled by what happened to it.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from temporalio.client import Client
from temporalio.worker import Worker

from core.config import Settings
from core.events import JourneyEvent
from core.journey import SIGNAL_EVENT, journey_id
from store.db import create_engine, session_factory
from store.models import Event
from temporal.servers import DevServer, free_port
from tests.api.doubles import FINISH_EVENT, RecordingJourney
from tests.fixtures.api import ADMIN, WRITE_KEY, eventually, make_settings
from tests.fixtures.processes import NUDGE, worker_env

USERS = 24
STEPS = 6
"""Numbered `Checkout Started` events per user, after the entry event."""

CAMPAIGN: dict[str, Any] = {
    "id": "two-relays",
    "name": "Two relays, one outbox",
    "entry": {"event": "Product Added"},
    "exits": [{"event": FINISH_EVENT}],
    "steps": [
        {
            "id": "await-checkout",
            "type": "wait_for",
            "event": "Checkout Started",
            "timeout": "24h",
            "on_timeout": "remind",
        },
        {"id": "remind", "type": "send", "channel": "sandbox", "template": "reminder"},
    ],
    "templates": {"reminder": {"body": "Your cart misses you"}},
}


class ApiProcess:
    """`nudge api` in a process of its own, as an operator runs it."""

    def __init__(self, settings: Settings, directory: Path, name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = worker_env(settings)
        self.env.update(
            NUDGE_API_HOST="127.0.0.1",
            NUDGE_API_PORT=str(self.port),
            NUDGE_RELAY_INTERVAL_SECONDS=str(settings.relay_interval_seconds),
            NUDGE_CAMPAIGN_REFRESH_SECONDS=str(settings.campaign_refresh_seconds),
        )
        self.directory = directory
        self.log = directory / f"api-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, http: httpx.AsyncClient, *, timeout: float = 60.0) -> None:
        with self.log.open("w") as log:
            # cwd: the process must not read a developer's .env.
            self.process = subprocess.Popen(
                [str(NUDGE), "api"],
                env=self.env,
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        async def up() -> bool:
            assert self.process is not None and self.process.poll() is None, self.tail()
            try:
                return (await http.get(f"{self.url}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(up, timeout=timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text().splitlines()[-lines:])


async def signalled(client: Client, workflow_id: str) -> list[str]:
    """The message ids of every `event` signal in the journey's history, duplicates too."""
    handle = client.get_workflow_handle(workflow_id)
    heard: list[str] = []
    async for item in handle.fetch_history_events():
        if not item.HasField("workflow_execution_signaled_event_attributes"):
            continue
        attributes = item.workflow_execution_signaled_event_attributes
        if attributes.signal_name == SIGNAL_EVENT:
            [event] = await client.data_converter.decode(attributes.input.payloads, [JourneyEvent])
            heard.append(event.message_id)
    return heard


def plan(user: str) -> list[tuple[str, dict[str, Any]]]:
    """A user's events, in sending order: (message id, event name and properties)."""
    events: list[tuple[str, dict[str, Any]]] = [
        (f"{user}/entry", {"event": "Product Added"}),
        (f"{user}/unwatched", {"event": "Newsletter Opened"}),
    ]
    for n in range(1, STEPS + 1):
        events.append((f"{user}/step-{n}", {"event": "Checkout Started", "properties": {"n": n}}))
    events.append((f"{user}/finish", {"event": FINISH_EVENT}))
    events.append((f"{user}/late", {"event": "Checkout Started"}))
    return events


async def test_two_api_processes_route_every_event_once_in_order(
    database_url: str, dev_server: DevServer, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url, dev_server.address, relay_interval_seconds=0.2, campaign_refresh_seconds=0.2
    )
    run = uuid.uuid4().hex[:8]  # the dev server is shared: journeys of our own
    users = [f"u{i}-{run}" for i in range(USERS)]
    apis = [ApiProcess(settings, tmp_path, name) for name in ("one", "two")]
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    try:
        async with (
            Worker(dev_server.client, task_queue=settings.task_queue, workflows=[RecordingJourney]),
            httpx.AsyncClient(timeout=30) as http,
        ):
            # The campaign is in place before the second process starts (and loads it).
            await apis[0].start(http)
            created = await http.post(f"{apis[0].url}/v1/campaigns", json=CAMPAIGN, headers=ADMIN)
            assert created.status_code in (200, 201), created.text
            activated = await http.post(
                f"{apis[0].url}/v1/campaigns/{CAMPAIGN['id']}/activate", headers=ADMIN
            )
            assert activated.status_code == 200, activated.text
            await apis[1].start(http)

            async def send(api: ApiProcess, message_id: str, body: dict[str, Any]) -> None:
                body = {"userId": message_id.partition("/")[0], "messageId": message_id, **body}
                answer = await http.post(f"{api.url}/v1/track", json=body, auth=(WRITE_KEY, ""))
                assert answer.status_code == 200, answer.text

            async def routed(message_id: str) -> bool:
                async with sessions() as session:
                    statement = select(Event.status).where(Event.message_id == message_id)
                    return await session.scalar(statement) == "routed"

            async def one_user(user: str) -> None:
                """Each event to either process, one after the other — except steps 3 and 4,
                sent to both at once: their order is whichever the outbox gives them. The
                last one comes after the journey ended: no journey hears it."""
                rng = random.Random(user)
                events = plan(user)
                for i, (message_id, body) in enumerate(events):
                    if message_id.endswith("/step-4"):
                        continue
                    if message_id.endswith("/step-3"):
                        await asyncio.gather(
                            send(apis[0], message_id, body), send(apis[1], *events[i + 1])
                        )
                        continue
                    if message_id.endswith("/late"):  # once the journey has ended
                        await eventually(lambda: routed(f"{user}/finish"), timeout=60)
                        journey = dev_server.client.get_workflow_handle(
                            journey_id(CAMPAIGN["id"], user)
                        )
                        await asyncio.wait_for(journey.result(), 60)
                    await send(rng.choice(apis), message_id, body)

            await asyncio.gather(*(one_user(user) for user in users))

            async def outbox() -> list[Event]:
                async with sessions() as session:
                    stored = list(await session.scalars(select(Event).order_by(Event.id)))
                assert all(e.status != "pending" for e in stored), [
                    e.message_id for e in stored if e.status == "pending"
                ][:10]
                return stored

            stored = await eventually(outbox, timeout=60)
            journeys = {
                user: await signalled(dev_server.client, journey_id(CAMPAIGN["id"], user))
                for user in users
            }
    finally:
        for api in apis:
            api.stop()
        await engine.dispose()

    sent = {message_id for user in users for message_id, _ in plan(user)}
    assert {e.message_id for e in stored} == sent
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in stored:
        by_user[event.user_id].append(event)
    for user in users:
        label = {e.message_id: e.status for e in by_user[user]}
        # Labels: what reached the journey is routed; what no journey heard, ignored.
        assert label.pop(f"{user}/unwatched") == "ignored"
        assert label.pop(f"{user}/late") == "ignored", "the journey had ended"
        assert set(label.values()) == {"routed"}, label
        # Once each, none lost, in the outbox's order (steps 3 and 4 in either).
        in_outbox_order = [e.message_id for e in by_user[user] if e.status == "routed"]
        assert journeys[user] == in_outbox_order
        steps = [m for m in journeys[user] if "/step-" in m]
        assert sorted(steps) == [f"{user}/step-{n}" for n in range(1, STEPS + 1)]
        assert steps[:2] == [f"{user}/step-1", f"{user}/step-2"]
        assert steps[4:] == [f"{user}/step-{n}" for n in range(5, STEPS + 1)]
    assert all(e.claimed_by is None and e.failures == 0 for e in stored)
