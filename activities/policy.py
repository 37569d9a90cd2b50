"""activities: the send policy — may this message go to this user now? — and the
List-Unsubscribe headers that let a user say no from their mailbox.

Order of the checks, the first that answers wins:
1. a hard-bounce suppression on the channel: suppress, whatever the priority;
2. transactional campaigns: allow (no opt-outs, quiet hours or caps apply to them);
3. unsubscribed from the campaign's group on the channel (or from `*`): suppress;
4. quiet hours in the user's zone (`timezone` trait, else the default): defer to their end;
5. frequency caps (settings and the campaign's own): suppress naming the cap, else allow
   with the slot reserved in the send ledger.

Caps apply equally to high, normal and low priority: the ledger is first come, first
served, and only transactional messages bypass it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError

from activities.channels.base import OutgoingMessage
from core.config import CapRule, Settings
from core.definition import CampaignDefinition, Priority
from core.durations import format_duration
from core.journey import DeliveryStatus, PolicyAction, PolicyDecision, PolicyRequest
from core.links import make_token, unsubscribe_url
from core.schedule import parse_clock, quiet_hours_end, user_zone
from store import deliveries
from store.campaigns import get_version
from store.caps import CapCheck, reserve_send
from store.profiles import get_profile
from store.subscriptions import get_suppression, unsubscribed_from

CAMPAIGN_VERSION_MISSING = "CampaignVersionMissing"

# -- pure parts -----------------------------------------------------------------------------


def format_window(window: timedelta) -> str:
    """'24h' for a day or two (how caps are usually said), '7d', '1h30m' otherwise."""
    seconds = int(window.total_seconds())
    if seconds % 3600 == 0 and seconds <= 48 * 3600:
        return f"{seconds // 3600}h"
    return format_duration(window)


def describe_rule(rule: CapRule) -> str:
    """'cap: 3 marketing messages per 24h', 'cap: 1 sms message per 24h'."""
    what = " ".join(part for part in (rule.group, rule.channel) if part)
    noun = "message" if rule.limit == 1 else "messages"
    words = f"{rule.limit} {what} {noun}" if what else f"{rule.limit} {noun}"
    return f"cap: {words} per {format_window(rule.window)}"


def cap_checks(
    *, rules: Sequence[CapRule], definition: CampaignDefinition, channel: str
) -> list[CapCheck]:
    """The caps one send counts against: each settings rule whose group and channel (when
    set) match the send — a rule with neither counts every non-transactional send — then
    the campaign's own caps. None for a transactional campaign."""
    if definition.priority is Priority.transactional:
        return []
    group = definition.subscription_group
    checks = [
        CapCheck(
            limit=rule.limit,
            window=rule.window,
            label=describe_rule(rule),
            group=rule.group,
            channel=rule.channel,
        )
        for rule in rules
        if rule.group in (None, group) and rule.channel in (None, channel)
    ]
    for cap in definition.caps:
        noun = "message" if cap.limit == 1 else "messages"
        checks.append(
            CapCheck(
                limit=cap.limit,
                window=cap.window,
                label=(
                    f"cap: {cap.limit} {noun} of campaign {definition.id} "
                    f"per {format_window(cap.window)}"
                ),
                campaign_id=definition.id,
            )
        )
    return checks


def quiet_hours_decision(
    *, now: datetime, settings: Settings, timezone: object
) -> PolicyDecision | None:
    """`defer` until the quiet window ends when `now` is inside it in the user's zone
    (`timezone` as the trait holds it: an IANA name, else the default zone); else None."""
    if not settings.quiet_hours_start or not settings.quiet_hours_end:
        return None
    tz = user_zone(timezone, settings.default_timezone)
    start = parse_clock(settings.quiet_hours_start)
    end = parse_clock(settings.quiet_hours_end)
    until = quiet_hours_end(now, start, end, tz)
    if until is None:
        return None
    return PolicyDecision(
        action=PolicyAction.defer,
        reason=(f"quiet hours {settings.quiet_hours_start}-{settings.quiet_hours_end} in {tz.key}"),
        defer_until=until,
    )


def suppress(reason: str) -> PolicyDecision:
    return PolicyDecision(action=PolicyAction.suppress, reason=reason)


ALLOW = PolicyDecision(action=PolicyAction.allow)


# -- the check, against the store ----------------------------------------------------------


