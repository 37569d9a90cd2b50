"""api: dependencies as Annotated aliases — settings, sessions, Temporal, the campaign index,
the relay, auth."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from api.backlog import Backlog
from api.campaign_index import CampaignIndexLoader
from api.relay import Relay
from api.router import EventRouter
from api.segment_index import SegmentIndexLoader
from core.config import Settings
from temporal.client import TemporalConnection


@dataclass
class Services:
    """What the lifespan builds once per process and every request shares."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    temporal: TemporalConnection
    campaigns: CampaignIndexLoader
    router: EventRouter
    relay: Relay
    segments: SegmentIndexLoader | None = None
    backlog: Backlog | None = None
    """The outbox's backlog, which refuses ingestion at its limit (None: never refused)."""


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings(services: ServicesDep) -> Settings:
    return services.settings


async def get_session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    async with services.sessions() as session:
        yield session


def get_campaign_index(services: ServicesDep) -> CampaignIndexLoader:
    return services.campaigns


def get_segment_index(services: ServicesDep) -> SegmentIndexLoader | None:
    return services.segments


def get_relay(services: ServicesDep) -> Relay:
    return services.relay


def get_temporal(services: ServicesDep) -> Client:
    client = services.temporal.client
    if client is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"Temporal is unreachable at {services.temporal.address}; try again shortly",
        )
    return client


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
CampaignIndexDep = Annotated[CampaignIndexLoader, Depends(get_campaign_index)]
RelayDep = Annotated[Relay, Depends(get_relay)]
SegmentIndexDep = Annotated[SegmentIndexLoader | None, Depends(get_segment_index)]
TemporalDep = Annotated[Client, Depends(get_temporal)]


def admin_token_problem(authorization: str, admin_token: str) -> tuple[str, str] | None:
    """Why an `Authorization` header does not carry the admin token — the 401's detail and
    its `WWW-Authenticate` challenge — or None when it does.

    Asked by `require_admin` and, before any body is read, by the request guard
    (`api.limits`): one answer, whichever asks first.
    """
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return "send the admin token as `Authorization: Bearer <token>`", "Bearer"
    if not secrets.compare_digest(token.strip().encode(), admin_token.encode()):
        return "wrong admin token", 'Bearer error="invalid_token"'
    return None


def require_admin(request: Request, settings: SettingsDep) -> None:
    """Campaign management and journey inspection need `Authorization: Bearer <admin_token>`."""
    problem = admin_token_problem(request.headers.get("authorization", ""), settings.admin_token)
    if problem is not None:
        detail, challenge = problem
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": challenge}
        )


AdminDep = Depends(require_admin)
