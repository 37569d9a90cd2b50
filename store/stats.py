"""store: the stats aggregates — counts per campaign version, step, group, metric and hour,
bumped in the transaction that records what they count, read by the stats API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.stats import ALL_TIME, NO_STEP, NO_VARIANT, CountRow, hour_of
from store.db import dialect_insert
from store.models import CampaignCount

KEY = ("campaign_id", "campaign_version", "step_id", "variant", "metric", "hour")


@dataclass(frozen=True)
class Bump:
    """One more (or `count` more) of `metric`, at `at`."""

    campaign_id: str
    campaign_version: int
    metric: str
    at: datetime
    step_id: str | None = None
    variant: str | None = None
    count: int = 1
    amount: float = 0.0


async def bump(session: AsyncSession, *bumps: Bump) -> None:
    """Add to the aggregates, in the caller's transaction: counted exactly when what they
    count is recorded. Bumps of one row are summed first, so a row is written once."""
    merged: dict[tuple[str, int, str, str, str, datetime], list[float]] = {}
    for b in bumps:
        row = (
            b.campaign_id,
            b.campaign_version,
            b.step_id or NO_STEP,
            b.variant or NO_VARIANT,
            b.metric,
        )
        for hour in (hour_of(b.at), ALL_TIME):
            total = merged.setdefault((*row, hour), [0, 0.0])
            total[0] += b.count
            total[1] += b.amount
    if not merged:
        return
    table = CampaignCount.__table__
    # Sorted, so two transactions bumping the same rows lock them in the same order.
    values = [
        {**dict(zip(KEY, key, strict=True)), "count": int(count), "amount": float(amount)}
        for key, (count, amount) in sorted(merged.items())
    ]
    insert = dialect_insert(session, table).values(values)
    await session.execute(
        insert.on_conflict_do_update(
            index_elements=list(KEY),
            set_={
                "count": table.c.count + insert.excluded.count,
                "amount": table.c.amount + insert.excluded.amount,
            },
        )
    )


async def count_rows(
    session: AsyncSession,
    *,
    campaign_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[CountRow]:
    """The campaign's counts summed over the hours in [since, until) (whole hours: `since`
    rounds down to its hour, `until` up); with neither, the all-time rows."""
    c = CampaignCount
    statement = (
        select(
            c.campaign_version,
            c.step_id,
            c.variant,
            c.metric,
            func.sum(c.count),
            func.sum(c.amount),
        )
        .where(c.campaign_id == campaign_id)
        .group_by(c.campaign_version, c.step_id, c.variant, c.metric)
    )
    statement = _in_range(statement, since, until)
    return [
        CountRow(int(v), step, variant, metric, int(n or 0), float(amount or 0.0))
        for v, step, variant, metric, n, amount in (await session.execute(statement)).all()
    ]


async def series(
    session: AsyncSession,
    *,
    campaign_id: str,
    metrics: Sequence[str],
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[tuple[datetime, str, int, float]]:
    """Per hour: (hour, metric, count, amount) of the given metrics, oldest first."""
    c = CampaignCount
    statement = (
        select(c.hour, c.metric, func.sum(c.count), func.sum(c.amount))
        .where(c.campaign_id == campaign_id, c.metric.in_(metrics))
        .group_by(c.hour, c.metric)
        .order_by(c.hour)
    )
    statement = _in_range(statement, since, until, totals=False)
    return [
        (hour, metric, int(n or 0), float(amount or 0.0))
        for hour, metric, n, amount in (await session.execute(statement)).all()
    ]


def _in_range(
    statement: Any, since: datetime | None, until: datetime | None, *, totals: bool = True
) -> Any:
    """Hours in [since, until); with neither, the all-time rows (unless `totals` is False:
    a series is by hour)."""
    if totals and since is None and until is None:
        return statement.where(CampaignCount.hour == ALL_TIME)
    statement = statement.where(CampaignCount.hour > ALL_TIME)
    if since is not None:
        statement = statement.where(CampaignCount.hour >= hour_of(since))
    if until is not None:
        statement = statement.where(CampaignCount.hour < until)
    return statement
