"""store: journey entries — one row per journey started, read by re-entry rules and counts."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.journey import JourneyOutcome
from store.db import dialect_insert
from store.models import JourneyEntry

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
) -> bool:
    """Record that a journey started; True when this call wrote the row.

    False when the run is already recorded (a signal-with-start that joined the running
    journey returns its run id) or this entry event was already recorded for the campaign
    (the router retried). ON CONFLICT DO NOTHING covers both unique keys, so racing
    routers agree instead of failing.
    """
    table = JourneyEntry.__table__
    statement = (
        dialect_insert(session, table)
        .values(
            campaign_id=campaign_id,
            campaign_version=campaign_version,
            user_id=user_id,
            workflow_id=workflow_id,
            run_id=run_id,
            entry_message_id=entry_message_id,
        )
        .on_conflict_do_nothing()
        .returning(table.c.id)
    )
    return (await session.execute(statement)).first() is not None


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
    """Record how a journey ended (converted, exited, …) for the campaign's funnel.

    An upsert: a journey can end before the router got to write its entry row (a journey
    that sends at once and ends), and the router's later insert then does nothing.
    """
    ended = {
        "status": outcome.status.value,
        "exit_reason": outcome.exit_reason,
        "ended_at": outcome.ended_at,
    }
    insert = dialect_insert(session, JourneyEntry.__table__).values(
        **outcome.model_dump(include=ENTRY_FIELDS), **ended
    )
    await session.execute(
        insert.on_conflict_do_update(index_elements=["campaign_id", "entry_message_id"], set_=ended)
    )


async def count_outcomes(*, session: AsyncSession, campaign_id: str) -> dict[str, int]:
    """Journeys of a campaign by status: running, completed, converted, exited, failed."""
    statement = (
        select(JourneyEntry.status, func.count())
        .where(JourneyEntry.campaign_id == campaign_id)
        .group_by(JourneyEntry.status)
    )
    return {status: int(n) for status, n in (await session.execute(statement)).all()}
