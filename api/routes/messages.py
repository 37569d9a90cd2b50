"""api: messages the sandbox channel kept instead of sending — what `nudge dev` "sent"."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import AdminDep, SessionDep
from api.schemas import SandboxMessagePublic, SandboxMessages
from core.events import StoredUserId
from store.deliveries import list_sandbox_messages

router = APIRouter(prefix="/v1/messages", tags=["messages"], dependencies=[AdminDep])


@router.get("", response_model=SandboxMessages, summary="Sandbox messages, newest first")
async def list_messages(
    session: SessionDep,
    user_id: Annotated[StoredUserId | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SandboxMessages:
    rows = await list_sandbox_messages(session=session, user_id=user_id, limit=limit)
    data = [SandboxMessagePublic.model_validate(r) for r in rows]
    return SandboxMessages(data=data, count=len(data))
