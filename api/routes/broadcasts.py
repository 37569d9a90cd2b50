"""api: a scheduled broadcast's firings — each one's fan-out, its status and counts — read
from Temporal, without the Temporal UI."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel
from temporalio.client import Client, RPCTimeoutOrCancelledError
from temporalio.service import RPCError

from api.deps import AdminDep, SessionDep, TemporalDep
from api.routes.fanouts import (
    UNKNOWN,
    FanOutState,
    FanOutTargetState,
    view_fan_out,
)
from api.routes.journeys import temporal_error
from api.routes.operations import ERRORS, RPC_TIMEOUT
from api.schemas import CampaignId, Message
from core.fanout import fanout_workflow_id
from store.campaigns import get_campaign, get_version

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"], dependencies=[AdminDep])

READS_AT_ONCE = 8
"""Firings read from Temporal at the same time (each: describe, result or progress query,
and the first event of its history)."""
LIST_PAGE = 1000


class BroadcastFiring(BaseModel):
    occurrence: str
    """`schedule/{campaign}/{wall time}`: names its journeys' entries."""
    wall_time: str
    """The schedule's wall time it fired for (`2026-11-30T10:00`), in the campaign's zone;
    for a broadcast at each user's local time, in the first zone to reach it (UTC+14)."""
    fan_out: FanOutState
    """Its workflow, `running`, `completed` or how it ended otherwise, and its counts:
    `started`, `already` (entered before: a retry), `skipped` (left out by the audience or
    the re-entry rules), `pages`, `halted`."""
    campaign: FanOutTargetState | None = None
    """The campaign as it fired: the version its journeys start on, and `done`, `paging`
    or `halted` (paused or archived mid-way: the broadcast stops for good)."""
    note: str | None = None
    """Why its counts could not be read, in words."""


class CampaignBroadcasts(BaseModel):
    campaign_id: str
    status: str
    """The campaign's status: only an active campaign's schedule fires."""
    schedule: str | None
    """Its current version's schedule; None when it does not start on a schedule."""
    timezone: str | None
    total: int
    """The firings Temporal still keeps (its retention), of which `firings` are the
    newest."""
    firings: list[BroadcastFiring]
    """Newest first."""
    note: str | None = None


def firing_prefix(campaign_id: str) -> str:
    """Every firing's fan-out workflow id starts so (a campaign id holds no `/`)."""
    return fanout_workflow_id(f"schedule/{campaign_id}/")


@router.get(
    "/{campaign_id}/broadcasts",
    response_model=CampaignBroadcasts,
    responses={**ERRORS, 404: {"model": Message, "description": "no such campaign"}},
    summary="A scheduled campaign's recent firings: each fan-out's status and counts",
)
async def list_broadcasts(
    campaign_id: CampaignId,
    session: SessionDep,
    client: TemporalDep,
    limit: Annotated[int, Query(ge=1, le=100, description="the newest this many")] = 20,
) -> CampaignBroadcasts:
    """Listed from Temporal's visibility by workflow id (`fanout/schedule/{campaign}/…`),
    each read as `GET /v1/triggers/{name}/{id}` reads a fan-out. A campaign that does not
    start on a schedule answers 200 with the firings of its earlier scheduled versions, if
    any, and a note."""
    campaign = await get_campaign(session=session, campaign_id=campaign_id)
    if campaign is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {campaign_id!r}")
    version = await get_version(
        session=session, campaign_id=campaign_id, version=campaign.current_version
    )
    entry = version.definition.get("entry") if version is not None else None
    schedule = entry.get("schedule") if isinstance(entry, dict) else None
    answer = CampaignBroadcasts(
        campaign_id=campaign_id,
        status=campaign.status,
        schedule=schedule if isinstance(schedule, str) else None,
        timezone=str(entry.get("timezone", "user")) if schedule and entry else None,
        total=0,
        firings=[],
    )
    await session.rollback()  # no transaction held open while Temporal is asked
    started = await _firing_ids(client, campaign_id)
    answer.total = len(started)
    prefix = firing_prefix(campaign_id)
    # Newest first by when each fan-out started (the wall time in the id is in the zone of
    # the version that fired, which may have changed), then by that wall time: visibility
    # lists running ones first and refuses ORDER BY (SQL visibility, the dev server's).
    newest = sorted(started, key=lambda w: (started[w], w[len(prefix) :]), reverse=True)[:limit]
    gate = asyncio.Semaphore(READS_AT_ONCE)

    async def read(workflow_id: str) -> BroadcastFiring:
        async with gate:
            return await _firing(client, workflow_id, prefix)

    answer.firings = list(await asyncio.gather(*(read(w) for w in newest)))
    if answer.schedule is None:
        answer.note = f"campaign {campaign_id!r} does not start on a schedule" + (
            ": these firings are of an earlier version" if answer.firings else ""
        )
    elif not answer.firings:
        answer.note = (
            "no firing yet (or none Temporal still keeps: past its retention)"
            if answer.status == "active"
            else f"no firing: the campaign is {answer.status} (only an active one fires)"
        )
    return answer


async def _firing_ids(client: Client, campaign_id: str) -> dict[str, datetime]:
    """The campaign's firings' fan-out workflow ids, once each, with when each started (a
    fan-out that continued as new is listed by its latest run)."""
    query = (
        f"WorkflowId STARTS_WITH '{firing_prefix(campaign_id)}' "
        "AND ExecutionStatus != 'ContinuedAsNew'"
    )
    try:
        return {
            execution.id: execution.start_time
            async for execution in client.list_workflows(
                query, page_size=LIST_PAGE, rpc_timeout=RPC_TIMEOUT
            )
        }
    except (RPCError, RPCTimeoutOrCancelledError) as exc:
        raise temporal_error(exc, firing_prefix(campaign_id)) from exc


async def _firing(client: Client, workflow_id: str, prefix: str) -> BroadcastFiring:
    wall_time = workflow_id[len(prefix) :]
    firing = BroadcastFiring(
        occurrence=workflow_id.removeprefix(fanout_workflow_id("")),
        wall_time=wall_time,
        fan_out=FanOutState(workflow_id=workflow_id, status=UNKNOWN, progress=None),
    )
    try:
        view = await view_fan_out(
            client, workflow_id, missing="its fan-out workflow is gone (past Temporal's retention)"
        )
    except HTTPException as exc:  # 404: gone since it was listed
        firing.note = str(exc.detail)
        return firing
    # One firing unread (no worker answered in time) leaves the others' counts to show.
    firing.fan_out, firing.note = view.fan_out, view.note
    firing.campaign = view.campaigns[0] if view.campaigns else None
    return firing
