"""bench: the real parts a benchmark runs on, in this process, all on 127.0.0.1.

The Temporal dev server (the `temporal` binary beside the interpreter), a fresh migrated
SQLite file, the webhook recorder, the real Nudge worker and API (uvicorn, ephemeral
port), and the baseline's worker on its own task queue. Everything is closed explicitly,
in reverse order, when the context exits.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.worker import Worker

from api.app import create_app
from api.client import NudgeClient
from api.server import serve_in_loop
from bench.floor import FloorActivities, FloorWorkflow
from bench.recorder import WebhookRecorder
from core.config import Environment, Settings
from store.db import migrate
from temporal.servers import FAST_TRANSFER_QUEUE, DevServer, DevServerOptions, dev_server
from worker.build import WORKFLOW_RUNNER, create_worker, worker_activities

UNTHROTTLED = (FAST_TRANSFER_QUEUE,)
"""The bench lifts the dev server's transfer-queue throttle by default (see
`temporal.servers.FAST_TRANSFER_QUEUE`), so the baseline is Temporal's floor, not the
throttle; `--stock-dev-server` keeps it."""
WRITE_KEY = "bench-write-key"
ADMIN_TOKEN = "bench-admin-token"

CAMPAIGN_ID = "bench-send"
ENTRY_EVENT = "Bench Triggered"
SEND_STEP = "send"
CAMPAIGN: dict[str, Any] = {
    "id": CAMPAIGN_ID,
    "name": "Bench: entry event straight to a webhook send",
    "entry": {"event": ENTRY_EVENT},
    "steps": [{"id": SEND_STEP, "type": "send", "channel": "webhook", "template": "hello"}],
    "templates": {
        "hello": {
            "subject": "Hi {{ traits.first_name | default('there') }}",
            "body": "{{ event.properties.item }} is waiting for you",
        }
    },
}


@dataclass
class Stack:
    client: Client
    """The bench's own Temporal client: starts the baseline, reads histories."""
    recorder: WebhookRecorder
    nudge: NudgeClient
    """The Nudge API over HTTP, with the write key and the admin token."""
    settings: Settings
    floor_task_queue: str


@contextlib.asynccontextmanager
async def running_stack(
    server: DevServer | None = None, *, dynamic_config: tuple[str, ...] = UNTHROTTLED
) -> AsyncIterator[Stack]:
    """Everything up, the campaign applied and active; `server` (a dev server) is reused
    when given, else one is started (with `dynamic_config`) and stopped here."""
    async with contextlib.AsyncExitStack() as stack:
        if server is None:
            server = await stack.enter_async_context(
                dev_server(DevServerOptions(dynamic_config=dynamic_config))
            )
        client = server.client
        recorder = WebhookRecorder().start()
        stack.callback(recorder.close)
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="nudge-bench-"))
        settings = Settings(
            _env_file=None,
            environment=Environment.test,
            database_url=f"sqlite+aiosqlite:///{directory}/nudge.db",
            temporal_address=server.address,
            task_queue=f"bench-journeys-{uuid.uuid4().hex[:8]}",
            write_key=WRITE_KEY,
            admin_token=ADMIN_TOKEN,
            webhook_url=recorder.url,
            # The shipped defaults, stated so that NUDGE_* variables cannot change the bench.
            relay_interval_seconds=2.0,
            campaign_refresh_seconds=5.0,
            provider_timeout_seconds=10.0,
            # The send policy runs as in production (consent, caps: each journey is a new
            # user), but no quiet hours: a bench at 22:00 UTC must not wait until morning.
            quiet_hours_start=None,
        )
        await migrate(settings.database_url)

        activities = await stack.enter_async_context(worker_activities(settings, client))
        await stack.enter_async_context(
            create_worker(
                client,
                activities,
                task_queue=settings.task_queue,
                workflow_cache_size=settings.workflow_cache_size,
            )
        )

        floor_task_queue = f"bench-floor-{uuid.uuid4().hex[:8]}"
        floor_http = await stack.enter_async_context(httpx.AsyncClient(timeout=10.0))
        await stack.enter_async_context(
            Worker(
                client,
                task_queue=floor_task_queue,
                workflows=[FloorWorkflow],
                activities=[FloorActivities(floor_http, recorder.url).post],
                # The same workflow runner as Nudge's worker: the ratio is Nudge's own cost.
                workflow_runner=WORKFLOW_RUNNER,
            )
        )

        url = (await stack.enter_async_context(serve_in_loop(create_app(settings)))).url
        nudge = await stack.enter_async_context(
            NudgeClient(url, admin_token=ADMIN_TOKEN, write_key=WRITE_KEY)
        )
        await nudge.apply_campaign(json.dumps(CAMPAIGN), activate=True)
        yield Stack(client, recorder, nudge, settings, floor_task_queue)
