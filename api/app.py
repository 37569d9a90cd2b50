"""api: the FastAPI application — built by `create_app(settings)`, its parts made in `lifespan`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema

from api.campaign_index import CampaignIndexLoader
from api.deps import Services
from api.relay import Relay
from api.router import EventRouter
from api.routes import api_router, tracking
from core.config import Settings
from store.campaigns import VersionUnavailable
from store.db import create_engine, session_factory
from temporal.client import TemporalConnection, converter_for

log = logging.getLogger("nudge.api")

DESCRIPTION = """\
Event-triggered customer journeys on Temporal.

* **Tracking** — Segment's HTTP Tracking API (`/v1/track`, `/v1/identify`, `/v1/page`,
  `/v1/screen`, `/v1/group`, `/v1/alias`, `/v1/batch`); the write key is the HTTP Basic
  username. Accepted events are stored before
  the answer, then routed to journeys.
* **Campaigns** and **journeys** — `Authorization: Bearer <admin token>`.
"""


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One engine, one Temporal connection, one router and one relay per process.

    The database schema is not migrated here: that is the prestart step's job
    (`store.db.migrate`), so two API processes starting together do not race on it.
    """
    settings: Settings = app.state.settings
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    temporal = TemporalConnection(
        settings.temporal_address,
        settings.temporal_namespace,
        converter=converter_for(settings),
    )
    campaigns = CampaignIndexLoader(sessions=sessions, settings=settings)
    router = EventRouter(
        sessions=sessions, temporal=temporal, campaigns=campaigns, settings=settings
    )
    relay = Relay(router=router, sessions=sessions, settings=settings)
    try:
        await temporal.start()
        try:
            await campaigns.reload()
        except Exception:
            log.exception("could not load campaigns; the relay retries before routing")
        relay.start()
        app.state.services = Services(
            settings=settings,
            engine=engine,
            sessions=sessions,
            temporal=temporal,
            campaigns=campaigns,
            router=router,
            relay=relay,
        )
        yield
    finally:
        await relay.stop()
        await temporal.close()
        await engine.dispose()


async def version_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The API's one mapping of a campaign version it cannot use: 404 when it does not
    exist, 409 when it is stored but no longer validates (saving the campaign again makes
    a version that does)."""
    assert isinstance(exc, VersionUnavailable)
    code = status.HTTP_404_NOT_FOUND if exc.missing else status.HTTP_409_CONFLICT
    return JSONResponse({"detail": str(exc)}, status_code=code)


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="Nudge",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
    )
    app.state.settings = settings
    app.include_router(api_router)
    app.add_exception_handler(VersionUnavailable, version_unavailable)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        # The tracking routes read their bodies by hand (gzip, limits, Segment's 400s);
        # their schemas are added here so /docs still shows what to send.
        _, defs = models_json_schema(
            [(model, "validation") for model in tracking.SCHEMAS],
            by_alias=True,
            ref_template="#/components/schemas/{model}",
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
