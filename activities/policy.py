"""activities: the send policy against the store — gather what `core.policy` decides on,
reserve the send against the caps, record a suppression as a delivery."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.config import Settings
from core.definition import CampaignDefinition
from core.journey import DeliveryStatus, PolicyAction, PolicyDecision, PolicyRequest
from core.policy import ALLOW, Reserve, SendFacts, bounced, decide_send, suppress
from store import deliveries
from store.campaigns import load_definition
from store.caps import reserve_send
from store.identities import person_ids
from store.models import Delivery, Profile, Suppression
from store.profiles import get_profile
from store.subscriptions import get_suppression, unsubscribed_from

DefinitionOf = Callable[[AsyncSession, str, int], Awaitable[CampaignDefinition]]
"""Reads a journey's campaign version (`store.campaigns.DefinitionCache.get`); raises
`VersionUnavailable` when it cannot be used."""


@dataclass(frozen=True)
class PersonFacts:
    """What one send reads of the store before anything is written: the policy's facts and
    the person the delivery renders for, in one session."""

    recorded: Delivery | None
    """This send's delivery row, when an earlier attempt wrote one."""
    person: list[str]
    """Every id of the person (store.identities.person_ids), the canonical one first."""
    suppression: Suppression | None
    definition: CampaignDefinition | None
    """None when a suppression answers first (a bounce is decided before the version is
    read, so a version that no longer validates does not hide it) or the row is recorded."""
    opted_out: bool = False
    profile: Profile | None = None


async def read_facts(
    session: AsyncSession, request: PolicyRequest, definition_of: DefinitionOf
) -> PersonFacts:
    recorded = await deliveries.get_delivery(
        session=session, idempotency_key=request.idempotency_key
    )
    if recorded is not None and recorded.status == DeliveryStatus.suppressed.value:
        return PersonFacts(recorded, [request.user_id], None, definition=None)
    # One person, one policy: a journey that began under an anonymous id is judged by the
    # person's consent, zone and caps (store.identities).
    person = await person_ids(session, request.user_id)
    suppression = await get_suppression(session=session, user_id=person[0], channel=request.channel)
    if suppression is not None:
        return PersonFacts(recorded, person, suppression, definition=None)
    definition = await definition_of(session, request.campaign_id, request.campaign_version)
    opted_out = await unsubscribed_from(
        session=session,
        user_id=person[0],
        channel=request.channel,
        group=definition.subscription_group,
    )
    profile = await get_profile(session=session, user_id=person[0])
    return PersonFacts(
        recorded,
        person,
        suppression,
        definition,
        opted_out=opted_out is not None,
        profile=profile,
    )


async def check_send_policy(
    *,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    request: PolicyRequest,
    now: datetime,
    definition_of: DefinitionOf | None = None,
    facts: PersonFacts | None = None,
) -> PolicyDecision:
    """Decide one send (core.policy). A suppression is recorded as a `suppressed` delivery
    with its reason; a retried check returns the recorded answer. Raises
    `VersionUnavailable` when the journey's campaign version cannot be used. `facts`: what
    the caller read already (`read_facts`), else read here."""
    if facts is None:
        async with sessions() as session:
            facts = await read_facts(session, request, definition_of or _stored)
    recorded = facts.recorded
    if recorded is not None and recorded.status == DeliveryStatus.suppressed.value:
        return suppress(recorded.error or "suppressed")
    if facts.suppression is not None:
        # First, whatever the campaign (even one whose version can no longer be read).
        decision = bounced(request.channel, facts.suppression.reason)
        return await _record(sessions, request, decision.reason or "suppressed")
    definition = facts.definition
    assert definition is not None
    profile = facts.profile
    verdict = decide_send(
        SendFacts(
            definition=definition,
            channel=request.channel,
            timezone=profile.traits.get("timezone") if profile else None,
            unsubscribed=facts.opted_out,
        ),
        now=now,
        settings=settings,
    )
    if not isinstance(verdict, Reserve):
        if verdict.action is PolicyAction.suppress:
            return await _record(sessions, request, verdict.reason or "suppressed")
        if verdict.action is PolicyAction.defer and _last_try(request):
            reason = f"still deferred after {request.max_attempts} tries: {verdict.reason}"
            return await _record(sessions, request, reason)
        return verdict
    # A fresh transaction whose first statement writes: see `reserve_send`.
    async with sessions() as session, session.begin():
        reservation = await reserve_send(
            session=session,
            idempotency_key=request.idempotency_key,
            user_id=request.user_id,
            channel=request.channel,
            campaign_id=request.campaign_id,
            group=definition.subscription_group,
            priority=definition.priority.value,
            caps=verdict.caps,
            at=now,
            person=facts.person,
        )
        if reservation.hit is not None:
            await deliveries.record_suppressed(
                session=session, request=request, reason=reservation.hit.label
            )
            return suppress(reservation.hit.label)
    return ALLOW


async def _stored(session: AsyncSession, campaign_id: str, version: int) -> CampaignDefinition:
    return await load_definition(session=session, campaign_id=campaign_id, version=version)


def _last_try(request: PolicyRequest) -> bool:
    """The journey will not wait again: its deferral is a suppression, recorded as one."""
    return request.max_attempts is not None and request.attempt >= request.max_attempts


async def _record(
    sessions: async_sessionmaker[AsyncSession], request: PolicyRequest, reason: str
) -> PolicyDecision:
    async with sessions() as session, session.begin():
        row = await deliveries.record_suppressed(session=session, request=request, reason=reason)
    return suppress(row.error or reason)
