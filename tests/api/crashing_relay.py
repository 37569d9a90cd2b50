"""tests.api: a relay in a process of its own, for a test to SIGKILL mid-pass.

`python -m tests.api.crashing_relay DATABASE_URL RELAY_ID LEASE_SECONDS` drains the outbox
once with a router double that routes every event at once, except one named `Hang`, on
which it waits forever — so the process is stuck mid-pass, its claims held, when the test
kills it.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from api.campaign_index import CampaignIndexLoader
from api.relay import Relay
from api.router import EventRouter, Outcome
from store.db import create_engine, session_factory
from store.models import Event
from temporal.client import TemporalConnection
from temporal.servers import free_port
from tests.fixtures.api import make_settings

HANG = "Hang"


class HangingRouter(EventRouter):
    async def route(self, event: Event) -> Outcome:
        if event.name == HANG:
            print(f"hanging on {event.message_id}", flush=True)
            await asyncio.Event().wait()
        return Outcome.routed


async def main(database_url: str, relay_id: str, lease_seconds: float) -> None:
    settings = make_settings(database_url, f"127.0.0.1:{free_port()}")
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    router = HangingRouter(
        sessions=sessions,
        temporal=TemporalConnection(settings.temporal_address),
        campaigns=CampaignIndexLoader(sessions=sessions, settings=settings),
        settings=settings,
    )
    relay = Relay(
        router=router,
        sessions=sessions,
        settings=settings,
        lease=timedelta(seconds=lease_seconds),
        relay_id=relay_id,
    )
    await relay.drain()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
