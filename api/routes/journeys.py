"""api: journeys — read one journey's state (the `state` query) with its deliveries, end one
(the `exit` update)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError, RPCStatusCode

from api.deps import AdminDep, SessionDep, SettingsDep, TemporalDep
from api.schemas import CampaignId, Message
from core.events import StoredUserId
from core.journey import QUERY_STATE, UPDATE_EXIT, ExitRequest, JourneyState, journey_id
from store.deliveries import journey_deliveries
from store.entries import earlier_journey_end
from store.identities import person_ids
from store.models import Delivery
from temporal.client import is_outage

router = APIRouter(prefix="/v1/journeys", tags=["journeys"], dependencies=[AdminDep])

RPC_TIMEOUT = timedelta(seconds=15)
"""A query or update needs a worker to answer; without one, say so rather than hang."""

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "missing or wrong admin token"},
    404: {"model": Message, "description": "no journey for this campaign and user"},
    503: {"model": Message, "description": "Temporal is unreachable"},
    504: {"model": Message, "description": "no worker answered in time"},
}


class DeliveryPublic(BaseModel):
    """One send as an operator reads it: where it is, how often it was tried, what the
    provider last said."""

    id: int
    campaign_id: str
    campaign_version: int
    step_id: str
    visit: int
    channel: str
    user_id: str
    status: str
    attempts: int
    """Attempts at the provider so far (each retry of the activity is one)."""
    last_error: str | None = None
    """The latest attempt's error (bounded), or why the send was suppressed."""
    provider_message_id: str | None = None
    provider_answer: dict[str, Any] | None = None
    """What the provider answered: its receipt, or for a failed attempt its status, URL,
    the start of its body, the attempt and when."""
    variant: str | None = None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None = None


def delivery_public(row: Delivery) -> DeliveryPublic:
    return DeliveryPublic(
        id=row.id,
        campaign_id=row.campaign_id,
        campaign_version=row.campaign_version,
        step_id=row.step_id,
        visit=row.visit,
        channel=row.channel,
        user_id=row.user_id,
        status=row.status,
        attempts=row.attempts,
        last_error=row.error,
        provider_message_id=row.provider_message_id,
        provider_answer=row.provider_response,
        variant=row.variant,
        created_at=row.created_at,
        updated_at=row.updated_at,
        sent_at=row.sent_at,
    )


class JourneyView(JourneyState):
    """The journey's state (the `state` query's answer, its fields unchanged) and, from the
    store, its sends."""

    deliveries: list[DeliveryPublic] = Field(default_factory=list)
    """This journey's sends, the latest first: a send stuck on a provider shows its
    attempts and last error here."""


def temporal_error(exc: Exception, workflow_id: str) -> HTTPException:
    if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
        return HTTPException(status.HTTP_404_NOT_FOUND, f"no journey {workflow_id!r}")
    if isinstance(exc, RPCTimeoutOrCancelledError) or (
        isinstance(exc, RPCError) and exc.status == RPCStatusCode.DEADLINE_EXCEEDED
    ):
        return HTTPException(
            status.HTTP_504_GATEWAY_TIMEOUT,
            f"journey {workflow_id!r} did not answer in time: is a worker running?",
        )
    if is_outage(exc):
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"Temporal is unreachable: {exc}")
    return HTTPException(status.HTTP_502_BAD_GATEWAY, f"Temporal: {exc}")


@router.get(
    "/{campaign_id}/{user_id:path}",
    response_model=JourneyView,
    responses=ERRORS,
    summary="A journey's state: current step, what it waits for, history, its deliveries",
)
async def get_journey(
    campaign_id: CampaignId,
    user_id: StoredUserId,
    client: TemporalDep,
    settings: SettingsDep,
    session: SessionDep,
) -> JourneyView:
    """The journey of the person: under the id asked for, else under another id of theirs
    (a cart journey a visitor started before logging in is found by the user id too)."""
    ids = await person_journey_ids(session, campaign_id, user_id, settings.user_secret)
    for workflow_id in ids:
        handle = client.get_workflow_handle(workflow_id)
        try:
            state: JourneyState = await handle.query(
                QUERY_STATE, result_type=JourneyState, rpc_timeout=RPC_TIMEOUT
            )
        except WorkflowQueryFailedError as exc:
            raise HTTPException(
                status.HTTP_502_BAD_GATEWAY, f"the state query failed: {exc}"
            ) from exc
        except (RPCError, RPCTimeoutOrCancelledError) as exc:
            if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
                continue
            raise temporal_error(exc, workflow_id) from exc
        since = await earlier_journey_end(
            session=session, campaign_id=campaign_id, workflow_id=workflow_id
        )
        rows = await journey_deliveries(session=session, workflow_id=workflow_id, since=since)
        return JourneyView(**dict(state), deliveries=[delivery_public(r) for r in rows])
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"no journey {ids[0]!r}")


async def person_journey_ids(
    session: AsyncSession, campaign_id: str, user_id: str, secret: bytes | None
) -> list[str]:
    """The journey ids of the person `user_id` is, the one asked for first."""
    others = [i for i in await person_ids(session, user_id) if i != user_id]
    return [journey_id(campaign_id, i, secret) for i in (user_id, *others)]


async def _ended(client: Client, workflow_id: str) -> WorkflowExecutionStatus | None:
    """The status of the journey's latest run when it has ended; None when there is none."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return description.status


@router.post(
    "/{campaign_id}/{user_id:path}/exit",
    response_model=JourneyState,
    responses={**ERRORS, 409: {"model": Message, "description": "the journey already ended"}},
    summary="End a running journey now, with a reason (the `exit` update)",
)
async def exit_journey(
    campaign_id: CampaignId,
    user_id: StoredUserId,
    request: ExitRequest,
    client: TemporalDep,
    settings: SettingsDep,
) -> JourneyState:
    workflow_id = journey_id(campaign_id, user_id, settings.user_secret)
    handle = client.get_workflow_handle(workflow_id)
    try:
        state: JourneyState = await handle.execute_update(
            UPDATE_EXIT, request, result_type=JourneyState, rpc_timeout=RPC_TIMEOUT
        )
    except WorkflowUpdateFailedError as exc:
        # The update's validator refuses a journey that is no longer running.
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc.cause)) from exc
    except (RPCError, RPCTimeoutOrCancelledError) as exc:
        if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
            # Updates reach only running workflows; a closed one answers NOT_FOUND too.
            try:
                ended = await _ended(client, workflow_id)
            except RPCError as describe_exc:
                raise temporal_error(describe_exc, workflow_id) from describe_exc
            if ended is not None and ended is not WorkflowExecutionStatus.RUNNING:
                raise HTTPException(
                    status.HTTP_409_CONFLICT,
                    f"journey {workflow_id!r} already ended ({ended.name.lower()})",
                ) from exc
        raise temporal_error(exc, workflow_id) from exc
    return state
