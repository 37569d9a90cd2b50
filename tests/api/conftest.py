"""tests.api: the app served by uvicorn on 127.0.0.1 (ephemeral port), called over real HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Worker

from api.app import create_app
from temporal.servers import DevServer, free_port
from tests.api.doubles import RecordingJourney
from tests.fixtures.api import RoutingApi, RunningApi, make_settings, running_api, serve


@pytest.fixture
async def api(sqlite_url: str) -> AsyncIterator[RunningApi]:
    """The API on SQLite, with Temporal unreachable (a port nothing listens on)."""
    settings = make_settings(sqlite_url, f"127.0.0.1:{free_port()}")
    async with running_api(settings) as running:
        yield running


@pytest.fixture
async def api_db(database_url: str) -> AsyncIterator[RunningApi]:
    """As `api`, once on SQLite and once on PostgreSQL."""
    settings = make_settings(database_url, f"127.0.0.1:{free_port()}")
    async with running_api(settings) as running:
        yield running


@pytest.fixture
async def routing_api(sqlite_url: str, dev_server: DevServer) -> AsyncIterator[RoutingApi]:
    settings = make_settings(sqlite_url, dev_server.address)
    try:
        async with Worker(
            dev_server.client, task_queue=settings.task_queue, workflows=[RecordingJourney]
        ):
            app = create_app(settings)
            async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
                yield RoutingApi(
                    url=url, app=app, settings=settings, http=http, client=dev_server.client
                )
    finally:
        await end_journeys_left(dev_server.client, settings.task_queue)


async def end_journeys_left(client: Client, task_queue: str) -> None:
    """The dev server is shared by the session and journey ids are business keys
    (`journey/cart/ada`): a journey a test leaves running would be joined (USE_EXISTING) by
    the next test that routes the same user, on a task queue nobody polls any more."""
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'"
    async for execution in client.list_workflows(query):
        with contextlib.suppress(RPCError):  # ended meanwhile
            await client.get_workflow_handle(execution.id, run_id=execution.run_id).terminate(
                reason="test over"
            )
