"""store: journey entries — one row per journey started, read by re-entry rules, counts, and
the router as its membership index (who is in which journey)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.experiments import HOLDOUT, in_holdout
from core.journey import JourneyOutcome, JourneyStatus, VariantTaken
from core.stats import ENDED, ENTERED, GOAL_WITHOUT_MESSAGE
from store.attribution import Attributed, Goal, attribute
from store.campaigns import load_definition
from store.db import dialect_insert
from store.identities import person_ids
from store.models import Campaign, JourneyEntry, now
from store.stats import Bump, bump

ENTRY_FIELDS = {
    "campaign_id",
    "campaign_version",
    "user_id",
    "workflow_id",
    "run_id",
    "entry_message_id",
}
"""What identifies a journey's row: written when it starts, or by its outcome if first."""


async def record_entry(
    *,
    session: AsyncSession,
    campaign_id: str,
    campaign_version: int,
    user_id: str,
    workflow_id: str,
    run_id: str,
    entry_message_id: str,
    holdout: float = 0.0,
) -> bool:
    """Record that a journey started; True when this call wrote the row (and counted the
    entrant, in the holdout when the campaign's `holdout` share takes the user).

    False when the run is already recorded (a signal-with-start that joined the running
    journey returns its run id) or this entry event was already recorded for the campaign
    (the router retried, or the journey recorded itself first). ON CONFLICT DO NOTHING
    covers both unique keys, so racing routers agree instead of failing.
    """
    variant = HOLDOUT if in_holdout(campaign_id, user_id, holdout) else None
    return await _insert_entry(
        session,
        {
            "campaign_id": campaign_id,
            "campaign_version": campaign_version,
            "user_id": user_id,
            "workflow_id": workflow_id,
            "run_id": run_id,
            "entry_message_id": entry_message_id,
            "variant": variant,
        },
    )


async def _insert_entry(session: AsyncSession, values: dict[str, Any]) -> bool:
    """Insert a journey's row unless it exists; count its entrant when this call wrote it."""
    table = JourneyEntry.__table__
    at = values.setdefault("entered_at", now())
    statement = (
        dialect_insert(session, table)
        .values(**values)
        .on_conflict_do_nothing()
        .returning(table.c.id)
    )
    if (await session.execute(statement)).first() is None:
        return False
    await bump(
        session,
        Bump(
            campaign_id=values["campaign_id"],
            campaign_version=values["campaign_version"],
            variant=values.get("variant") if values.get("variant") == HOLDOUT else None,
            metric=ENTERED,
            at=at,
        ),
    )
    return True


async def reserve_entries(
    *,
    session: AsyncSession,
    campaign_id: str,
    campaign_version: int,
    entries: Sequence[tuple[str, str, str]],
    holdout: float = 0.0,
) -> None:
    """Write the rows of journeys about to start, (user, workflow id, entry message id)
    each, run id unknown and entrant not counted yet: `confirm_entries` does both once
    they started.

    Why before: the router signals only the journeys its membership index (these rows)
    says run (`running_journeys`). A row written after the start would leave a window in
    which the user's events are routed past a journey already running; written first, any
    event routed once the journey runs sees it. A row whose journey never starts (the
    starter died and was not retried) is harmless: its signal finds no journey. A row
    already there (a retried page) is kept as it is.
    """
    if not entries:
        return
    table = JourneyEntry.__table__
    at = now()
    rows = [
        {
            "campaign_id": campaign_id,
            "campaign_version": campaign_version,
            "user_id": user_id,
            "workflow_id": workflow_id,
            "run_id": None,
            "entry_message_id": message_id,
            "entered_at": at,
            "status": JourneyStatus.running.value,
            "variant": HOLDOUT if in_holdout(campaign_id, user_id, holdout) else None,
        }
        for user_id, workflow_id, message_id in entries
    ]
    await session.execute(dialect_insert(session, table).on_conflict_do_nothing(), rows)


