"""api: external triggers — something happened in the world (rain forecast in Shanghai, a
price drop): every active campaign that starts on it reaches its audience.

The occurrence is written to the outbox like any event (its id makes a repeat a no-op)
and answered 202; the relay then starts one fan-out workflow per occurrence
(workflows/fanout.py), which starts each member's journey once. `GET .../{name}/{id}` shows
an operator where an occurrence is: its outbox row, its fan-out and the fan-out's counts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from api.deps import (
    CampaignIndexDep,
    RelayDep,
    ServicesDep,
    SessionDep,
    SettingsDep,
    admin_token_problem,
)
from api.routes.fanouts import (
    UNKNOWN,
    FanOutState,
    FanOutTargetState,
    view_fan_out,
)
from api.routes.operations import ERRORS
from api.schemas import Message
from core.definition import SLUG
from core.events import MAX_EVENT_BYTES, format_path, json_problems, loads, text_problem
from core.fanout import fanout_workflow_id, trigger_occurrence
from core.routing import TRIGGER_TYPE
from store.events import NewEvent, record_events
from store.models import Event

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
        message_id=trigger_message_id(name, body.id),
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


def trigger_message_id(name: str, trigger_id: str) -> str:
    """The outbox row of an occurrence: its message id (a repeat finds it taken)."""
    return f"trigger:{name}:{trigger_id}"


NOT_STARTED = "not_started"
"""The fan-out's status before the relay started its workflow."""


class OccurrenceReceived(BaseModel):
    """The occurrence's outbox row."""

    status: str
    """`pending` until the relay routes it; `routed` once its fan-out was started (or
    found started); `ignored` when no active campaign started on the trigger by then;
    `failed` when routing gave up (`last_error` says why)."""
    received_at: datetime
    routed_at: datetime | None
    attempts: int
    """Routing attempts that failed (Temporal out of reach included)."""
    last_error: str | None


class TriggerOccurrence(BaseModel):
    trigger: str
    id: str
    occurrence: str
    received: OccurrenceReceived
    fan_out: FanOutState
    campaigns: list[FanOutTargetState]
    """The campaigns it reaches: as its fan-out fired (its workflow's input), or before it
    started, the active campaigns that start on the trigger now."""
    note: str | None = None
    """Why there are no counts (yet), in words."""


@router.get(
    "/{name}/{trigger_id:path}",
    response_model=TriggerOccurrence,
    responses={
        **ERRORS,
        401: {"model": Message, "description": "missing or wrong token"},
        404: {"model": Message, "description": "no such occurrence was posted"},
    },
    summary="An occurrence's fan-out: received, started, its counts, campaigns halted",
)
async def get_trigger(
    session: SessionDep,
    campaigns: CampaignIndexDep,
    services: ServicesDep,
    name: Annotated[str, Path(pattern=SLUG)],
    trigger_id: Annotated[str, Path(min_length=1, max_length=200)],
) -> TriggerOccurrence:
    """The admin token or the trigger token, as for posting. A fan-out running answers its
    progress query; when Temporal (or a worker) does not answer, the fan-out's status is
    `unknown`, with a note saying why, and the occurrence as received is still shown."""
    row = None
    if text_problem(trigger_id) is None:  # else it was refused when posted (NUL, …)
        row = await session.scalar(
            select(Event).where(
                Event.message_id == trigger_message_id(name, trigger_id),
                Event.type == TRIGGER_TYPE,
            )
        )
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no occurrence {trigger_id!r} of trigger {name!r} was posted "
            f"(POST /v1/triggers/{name} with that id posts it)",
        )
    received = OccurrenceReceived(
        status=row.status,
        received_at=row.received_at,
        routed_at=row.routed_at,
        attempts=row.attempts,
        last_error=row.last_error,
    )
    await session.rollback()  # no transaction held open while Temporal is asked
    occurrence = trigger_occurrence(name, trigger_id)
    workflow_id = fanout_workflow_id(occurrence)
    answer = TriggerOccurrence(
        trigger=name,
        id=trigger_id,
        occurrence=occurrence,
        received=received,
        fan_out=FanOutState(workflow_id=workflow_id, status=NOT_STARTED, progress=None),
        campaigns=[],
    )
    client = services.temporal.client
    if client is None:
        answer.fan_out.status = UNKNOWN
        answer.note = (
            f"the fan-out could not be read: Temporal is unreachable at "
            f"{services.temporal.address}; try again shortly"
        )
        return answer
    try:
        view = await view_fan_out(client, workflow_id, missing=workflow_id)
    except HTTPException:  # 404: no fan-out (yet): what it would reach if routed now
        await campaigns.refresh()
        answer.campaigns = [
            FanOutTargetState(campaign_id=c.campaign_id, version=c.version, state=NOT_STARTED)
            for c in campaigns.index.triggers.get(name, ())
        ]
        answer.note = _not_started(received)
        return answer
    answer.fan_out, answer.campaigns, answer.note = view.fan_out, view.campaigns, view.note
    return answer


def _not_started(received: OccurrenceReceived) -> str:
    if received.status == "ignored":
        return "no fan-out: no active campaign started on the trigger when it was routed"
    if received.status == "failed":
        return f"no fan-out: routing gave up ({received.last_error})"
    if received.status == "routed":
        return "its fan-out workflow is gone (past Temporal's retention)"
    return "not started yet: the relay has not routed it" + (
        f" ({received.attempts} attempts failed: {received.last_error})"
        if received.attempts
        else ""
    )
