"""api: the FastAPI application — built by `create_app(settings)`, its parts made in `lifespan`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic.json_schema import models_json_schema

from api.backlog import Backlog
from api.campaign_index import CampaignIndexLoader
from api.deps import AdminDep, Services
from api.limits import BodyLimit, RequestGuard, endpoint_routes, is_admin_route
from api.methods import add_method_answers
from api.relay import Relay
from api.router import EventRouter
from api.routes import (
    api_router,
    campaigns,
    codec,
    provider_webhooks,
    subscriptions,
    tracking,
    triggers,
)
from api.segment_index import SegmentIndexLoader
from core.config import Settings
from core.events import MAX_BATCH_BYTES
from store.campaigns import VersionUnavailable
from store.db import create_engine, session_factory
from temporal.client import TemporalConnection, converter_for

log = logging.getLogger("nudge.api")

BODY_LIMITS: dict[str, BodyLimit] = {
    # Segment's limit, which the tracking routes answer themselves in Segment's words (400).
    **{
        route.path: BodyLimit(MAX_BATCH_BYTES, route_refuses=True)
        for route in tracking.router.routes
        if isinstance(route, APIRoute)
    },
    "/v1/campaigns": BodyLimit(campaigns.MAX_DEFINITION_BYTES),
    "/v1/campaigns/{campaign_id}": BodyLimit(campaigns.MAX_DEFINITION_BYTES),
    # Traits and events that stand in for stored ones: as much room as a definition.
    "/v1/campaigns/{campaign_id}/preview": BodyLimit(campaigns.MAX_DEFINITION_BYTES),
    "/v1/segments": BodyLimit(campaigns.MAX_DEFINITION_BYTES),
    "/v1/webhooks/twilio/sms": BodyLimit(subscriptions.MAX_WEBHOOK_BYTES),
    "/v1/webhooks/twilio/status": BodyLimit(provider_webhooks.MAX_TWILIO_STATUS_BYTES),
    "/v1/webhooks/sendgrid": BodyLimit(provider_webhooks.MAX_SENDGRID_BYTES),
    "/v1/triggers/{name}": BodyLimit(triggers.MAX_TRIGGER_BYTES),
    # The codec answers its own 413, with the CORS headers the Temporal UI needs to read it.
    "/codec/decode": BodyLimit(codec.MAX_BODY_BYTES, route_refuses=True),
    "/codec/encode": BodyLimit(codec.MAX_BODY_BYTES, route_refuses=True),
}
"""Each route's body limit, by path template; the rest get the guard's default (64 KB)."""

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
    segment_index = SegmentIndexLoader(sessions=sessions, settings=settings)
    relay = Relay(router=router, sessions=sessions, settings=settings, segments=segment_index)
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
            segments=segment_index,
            backlog=Backlog(sessions=sessions, limit=settings.ingest_backlog_limit),
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


REFUSALS = {
    "400": "the body is not readable as what this route takes (not JSON, not gzip, …)",
    "401": "no credentials, or wrong ones (the admin token; the write key on tracking)",
    "408": "the body did not arrive within NUDGE_BODY_TIMEOUT_SECONDS",
    "413": "the body is over this route's limit",
}
"""What the request guard and the body parsers answer before a route runs: documented on
every operation they can happen to, so the schema tells clients every status they get."""


def document_refusals(schema: dict[str, Any], app: FastAPI) -> None:
    """Add the guard's and parsers' statuses to each operation that can get them."""
    tracking_paths = {route.path for route in endpoint_routes(tracking.router.routes)}
    for route in endpoint_routes(app.routes):
        path = getattr(route, "path_format", None) or getattr(route, "path", "")
        operations = schema["paths"].get(path, {})
        for method in getattr(route, "methods", None) or ():
            operation = operations.get(method.lower())
            if operation is None:
                continue
            codes = []
            if is_admin_route(route) or route.path in tracking_paths:
                codes.append("401")
            if method in ("POST", "PUT", "PATCH"):
                codes += ["400", "408", "413"]
            responses = operation.setdefault("responses", {})
            for code in codes:
                responses.setdefault(
                    code,
                    {
                        "description": REFUSALS[code],
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Message"}}
                        },
                    },
                )


def create_app(settings: Settings) -> FastAPI:
    docs = settings.docs_are_public
    app = FastAPI(
        title="Nudge",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.include_router(api_router)
    app.add_middleware(
        RequestGuard,
        routes=app.routes,
        admin_token=settings.admin_token,
        body_timeout_seconds=settings.body_timeout_seconds,
        limits=BODY_LIMITS,
    )
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
        # The tracking and trigger routes read their bodies by hand (gzip, limits, 400s
        # that name the field); their schemas are added here so /docs shows what to send.
        _, defs = models_json_schema(
            [(model, "validation") for model in (*tracking.SCHEMAS, triggers.TriggerBody)],
            by_alias=True,
            ref_template="#/components/schemas/{model}",
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        document_refusals(schema, app)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    if not docs:
        # Not public (production's default): operators' tools still get the schema with
        # the admin token; the browser pages, which cannot send it, are not served.
        async def operators_schema() -> JSONResponse:
            return JSONResponse(app.openapi())

        app.get("/openapi.json", include_in_schema=False, dependencies=[AdminDep])(operators_schema)
    add_method_answers(app)
    return app