async def confirm_entries(
    *, session: AsyncSession, campaign_id: str, started: Sequence[tuple[str, str]]
) -> int:
    """Complete the rows `reserve_entries` wrote, once their journeys were started:
    (entry message id, first run id) each. A start that joined a journey already running
    (its run id recorded by another row) adds no entry: that row is deleted, the running
    journey's own row stays. The others get their run id and count their entrant — once:
    a row confirmed before is left alone. Returns how many were counted."""
    if not started:
        return 0
    runs = [run_id for _, run_id in started]
    joined = set(
        await session.scalars(
            select(JourneyEntry.run_id).where(
                JourneyEntry.run_id.in_(runs), JourneyEntry.run_id.is_not(None)
            )
        )
    )
    counts: list[Bump] = []
    for message_id, run_id in started:
        reserved = (
            JourneyEntry.campaign_id == campaign_id,
            JourneyEntry.entry_message_id == message_id,
            JourneyEntry.run_id.is_(None),
        )
        if run_id in joined:
            await session.execute(delete(JourneyEntry).where(*reserved))
            continue
        changed = await session.execute(
            update(JourneyEntry)
            .where(*reserved)
            .values(run_id=run_id)
            .returning(JourneyEntry.campaign_version, JourneyEntry.variant, JourneyEntry.entered_at)
        )
        row = changed.first()
        if row is not None:
            version, variant, at = row
            counts.append(
                Bump(
                    campaign_id=campaign_id,
                    campaign_version=version,
                    variant=HOLDOUT if variant == HOLDOUT else None,
                    metric=ENTERED,
                    at=at,
                )
            )
    await bump(session, *counts)
    return len(counts)


async def release_entries(
    *, session: AsyncSession, campaign_id: str, message_ids: Sequence[str]
) -> int:
    """Delete the rows `reserve_entries` wrote for journeys that will not be started (a
    fan-out that stopped: its campaign paused): unconfirmed ones only, so no journey that
    runs loses its row. Returns how many were deleted."""
    if not message_ids:
        return 0
    deleted = await session.execute(
        delete(JourneyEntry).where(
            JourneyEntry.campaign_id == campaign_id,
            JourneyEntry.entry_message_id.in_(list(message_ids)),
            JourneyEntry.run_id.is_(None),
        )
    )
    return int(getattr(deleted, "rowcount", 0) or 0)


async def running_journeys(
    *,
    session: AsyncSession,
    campaign_ids: Sequence[str],
    user_ids: Sequence[str],
    ended_too: bool = False,
) -> frozenset[tuple[str, str]]:
    """The membership index: the (campaign, user id) pairs of `campaign_ids` and `user_ids`
    with a running journey — one query, no Temporal call.

    Every starter writes a journey's row so that an event routed after the start sees it
    (the router: before the user's next event, which the relay routes after this one; the
    fan-out: before starting, `reserve_entries`). A row still 'running' whose journey has
    ended (its outcome not recorded yet) only costs a signal that finds nobody.
    `ended_too`: journeys that ended count as well (an event tried before may have ended
    its journey itself: see `EventRouter._heard`).
    """
    if not campaign_ids or not user_ids:
        return frozenset()
    statement = (
        select(JourneyEntry.campaign_id, JourneyEntry.user_id)
        .where(
            JourneyEntry.campaign_id.in_(list(campaign_ids)),
            JourneyEntry.user_id.in_(list(user_ids)),
        )
        .distinct()
    )
    if not ended_too:
        statement = statement.where(JourneyEntry.status == JourneyStatus.running.value)
    return frozenset((c, u) for c, u in (await session.execute(statement)).all())


async def started_by(
    *, session: AsyncSession, entry_message_id: str, campaign_ids: Sequence[str]
) -> frozenset[str]:
    """Those of `campaign_ids` whose journey this event already started (routed before)."""
    if not campaign_ids:
        return frozenset()
    statement = select(JourneyEntry.campaign_id).where(
        JourneyEntry.entry_message_id == entry_message_id,
        JourneyEntry.campaign_id.in_(campaign_ids),
    )
    return frozenset(await session.scalars(statement))


async def entered(
    *, session: AsyncSession, user_id: str, campaign_ids: Sequence[str]
) -> frozenset[str]:
    """Those of `campaign_ids` the user ever entered (re-entry `once`)."""
    if not campaign_ids:
        return frozenset()
    statement = (
        select(JourneyEntry.campaign_id)
        .where(JourneyEntry.user_id == user_id, JourneyEntry.campaign_id.in_(campaign_ids))
        .distinct()
    )
    return frozenset(await session.scalars(statement))


