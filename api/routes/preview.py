"""api: preview — a campaign's send step rendered for a user, exactly as `deliver` would,
without sending it."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, status

from api.deps import AdminDep, SessionDep, SettingsDep
from api.routes.campaigns import CampaignId
from api.schemas import Message, PreviewEvent, PreviewPublic, PreviewRequest
from core.definition import Channel, SendStep
from core.events import utcnow
from core.sms import count_segments
from core.templates.render import RenderError, message_context, render_message
from store import campaigns as store
from store.profiles import get_profile

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"], dependencies=[AdminDep])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Message, "description": "the body cannot be read (e.g. a 5000-digit number)"},
    401: {"model": Message, "description": "missing or wrong admin token"},
    404: {"model": Message, "description": "no such campaign, version or step"},
    409: {"model": Message, "description": "the stored version no longer validates"},
    422: {"model": Message, "description": "not a send step, or the template fails to render"},
}


def _event(event: PreviewEvent, message_id: str) -> dict[str, Any]:
    """The same shape as `JourneyEvent.as_context()`, which `deliver` renders with."""
    return {
        "name": event.name,
        "message_id": message_id,
        "timestamp": (event.timestamp or utcnow()).isoformat(),
        "properties": event.properties,
    }


@router.post(
    "/{campaign_id}/preview",
    response_model=PreviewPublic,
    responses=ERRORS,
    summary="Render a send step's message for a user, without sending it",
)
async def preview(
    campaign_id: CampaignId, body: PreviewRequest, session: SessionDep, settings: SettingsDep
) -> PreviewPublic:
    campaign = await store.get_campaign(session=session, campaign_id=campaign_id)
    if campaign is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {campaign_id!r}")
    number = body.version or campaign.current_version
    definition = await store.load_definition(
        session=session, campaign_id=campaign_id, version=number
    )
    try:
        step = definition.step(body.step_id)
    except KeyError:
        steps = ", ".join(s.id for s in definition.steps)
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"campaign {campaign_id!r} version {number} has no step {body.step_id!r} "
            f"(steps: {steps})",
        ) from None
    if not isinstance(step, SendStep):
        raise HTTPException(
            422,
            f"step {step.id!r} is a {step.type} step; only send steps have a message",
        )

    traits: dict[str, Any] = {}
    if body.user_id is not None:
        profile = await get_profile(session=session, user_id=body.user_id)
        traits = dict(profile.traits) if profile else {}
    traits.update(body.traits)
    event = _event(body.event or PreviewEvent(name=definition.entry.event_name()), "preview-event")
    context = message_context(
        user_id=body.user_id or "preview-user",
        traits=traits,
        event=event,
        last_event=_event(body.last_event, "preview-last-event") if body.last_event else None,
        campaign={"id": definition.id, "name": definition.name, "version": number},
        default_timezone=settings.default_timezone,
    )
    try:
        # Off the event loop, as in `deliver`: a render may take up to RENDER_SECONDS.
        message = await asyncio.to_thread(
            render_message, definition.templates[step.template], context, name=step.template
        )
    except RenderError as exc:
        raise HTTPException(422, str(exc)) from exc

    sms = count_segments(message.body) if step.channel == Channel.sms else None
    return PreviewPublic(
        campaign_id=campaign_id,
        version=number,
        step_id=step.id,
        channel=step.channel,
        template=step.template,
        subject=message.subject,
        body=message.body,
        html=message.html,
        data=message.data,
        segments=sms.segments if sms else None,
        encoding=sms.encoding if sms else None,
    )