@dataclass(frozen=True)
class _Subject:
    definition: CampaignDefinition
    traits: Mapping[str, object]


async def _load(sessions: async_sessionmaker[AsyncSession], request: PolicyRequest) -> _Subject:
    async with sessions() as session:
        version = await get_version(
            session=session, campaign_id=request.campaign_id, version=request.campaign_version
        )
        profile = await get_profile(session=session, user_id=request.user_id)
    if version is None:
        raise ApplicationError(
            f"campaign {request.campaign_id!r} version {request.campaign_version} not found",
            type=CAMPAIGN_VERSION_MISSING,
            non_retryable=True,
        )
    try:
        definition = CampaignDefinition.model_validate(version.definition)
    except ValidationError as exc:
        raise ApplicationError(
            f"stored definition of {request.campaign_id!r} does not validate: {exc}",
            type=CAMPAIGN_VERSION_MISSING,
            non_retryable=True,
        ) from exc
    return _Subject(definition=definition, traits=dict(profile.traits) if profile else {})


async def check_send_policy(
    *,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    request: PolicyRequest,
    now: datetime,
) -> PolicyDecision:
    """Decide one send (see the module's order). A suppression is recorded as a
    `suppressed` delivery with its reason; a retried check returns the recorded answer."""
    async with sessions() as session:
        recorded = await deliveries.get_delivery(
            session=session, idempotency_key=request.idempotency_key
        )
        if recorded is not None and recorded.status == DeliveryStatus.suppressed.value:
            return suppress(recorded.error or "suppressed")
        bounced = await get_suppression(
            session=session, user_id=request.user_id, channel=request.channel
        )
    if bounced is not None:
        return await _record(
            sessions, request, f"suppressed on {request.channel}: {bounced.reason}"
        )

    subject = await _load(sessions, request)
    definition = subject.definition
    if definition.priority is Priority.transactional:
        return ALLOW

    group = definition.subscription_group
    async with sessions() as session:
        opted_out = await unsubscribed_from(
            session=session, user_id=request.user_id, channel=request.channel, group=group
        )
    if opted_out is not None:
        return await _record(sessions, request, f"unsubscribed from {group} on {request.channel}")

    deferred = quiet_hours_decision(
        now=now, settings=settings, timezone=subject.traits.get("timezone")
    )
    if deferred is not None:
        return deferred

    checks = cap_checks(rules=settings.caps, definition=definition, channel=request.channel)
    # A fresh transaction whose first statement writes: see `reserve_send`.
    async with sessions() as session, session.begin():
        reservation = await reserve_send(
            session=session,
            idempotency_key=request.idempotency_key,
            user_id=request.user_id,
            channel=request.channel,
            campaign_id=request.campaign_id,
            group=group,
            priority=definition.priority.value,
            caps=checks,
            at=now,
        )
        if reservation.hit is not None:
            await deliveries.record_suppressed(
                session=session, request=request, reason=reservation.hit.label
            )
            return suppress(reservation.hit.label)
    return ALLOW


async def _record(
    sessions: async_sessionmaker[AsyncSession], request: PolicyRequest, reason: str
) -> PolicyDecision:
    async with sessions() as session, session.begin():
        row = await deliveries.record_suppressed(session=session, request=request, reason=reason)
    return suppress(row.error or reason)


# -- List-Unsubscribe (RFC 2369, RFC 8058) ----------------------------------------------------


def list_unsubscribe_hook(
    settings: Settings, *, clock: Callable[[], datetime] | None = None
) -> Callable[[OutgoingMessage], Mapping[str, str]]:
    """The email channels' `extra_headers` hook: for a message of a subscription group
    (every non-transactional one), a signed one-click unsubscribe URL and the
    `List-Unsubscribe-Post` header that tells mailbox providers a POST does it."""

    def now() -> datetime:
        return clock() if clock else datetime.now(UTC)

    def headers(message: OutgoingMessage) -> Mapping[str, str]:
        if message.subscription_group is None or message.priority == Priority.transactional:
            return {}
        token = make_token(
            secret=settings.link_secret,
            user_id=message.user_id,
            channel=message.channel,
            group=message.subscription_group,
            expires_at=now() + timedelta(days=settings.unsubscribe_link_days),
        )
        return {
            "List-Unsubscribe": f"<{unsubscribe_url(settings.public_url, token)}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    return headers
