"""api: external triggers — something happened in the world (rain forecast in Shanghai, a
price drop): every active campaign that starts on it reaches its audience.

The occurrence is written to the outbox like any event (its id makes a repeat a no-op)
and answered 202; the relay then starts one fan-out workflow per occurrence
(workflows/fanout.py), which starts each member's journey once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.deps import (
    CampaignIndexDep,
    RelayDep,
    SessionDep,
    SettingsDep,
    admin_token_problem,
)
from api.schemas import Message
from core.definition import SLUG
from core.events import MAX_EVENT_BYTES, format_path, json_problems, loads
from core.fanout import trigger_occurrence
from core.routing import TRIGGER_TYPE
from store.events import NewEvent, record_events

MAX_TRIGGER_BYTES = MAX_EVENT_BYTES
"""An occurrence is an event: Segment's 32 KB bound it too."""


class TriggerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        min_length=1, max_length=200, description="the occurrence's id: a repeat is a no-op"
    )
    properties: dict[str, Any] = Field(default_factory=dict)
    """What happened: available to the audience's conditions (`trigger.properties.city`)
    and to templates and conditions as the entry event's properties."""
    timestamp: datetime | None = None


class TriggerAccepted(BaseModel):
    trigger: str
    id: str
    occurrence: str
    campaigns: list[str]
    """The active campaigns it starts, as of now."""
    duplicate: bool
    """This id was posted before: nothing new is started."""


def require_trigger_token(request: Request, settings: SettingsDep) -> None:
    """The admin token, or the token scoped to triggers (`NUDGE_TRIGGER_TOKEN`)."""
    header = request.headers.get("authorization", "")
    problem = admin_token_problem(header, settings.admin_token)
    if problem is None:
        return
    if settings.trigger_token:
        scoped = admin_token_problem(header, settings.trigger_token)
        if scoped is None:
            return
    detail, challenge = problem
    if challenge != "Bearer":
        detail = "wrong token: send the admin token or the trigger token"
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": challenge}
    )


router = APIRouter(
    prefix="/v1/triggers", tags=["triggers"], dependencies=[Depends(require_trigger_token)]
)


def _bad(problems: list[str]) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, "; ".join(problems))


async def _body(request: Request) -> TriggerBody:
    raw = await request.body()  # at most MAX_TRIGGER_BYTES: the request guard's limit
    try:
        data = loads(raw or b"{}")
    except (ValueError, RecursionError) as exc:
        raise _bad([f"body: not JSON ({exc})"]) from None
    if not isinstance(data, dict):
        raise _bad(["body: must be a JSON object with an `id` and `properties`"])
    problems = [f"{format_path(loc) or 'body'}: {why}" for loc, why in json_problems(data)]
    if problems:
        raise _bad(problems)
    try:
        return TriggerBody.model_validate(data)
    except ValidationError as err:
        raise _bad(
            [
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in err.errors(include_url=False)
            ]
        ) from None


@router.post(
    "/{name}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TriggerAccepted,
    responses={
        400: {"model": Message, "description": "no id, or a body that is not a trigger"},
        401: {"model": Message, "description": "missing or wrong token"},
        404: {"model": Message, "description": "no active campaign starts on this trigger"},
    },
    summary="Post an external trigger's occurrence: its campaigns reach their audiences",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/TriggerBody"}}
            },
        }
    },
)
async def post_trigger(
    request: Request,
    session: SessionDep,
    campaigns: CampaignIndexDep,
    relay: RelayDep,
    name: Annotated[str, Path(pattern=SLUG)],
) -> TriggerAccepted:
    body = await _body(request)
    await campaigns.refresh()
    index = campaigns.index
    starting = index.triggers.get(name, ())
    if not starting:
        known = ", ".join(sorted(index.triggers)) or "none"
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"unknown trigger {name!r}: no active campaign starts on it (triggers: {known})",
        )
    occurrence = trigger_occurrence(name, body.id)
    at = body.timestamp or datetime.now(UTC)
    event = NewEvent(
        message_id=f"trigger:{name}:{body.id}",
        type=TRIGGER_TYPE,
        name=name,
        user_id=f"trigger:{name}",
        timestamp=at if at.tzinfo else at.replace(tzinfo=UTC),
        payload={"type": TRIGGER_TYPE, "event": name, "id": body.id, "properties": body.properties},
    )
    [(_, is_new)] = await record_events(session=session, events=[event])
    await session.commit()
    relay.wake()
    return TriggerAccepted(
        trigger=name,
        id=body.id,
        occurrence=occurrence,
        campaigns=[c.campaign_id for c in starting],
        duplicate=not is_new,
    )
