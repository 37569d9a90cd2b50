"""api: one user's profile, consent and journeys."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from temporalio.client import Client

from api.deps import AdminDep, ServicesDep, SessionDep
from api.routes.journeys import DeliveryPublic, delivery_public
from api.schemas import Message
from core.events import StoredUserId
from core.journey import QUERY_STATE, JourneyState
from store import reports
from store.entries import person_journeys
from store.identities import canonical_user, person_ids
from store.models import JourneyEntry
from store.profiles import first_and_last_seen, get_profile
from store.subscriptions import list_subscriptions, list_suppressions

router = APIRouter(prefix="/v1/users", tags=["users"], dependencies=[AdminDep])

STATE_TIMEOUT = timedelta(seconds=2)
"""Each running journey's `state` query (asked concurrently) waits at most this: a journey
no worker answers for is listed from the store, with a note, and the call still answers."""
LATEST_DELIVERIES = 20


class SubscriptionPublic(BaseModel):
    channel: str
    subscription_group: str
    """A campaign's group, or `*` for the whole channel."""
    status: str
    source: str
    updated_at: datetime


class SuppressionPublic(BaseModel):
    channel: str
    reason: str
    created_at: datetime


class Consent(BaseModel):
    """What the person chose (anything not listed is subscribed) and the channels Nudge
    no longer sends them on (a hard bounce, a complaint)."""

    subscriptions: list[SubscriptionPublic] = Field(default_factory=list)
    suppressions: list[SuppressionPublic] = Field(default_factory=list)


class UserJourney(BaseModel):
    """One journey of the person: its row in the membership index and, while it runs, what
    it is doing now (the journey's `state` query)."""

    campaign_id: str
    campaign_version: int
    user_id: str
    """The id it runs under (an anonymous one, for a journey started before a login)."""
    workflow_id: str
    status: str
    entered_at: datetime
    ended_at: datetime | None = None
    exit_reason: str | None = None
    variant: str | None = None
    current_step: str | None = None
    waiting_for: str | None = None
    step_started_at: datetime | None = None
    note: str | None = None
    """Why the current step is missing: the journey did not answer in time."""


class UserView(BaseModel):
    user_id: str
    """The person's id (the canonical one: the user id their other ids are linked to)."""
    other_ids: list[str] = Field(default_factory=list)
    traits: dict[str, Any] = Field(default_factory=dict)
    first_seen: datetime | None = None
    """Their earliest stored event (any id); the profile's creation when no event is."""
    last_seen: datetime | None = None
    consent: Consent = Field(default_factory=Consent)
    journeys: list[UserJourney] = Field(default_factory=list)
    """Every journey of theirs, the latest first."""
    deliveries: list[DeliveryPublic] = Field(default_factory=list)
    """The latest sends to them (20), the latest first."""


@router.get(
    "/{user_id:path}",
    response_model=UserView,
    responses={
        401: {"model": Message, "description": "missing or wrong admin token"},
        404: {"model": Message, "description": "Nudge has never heard of this user"},
    },
    summary="A user's profile, other ids, consent, journeys and latest deliveries",
)
async def get_user(user_id: StoredUserId, session: SessionDep, services: ServicesDep) -> UserView:
    """Everything an operator asks about one person, in one call. Any of their ids finds
    them. Running journeys are asked their current step concurrently; Temporal or a worker
    that does not answer leaves those journeys as the store has them, with a note."""
    person = await canonical_user(session, user_id)
    ids = await person_ids(session, person)
    profile = await get_profile(session=session, user_id=person)
    journeys = await person_journeys(session=session, user_ids=ids)
    deliveries = await reports.person_deliveries(session, user_ids=ids, limit=LATEST_DELIVERIES)
    first_seen, last_seen = await first_and_last_seen(session=session, user_ids=ids)
    subscriptions = await list_subscriptions(session=session, user_id=person)
    suppressions = await list_suppressions(session=session, user_id=person)
    known = (profile, len(ids) > 1, journeys, deliveries, first_seen, subscriptions, suppressions)
    if not any(known):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no user {user_id!r}: Nudge has no event, profile, journey or consent of theirs",
        )
    views = await _with_states(services.temporal.client, journeys)
    return UserView(
        user_id=person,
        other_ids=[i for i in ids if i != person],
        traits=dict(profile.traits) if profile else {},
        first_seen=first_seen or (profile.created_at if profile else None),
        last_seen=last_seen or (profile.updated_at if profile else None),
        consent=Consent(
            subscriptions=[
                SubscriptionPublic(
                    channel=s.channel,
                    subscription_group=s.subscription_group,
                    status=s.status,
                    source=s.source,
                    updated_at=s.updated_at,
                )
                for s in subscriptions
            ],
            suppressions=[
                SuppressionPublic(channel=s.channel, reason=s.reason, created_at=s.created_at)
                for s in suppressions
            ],
        ),
        journeys=views,
        deliveries=[delivery_public(d) for d in deliveries],
    )


async def _with_states(client: Client | None, rows: list[JourneyEntry]) -> list[UserJourney]:
    views = [
        UserJourney(
            campaign_id=r.campaign_id,
            campaign_version=r.campaign_version,
            user_id=r.user_id,
            workflow_id=r.workflow_id,
            status=r.status,
            entered_at=r.entered_at,
            ended_at=r.ended_at,
            exit_reason=r.exit_reason,
            variant=r.variant,
        )
        for r in rows
    ]
    running = [v for v in views if v.status == "running"]
    # Re-entries share a workflow id: only the latest row of one asks (the query reaches
    # the latest run), the others are journeys that ended unrecorded.
    asked: dict[str, UserJourney] = {}
    for view in running:
        asked.setdefault(view.workflow_id, view)
    if client is None:
        for view in running:
            view.note = "Temporal is unreachable: shown as the store has it"
        return views
    answers = await asyncio.gather(
        *(_state(client, workflow_id) for workflow_id in asked), return_exceptions=False
    )
    for view, (state, problem) in zip(asked.values(), answers, strict=True):
        if state is None:
            view.note = problem
            continue
        view.current_step = state.current_step
        view.waiting_for = state.waiting_for
        view.step_started_at = state.step_started_at
        if state.status.value != view.status:
            view.note = f"the journey has ended ({state.status.value}); its row is not updated yet"
    for view in running:
        if view.current_step is None and view.note is None and asked[view.workflow_id] is not view:
            view.note = "an earlier journey under the same id: its end was not recorded"
    return views


async def _state(client: Client, workflow_id: str) -> tuple[JourneyState | None, str | None]:
    """The journey's `state` query's answer, or None and why there is none."""
    try:
        state: JourneyState = await client.get_workflow_handle(workflow_id).query(
            QUERY_STATE, result_type=JourneyState, rpc_timeout=STATE_TIMEOUT
        )
    except Exception as exc:  # unreachable, no worker, gone: listed with a note
        reason = str(exc) or type(exc).__name__
        return None, f"the journey did not answer its state query: {reason[:200]}"
    return state, None
