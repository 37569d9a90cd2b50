"""store: the date-trait index and the date entries' sweep.

No per-user timers: a profile trait that reads as a date (`birthday: 1990-05-17`) is kept
in `date_traits` (month-day and value, indexed) whenever a profile is written
(`record_date_traits`, called by `store.profiles.merge_traits`). Every minute the clock
(workflows/clock.py, started by a Temporal Schedule) asks `due_dates` which users' moments
came in (now - lookback, now]: for each active date campaign it reads only the index rows
of the few candidate days (core.schedule.candidate_days: a day either side of the window
covers every zone, shifted by the offset), works out each user's moment in their zone
(core.schedule.occurrences_between), keeps the campaign's audience, and answers one
internal `Date Reached` event per (campaign, user, occurrence) not written before. Its
message id names the occurrence (`nudge:date:{campaign}:{year}:{user hash}` for yearly,
the date for once), so the outbox's unique message id makes the greeting exactly once:
a repeated sweep, a sweep after a changed trait within the year, two workers — one event.
The relay routes it to the campaign's journey like any event.

The lookback (NUDGE_DATE_LOOKBACK_HOURS, a day by default) is how late a moment may still
be greeted: after an outage of the worker or the database the next sweep catches up on
the day missed (a late greeting is better than none), and a user who gets the trait, or
gets it changed to today, after today's moment is still greeted by the next sweep. A
campaign activated today greets the users whose moment came in the last lookback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.conditions import evaluate_all
from core.definition import DateEntry
from core.events import DATE_REACHED
from core.routing import INTERNAL_TYPE
from core.schedule import (
    candidate_days,
    date_of_trait,
    month_days,
    occurrences_between,
    parse_clock,
    user_zone,
)
from store.audiences import criterion_holds
from store.campaigns import active_definitions
from store.db import dialect_insert
from store.events import NewEvent
from store.models import (
    DateTrait,
    Event,
    Identity,
    Profile,
    SegmentMembership,
)

_CHUNK = 500


async def record_date_traits(session: AsyncSession, user_id: str, traits: dict[str, Any]) -> None:
    """Keep the index in step with traits just written: a value that reads as a date
    (core.schedule.date_of_trait: ISO `YYYY-MM-DD…` only) is upserted, any other value
    (a number, a text, null) removes the trait's row. Traits not in `traits` stay."""
    dates = {name: day for name, value in traits.items() if (day := date_of_trait(value))}
    others = [name for name in traits if name not in dates]
    if dates:
        statement = dialect_insert(session, DateTrait.__table__).values(
            [
                {"user_id": user_id, "trait": name, "month_day": f"{d:%m-%d}", "value": d}
                for name, d in sorted(dates.items())
            ]
        )
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["user_id", "trait"],
                set_={
                    "month_day": statement.excluded.month_day,
                    "value": statement.excluded.value,
                },
            )
        )
    for start in range(0, len(others), _CHUNK):
        await session.execute(
            delete(DateTrait).where(
                DateTrait.user_id == user_id, DateTrait.trait.in_(others[start : start + _CHUNK])
            )
        )


@dataclass(frozen=True)
class DateCampaign:
    """An active campaign whose journeys start on a date trait: its current version's
    entry."""

    campaign_id: str
    version: int
    entry: DateEntry


async def active_date_campaigns(*, session: AsyncSession) -> list[DateCampaign]:
    """The date entries of active campaigns' current versions (store.campaigns.
    active_definitions: a version today's rules refuse is left out, as routing leaves it
    out)."""
    return [
        DateCampaign(campaign_id, version, definition.entry)
        for campaign_id, version, definition in await active_definitions(
            session=session, entry_key="date"
        )
        if isinstance(definition.entry, DateEntry)
    ]


def date_message_id(campaign_id: str, occurrence: str, user_id: str) -> str:
    """The outbox id of one greeting: the occurrence (a year, or a date for `once`) and a
    hash of the user id (bounded length, no personal data in the id)."""
    digest = hashlib.sha256(user_id.encode()).hexdigest()[:24]
    return f"nudge:date:{campaign_id}:{occurrence}:{digest}"


