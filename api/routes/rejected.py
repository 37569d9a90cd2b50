"""api: rejected events — the messages ingestion refused, with why, for an operator."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import AdminDep, SessionDep
from api.schemas import MAX_ROW_ID, Message, RejectedEventPublic, RejectedEvents
from store.rejected import list_rejections

router = APIRouter(prefix="/v1/rejected-events", tags=["rejected events"], dependencies=[AdminDep])


@router.get(
    "",
    response_model=RejectedEvents,
    responses={401: {"model": Message, "description": "missing or wrong admin token"}},
    summary="Messages refused at ingestion, newest first",
)
async def list_rejected_events(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID, description="an id: older")] = None,
) -> RejectedEvents:
    rows = await list_rejections(session=session, limit=limit, before=before)
    data = [RejectedEventPublic.model_validate(row) for row in rows]
    return RejectedEvents(
        data=data,
        count=len(data),
        next_before=data[-1].id if len(data) == limit else None,
    )