async def count_entries(*, session: AsyncSession, campaign_id: str) -> int:
    statement = select(func.count()).where(JourneyEntry.campaign_id == campaign_id)
    return (await session.scalar(statement)) or 0


async def record_outcome(*, session: AsyncSession, outcome: JourneyOutcome) -> None:
    """Record how a journey ended (converted, exited, …) for the campaign's funnel, once.

    A journey can end before the router wrote its entry row (it sends at once and ends):
    then this writes the row, and the router's later insert does nothing. Ending is
    counted when the row changes from running to ended, so a retried call counts nothing;
    a journey that converted is credited to the campaign's last message within the
    attribution window, or counted as a goal reached without one.
    """
    ended = {
        "status": outcome.status.value,
        "exit_reason": outcome.exit_reason,
        "ended_at": outcome.ended_at,
    }
    changed = await session.execute(
        update(JourneyEntry)
        .where(
            JourneyEntry.campaign_id == outcome.campaign_id,
            JourneyEntry.entry_message_id == outcome.entry_message_id,
            JourneyEntry.ended_at.is_(None),
        )
        .values(**ended)
        .returning(JourneyEntry.id)
    )
    if changed.first() is None:
        values = {**outcome.model_dump(include=ENTRY_FIELDS), **ended}
        values["variant"] = outcome.variant
        if not await _insert_entry(session, values):
            return  # ended and counted already
    group = HOLDOUT if outcome.variant == HOLDOUT else None
    counts = [
        Bump(
            campaign_id=outcome.campaign_id,
            campaign_version=outcome.campaign_version,
            variant=group,
            metric=ENDED + outcome.status.value,
            at=outcome.ended_at,
        )
    ]
    goal = outcome.goal_event
    if outcome.status is JourneyStatus.converted and goal is not None:
        definition = await load_definition(
            session=session, campaign_id=outcome.campaign_id, version=outcome.campaign_version
        )
        found = await attribute(
            session,
            campaign_id=outcome.campaign_id,
            attribution=definition.attribution,
            user_ids=await person_ids(session, outcome.user_id),
            goal=Goal(goal.message_id, goal.name, goal.timestamp, dict(goal.properties)),
        )
        if found is Attributed.none:
            counts.append(
                Bump(
                    campaign_id=outcome.campaign_id,
                    campaign_version=outcome.campaign_version,
                    variant=group,
                    metric=GOAL_WITHOUT_MESSAGE,
                    at=outcome.ended_at,
                )
            )
    await bump(session, *counts)


async def record_variant(
    *, session: AsyncSession, taken: VariantTaken, names: Sequence[str]
) -> bool:
    """Record that a journey took a `split` variant, and count it as the variant's entrant
    — once per journey and split (a retried call, or the split visited again, counts
    nothing: the row already holds one of this split's variants). True when counted."""
    changed = await session.execute(
        update(JourneyEntry)
        .where(
            JourneyEntry.campaign_id == taken.campaign_id,
            JourneyEntry.entry_message_id == taken.entry_message_id,
            or_(JourneyEntry.variant.is_(None), JourneyEntry.variant.not_in(list(names))),
        )
        .values(variant=taken.variant)
        .returning(JourneyEntry.id)
    )
    if changed.first() is None and not await _insert_entry(
        session,
        {
            **taken.model_dump(include=ENTRY_FIELDS),
            "variant": taken.variant,
        },
    ):
        return False
    await bump(
        session,
        Bump(
            campaign_id=taken.campaign_id,
            campaign_version=taken.campaign_version,
            step_id=taken.step_id,
            variant=taken.variant,
            metric=ENTERED,
            at=taken.at,
        ),
    )
    return True


async def count_outcomes(*, session: AsyncSession, campaign_id: str) -> dict[str, int]:
    """Journeys of a campaign by status: running, completed, converted, exited, failed."""
    statement = (
        select(JourneyEntry.status, func.count())
        .where(JourneyEntry.campaign_id == campaign_id)
        .group_by(JourneyEntry.status)
    )
    return {status: int(n) for status, n in (await session.execute(statement)).all()}


# -- operator reads --------------------------------------------------------------------------


