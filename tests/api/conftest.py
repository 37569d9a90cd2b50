"""tests.api: the app served by uvicorn on 127.0.0.1 (ephemeral port), called over real HTTP."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from api.deps import Services
from core.config import Settings
from store.models import Event, JourneyEntry, Profile
from tests.api.doubles import RecordingJourney

WRITE_KEY = "test-write-key"
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

T = TypeVar("T")


def free_port() -> int:
    """A port nothing listens on (bound and released): Temporal 'down' at a known address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_settings(database_url: str, temporal_address: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "temporal_address": temporal_address,
        "task_queue": f"tq-{uuid.uuid4()}",
        "write_key": WRITE_KEY,
        "admin_token": ADMIN_TOKEN,
        "relay_interval_seconds": 0.2,
        "campaign_refresh_seconds": 0.5,
        **overrides,
    }
    return Settings(_env_file=None, **values)


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run `app` under uvicorn in this event loop; yield its base URL; shut it down."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                await task  # raises what failed at start-up
                raise RuntimeError("uvicorn exited during start-up")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=30)
        finally:
            sock.close()


@dataclass
class RunningApi:
    """The app being served, an HTTP client for it, and its services for looking inside."""

    url: str
    app: FastAPI
    settings: Settings
    http: httpx.AsyncClient

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    async def track(self, user_id: str, event: str, **fields: Any) -> httpx.Response:
        body = {"userId": user_id, "event": event, **fields}
        body.setdefault("messageId", f"m-{uuid.uuid4()}")
        response = await self.http.post("/v1/track", json=body, auth=(WRITE_KEY, ""))
        assert response.status_code == 200, response.text
        return response

    async def post(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        return await self.http.post(path, json=body, auth=(WRITE_KEY, ""), **kwargs)

    async def events(self) -> list[Event]:
        async with self.services.sessions() as session:
            return list((await session.scalars(select(Event).order_by(Event.id))).all())

    async def event(self, message_id: str) -> Event:
        async with self.services.sessions() as session:
            found = await session.scalar(select(Event).where(Event.message_id == message_id))
        assert found is not None, f"no event {message_id!r} stored"
        return found

    async def entries(self) -> list[JourneyEntry]:
        async with self.services.sessions() as session:
            statement = select(JourneyEntry).order_by(JourneyEntry.id)
            return list((await session.scalars(statement)).all())

    async def traits(self, user_id: str) -> dict[str, Any] | None:
        async with self.services.sessions() as session:
            profile = await session.get(Profile, user_id)
        return None if profile is None else dict(profile.traits)

    async def campaign(self, definition: dict[str, Any], *, activate: bool = True) -> None:
        response = await self.http.post("/v1/campaigns", json=definition, headers=ADMIN)
        assert response.status_code in (200, 201), response.text
        if activate:
            response = await self.http.post(
                f"/v1/campaigns/{definition['id']}/activate", headers=ADMIN
            )
            assert response.status_code == 200, response.text


async def eventually(
    check: Callable[[], Awaitable[T]], *, timeout: float = 20.0, interval: float = 0.1
) -> T:
    """Poll `check` until it returns a truthy value (returned) or raises no AssertionError."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still false after {timeout}s: {result!r}")
        await asyncio.sleep(interval)


@asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[RunningApi]:
    app = create_app(settings)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield RunningApi(url=url, app=app, settings=settings, http=http)


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


@dataclass
class RoutingApi(RunningApi):
    """The API connected to a dev server where `RecordingJourney` runs as `journey`."""

    client: Client | None = None

    def temporal(self) -> Client:
        assert self.client is not None
        return self.client


def target(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


@pytest.fixture
async def routing_api(sqlite_url: str, dev_env: WorkflowEnvironment) -> AsyncIterator[RoutingApi]:
    settings = make_settings(sqlite_url, target(dev_env))
    async with Worker(dev_env.client, task_queue=settings.task_queue, workflows=[RecordingJourney]):
        app = create_app(settings)
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield RoutingApi(url=url, app=app, settings=settings, http=http, client=dev_env.client)