async def due_dates(
    session: AsyncSession,
    *,
    campaigns: Sequence[DateCampaign],
    now: datetime,
    lookback: timedelta,
    default_timezone: str,
) -> list[NewEvent]:
    """The `Date Reached` events whose moment falls in (now - lookback, now] and which are
    not in the outbox yet, oldest moment first; write them with `record_events`
    (module docstring). Reads the date index for the candidate days only."""
    start = now - lookback
    due: list[NewEvent] = []
    for campaign in campaigns:
        due.extend(await _due_for(session, campaign, start, now, default_timezone))
    if not due:
        return []
    ids = [event.message_id for event in due]
    written: set[str] = set()
    for first in range(0, len(ids), _CHUNK):
        chunk = ids[first : first + _CHUNK]
        written.update(
            await session.scalars(select(Event.message_id).where(Event.message_id.in_(chunk)))
        )
    return sorted(
        (event for event in due if event.message_id not in written),
        key=lambda event: (event.timestamp, event.message_id),
    )


async def _due_for(
    session: AsyncSession,
    campaign: DateCampaign,
    start: datetime,
    end: datetime,
    default_timezone: str,
) -> Iterable[NewEvent]:
    entry = campaign.entry
    days = candidate_days(start=start, end=end, offset_days=entry.offset_days)
    statement = (
        select(DateTrait.user_id, DateTrait.value, Profile.traits)
        .join(Profile, Profile.user_id == DateTrait.user_id)
        .where(DateTrait.trait == entry.date)
        # An anonymous id linked to a user is that person: greeted under the user id.
        .where(
            ~select(Identity.anonymous_id)
            .where(Identity.anonymous_id == DateTrait.user_id)
            .exists()
        )
    )
    if entry.repeat == "once":
        statement = statement.where(DateTrait.value.between(days[0], days[-1]))
    else:
        statement = statement.where(DateTrait.month_day.in_(sorted(month_days(days))))
    audience = entry.audience
    if audience is not None and audience.segment is not None:
        statement = statement.join(
            SegmentMembership,
            and_(
                SegmentMembership.user_id == DateTrait.user_id,
                SegmentMembership.segment_id == audience.segment,
                SegmentMembership.member.is_(True),
            ),
        )
    clock = parse_clock(entry.time)
    found = []
    for user_id, value, traits in await session.execute(statement.order_by(DateTrait.user_id)):
        traits = dict(traits or {})
        if audience is not None and not evaluate_all(
            audience.conditions, {"traits": traits, "trigger": {}}
        ):
            continue
        tz = user_zone(traits.get("timezone"), default_timezone)
        for occurrence in occurrences_between(
            value,
            repeat=entry.repeat,
            offset_days=entry.offset_days,
            clock=clock,
            tz=tz,
            start=start,
            end=end,
        ):
            key = (
                str(occurrence.occurrence.year)
                if entry.repeat == "yearly"
                else occurrence.occurrence.isoformat()
            )
            properties = {
                "campaign": campaign.campaign_id,
                "trait": entry.date,
                "date": value.isoformat(),
                "occurrence": occurrence.occurrence.isoformat(),
            }
            found.append(
                NewEvent(
                    message_id=date_message_id(campaign.campaign_id, key, user_id),
                    type=INTERNAL_TYPE,
                    name=DATE_REACHED,
                    user_id=user_id,
                    timestamp=occurrence.at,
                    payload={
                        "type": INTERNAL_TYPE,
                        "event": DATE_REACHED,
                        "userId": user_id,
                        "properties": properties,
                        "timestamp": occurrence.at.isoformat(),
                        "messageId": date_message_id(campaign.campaign_id, key, user_id),
                    },
                )
            )
    if audience is not None and audience.events and found:
        # Event-history criteria of the audience, read from stored events for just these
        # users (a date entry has no trigger: `trigger.` paths read nothing).
        users = sorted({event.user_id for event in found})
        for criterion in audience.events:
            holding = await criterion_holds(session, criterion, users, {}, end)
            users = [u for u in users if u in holding]
        kept = set(users)
        found = [event for event in found if event.user_id in kept]
    return found