async def running_page(
    *,
    session: AsyncSession,
    campaign_id: str,
    after: tuple[str, int] | None,
    limit: int,
) -> list[JourneyEntry]:
    """The next `limit` rows of the campaign's running journeys after `after` (a row's
    user id and id): keyset order by (user id, id), the index on (campaign, user, status)."""
    statement = (
        select(JourneyEntry)
        .where(
            JourneyEntry.campaign_id == campaign_id,
            JourneyEntry.status == JourneyStatus.running.value,
        )
        .order_by(JourneyEntry.user_id, JourneyEntry.id)
        .limit(limit)
    )
    if after is not None:
        user_id, entry_id = after
        statement = statement.where(
            or_(
                JourneyEntry.user_id > user_id,
                and_(JourneyEntry.user_id == user_id, JourneyEntry.id > entry_id),
            )
        )
    return list((await session.scalars(statement)).all())


async def running_page_of_every_campaign(
    *,
    session: AsyncSession,
    after_campaign: str | None,
    after: tuple[str, int] | None,
    limit: int,
    walked: Callable[[str], None] | None = None,
) -> list[JourneyEntry]:
    """The next `limit` rows of every campaign's running journeys: campaign by campaign in
    id order, each read by `running_page` (the index on (campaign, user, status)), from
    `after` (a row's user id and id) within `after_campaign` — the whole of it when `after`
    is None; the first campaign's start when `after_campaign` is None. Fewer than `limit`
    only when no campaign has more. Campaigns are never deleted, so their table lists every
    campaign a journey can belong to, whatever its status (archived ones' journeys run on).
    `walked` is told each campaign read, however few rows it had: a caller that must show
    it lives (an activity's heartbeat) does so while many campaigns without running
    journeys are walked past."""
    rows: list[JourneyEntry] = []
    campaign = after_campaign
    if campaign is None:
        campaign = await _campaign_after(session, None)
        after = None
    while campaign is not None and len(rows) < limit:
        rows += await running_page(
            session=session, campaign_id=campaign, after=after, limit=limit - len(rows)
        )
        if walked is not None:
            walked(campaign)
        if len(rows) < limit:
            campaign, after = await _campaign_after(session, campaign), None
    return rows


async def _campaign_after(session: AsyncSession, campaign_id: str | None) -> str | None:
    statement = select(Campaign.id).order_by(Campaign.id).limit(1)
    if campaign_id is not None:
        statement = statement.where(Campaign.id > campaign_id)
    return await session.scalar(statement)


async def person_journeys(
    *, session: AsyncSession, user_ids: Sequence[str], limit: int = 200
) -> list[JourneyEntry]:
    """Every journey started under any of the person's ids (at most `limit`), the latest
    first. Naming every campaign lets the database walk the (campaign, user) index."""
    if not user_ids:
        return []
    campaign_ids = list(await session.scalars(select(Campaign.id)))
    statement = (
        select(JourneyEntry)
        .where(
            JourneyEntry.campaign_id.in_(campaign_ids),
            JourneyEntry.user_id.in_(list(user_ids)),
        )
        .order_by(JourneyEntry.entered_at.desc(), JourneyEntry.id.desc())
        .limit(limit)
    )
    return list((await session.scalars(statement)).all())


async def earlier_journey_end(
    *, session: AsyncSession, campaign_id: str, workflow_id: str
) -> datetime | None:
    """When the journey before the latest one under this workflow id ended (re-entries share
    the id), or None when there was none: what was sent since belongs to the latest one.
    (Not the latest one's entry time: a router records an entry after starting it, so its
    first send may be older than its row.)"""
    statement = (
        select(JourneyEntry.ended_at)
        .where(JourneyEntry.campaign_id == campaign_id, JourneyEntry.workflow_id == workflow_id)
        .order_by(JourneyEntry.entered_at.desc(), JourneyEntry.id.desc())
        .offset(1)
        .limit(1)
    )
    return (await session.execute(statement)).scalar()


async def entry_of_send(
    *, session: AsyncSession, campaign_id: str, workflow_id: str, matches: Callable[[str], bool]
) -> JourneyEntry | None:
    """The row of the journey a send belongs to: the one whose entry event id `matches`
    (the send's idempotency key is derived from it, see core.journey.idempotency_key)."""
    rows = await session.scalars(
        select(JourneyEntry).where(
            JourneyEntry.campaign_id == campaign_id, JourneyEntry.workflow_id == workflow_id
        )
    )
    return next((row for row in rows if matches(row.entry_message_id)), None)
