"""activities: the send policy against the store — gather what `core.policy` decides on,
reserve the send against the caps, record a suppression as a delivery."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.config import Settings
from core.journey import DeliveryStatus, PolicyAction, PolicyDecision, PolicyRequest
from core.policy import ALLOW, Reserve, SendFacts, bounced, decide_send, suppress
from store import deliveries
from store.campaigns import load_definition
from store.caps import reserve_send
from store.identities import person_ids
from store.profiles import get_profile
from store.subscriptions import get_suppression, unsubscribed_from


async def check_send_policy(
    *,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    request: PolicyRequest,
    now: datetime,
) -> PolicyDecision:
    """Decide one send (core.policy). A suppression is recorded as a `suppressed` delivery
    with its reason; a retried check returns the recorded answer. Raises
    `VersionUnavailable` when the journey's campaign version cannot be used."""
    async with sessions() as session:
        recorded = await deliveries.get_delivery(
            session=session, idempotency_key=request.idempotency_key
        )
        if recorded is not None and recorded.status == DeliveryStatus.suppressed.value:
            return suppress(recorded.error or "suppressed")
        # One person, one policy: a journey that began under an anonymous id is judged by
        # the person's consent, zone and caps (store.identities).
        person = await person_ids(session, request.user_id)
        suppression = await get_suppression(
            session=session, user_id=person[0], channel=request.channel
        )
        if suppression is None:
            definition = await load_definition(
                session=session, campaign_id=request.campaign_id, version=request.campaign_version
            )
            opted_out = await unsubscribed_from(
                session=session,
                user_id=person[0],
                channel=request.channel,
                group=definition.subscription_group,
            )
            profile = await get_profile(session=session, user_id=person[0])
    if suppression is not None:
        # First, whatever the campaign (even one whose version can no longer be read).
        decision = bounced(request.channel, suppression.reason)
        return await _record(sessions, request, decision.reason or "suppressed")
    facts = SendFacts(
        definition=definition,
        channel=request.channel,
        timezone=profile.traits.get("timezone") if profile else None,
        unsubscribed=opted_out is not None,
    )
    verdict = decide_send(facts, now=now, settings=settings)
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
            person=person,
        )
        if reservation.hit is not None:
            await deliveries.record_suppressed(
                session=session, request=request, reason=reservation.hit.label
            )
            return suppress(reservation.hit.label)
    return ALLOW


def _last_try(request: PolicyRequest) -> bool:
    """The journey will not wait again: its deferral is a suppression, recorded as one."""
    return request.max_attempts is not None and request.attempt >= request.max_attempts


async def _record(
    sessions: async_sessionmaker[AsyncSession], request: PolicyRequest, reason: str
) -> PolicyDecision:
    async with sessions() as session, session.begin():
        row = await deliveries.record_suppressed(session=session, request=request, reason=reason)
    return suppress(row.error or reason)
