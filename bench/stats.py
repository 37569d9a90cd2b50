"""bench: `python -m bench.stats` — how long a campaign's funnel takes to answer with
1,000,000 delivery rows, from the stats aggregates (what `GET /v1/campaigns/{id}/stats`
does), against counting the same funnel from the deliveries themselves (the baseline),
measured in the same run on the same database.

For each backend (SQLite in a temporary file; PostgreSQL too when `--postgres URL` names a
server, e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test, where a scratch database is
made and dropped): writes `--deliveries` rows of one campaign over 30 days (two versions,
two reminder variants and a holdout; sent, delivered, opened, clicked, failed, suppressed
in realistic shares) and the aggregate rows counting them (one per version, step, group,
metric and hour, as the recording paths keep them), then times the funnel over all time
and over the last 7 days, `--repeat` times each. Prints milliseconds (median and p95) and
the ratio of the aggregates to the scan.

    python -m bench.stats --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test
    python -m bench.stats --quick
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.stats import campaign_funnel
from bench.segments import scratch_postgres
from core.definition import parse_campaign
from core.experiments import HOLDOUT
from core.stats import ALL_TIME, CLICKED_HUMAN, ENTERED, HELD_OUT, OPENED_HUMAN, hour_of
from store.campaigns import save_campaign
from store.db import create_engine, migrate, session_factory
from store.models import CampaignCount, Delivery

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
DAYS = 30
CHUNK = 5_000
DEFINITION = {
    "id": "cart",
    "name": "Cart",
    "entry": {"event": "Product Added"},
    "goals": [{"event": "Order Completed"}],
    "holdout": 0.1,
    "steps": [
        {"id": "wait", "type": "wait", "duration": "24h", "next": "split"},
        {
            "id": "split",
            "type": "split",
            "variants": [{"name": "coupon", "next": "coupon"}, {"name": "plain", "next": "plain"}],
        },
        {"id": "coupon", "type": "send", "channel": "email", "template": "t"},
        {"id": "plain", "type": "send", "channel": "email", "template": "t"},
    ],
    "templates": {"t": {"subject": "s", "body": "b"}},
}
OPTIONAL = (
    "sent_at",
    "error",
    "delivered_at",
    "opened_at",
    "human_opened_at",
    "clicked_at",
    "human_clicked_at",
)
"""Columns only some rows have: every row names them (one executemany statement)."""
SUPPRESSIONS = ["unsubscribed from marketing on email", "cap: 3 messages per 24h"]


@dataclass
class Figures:
    backend: str
    deliveries: int
    aggregate_rows: int
    write_seconds: float
    funnel_ms: list[float]
    funnel_week_ms: list[float]
    scan_ms: list[float]


def generate(n: int, seed: int = 7) -> tuple[list[dict], Counter]:
    """`n` delivery rows and the counts the aggregates hold for them."""
    rng = random.Random(seed)
    rows: list[dict] = []
    counts: Counter = Counter()
    for i in range(n):
        at = NOW - timedelta(seconds=rng.uniform(0, DAYS * 86400))
        version = 1 if i % 3 else 2
        holdout = rng.random() < 0.1
        variant = HOLDOUT if holdout else rng.choice(["coupon", "plain"])
        step = "coupon" if variant == "coupon" else "plain"
        row = {
            "idempotency_key": f"k{i}",
            "workflow_id": f"journey/cart/u{i}",
            "campaign_id": "cart",
            "campaign_version": version,
            "step_id": step,
            "visit": 1,
            "channel": "email",
            "user_id": f"u{i}",
            "attempts": 1,
            "created_at": at,
            "updated_at": at,
            "variant": variant,
            "opens": 0,
            "clicks": 0,
            **dict.fromkeys(OPTIONAL),
        }
        hour = hour_of(at)

        def count(
            metric: str,
            step_id: str = step,
            group: str = variant,
            key: tuple[int, datetime] = (version, hour),
        ) -> None:
            counts[(key[0], step_id, group, metric, key[1])] += 1

        count(ENTERED, "", HOLDOUT if holdout else "")
        if not holdout:
            count(ENTERED, "split")
        roll = rng.random()
        if holdout:
            row.update(status="held_out")
            count(HELD_OUT)
        elif roll < 0.85:
            row.update(status="sent", sent_at=at)
            count("sent")
            if rng.random() < 0.95:
                row["delivered_at"] = at
                count("delivered")
                if rng.random() < 0.4:
                    row.update(opened_at=at, human_opened_at=at, opens=1)
                    count("opened"), count(OPENED_HUMAN), count("opens")
                    if rng.random() < 0.2:
                        row.update(clicked_at=at, human_clicked_at=at, clicks=1)
                        count("clicked"), count(CLICKED_HUMAN), count("clicks")
        elif roll < 0.9:
            row.update(status="failed", error="smtp said no")
            count("failed")
        else:
            reason = rng.choice(SUPPRESSIONS)
            row.update(status="suppressed", error=reason)
            count("suppressed:" + ("unsubscribed" if reason.startswith("un") else "frequency_cap"))
        rows.append(row)
    return rows, counts


async def scan(session: AsyncSession, since: datetime | None = None) -> list:
    """The baseline: the same funnel counted from the deliveries, one grouped scan."""
    d = Delivery
    statement = (
        select(
            d.campaign_version,
            d.step_id,
            d.variant,
            d.status,
            d.error,
            func.count(),
            func.count(d.delivered_at),
            func.count(d.opened_at),
            func.count(d.human_opened_at),
            func.count(d.clicked_at),
            func.count(d.human_clicked_at),
        )
        .where(d.campaign_id == "cart")
        .group_by(d.campaign_version, d.step_id, d.variant, d.status, d.error)
    )
    if since is not None:
        statement = statement.where(d.created_at >= since)
    return list((await session.execute(statement)).all())


async def timed(repeat: int, call) -> list[float]:
    out = []
    for _ in range(repeat):
        began = time.perf_counter()
        await call()
        out.append((time.perf_counter() - began) * 1000)
    return out


async def measure(backend: str, url: str, deliveries: int, repeat: int) -> Figures:
    await migrate(url)
    engine = create_engine(url)
    try:
        sessions = session_factory(engine)
        rows, counts = generate(deliveries)
        began = time.perf_counter()
        async with sessions() as session, session.begin():
            await save_campaign(session=session, definition=parse_campaign(DEFINITION))
            second = {**DEFINITION, "name": "Cart v2"}
            await save_campaign(session=session, definition=parse_campaign(second))
        for start in range(0, len(rows), CHUNK):
            async with sessions() as session, session.begin():
                await session.execute(insert(Delivery.__table__), rows[start : start + CHUNK])
        aggregates = [
            {
                "campaign_id": "cart",
                "campaign_version": version,
                "step_id": step,
                "variant": group,
                "metric": metric,
                "hour": hour,
                "count": n,
                "amount": 0.0,
            }
            for (version, step, group, metric, hour), n in counts.items()
        ]
        totals: Counter = Counter()
        for (version, step, group, metric, _), n in counts.items():
            totals[(version, step, group, metric)] += n
        aggregates += [
            {
                "campaign_id": "cart",
                "campaign_version": version,
                "step_id": step,
                "variant": group,
                "metric": metric,
                "hour": ALL_TIME,
                "count": n,
                "amount": 0.0,
            }
            for (version, step, group, metric), n in totals.items()
        ]
        for start in range(0, len(aggregates), CHUNK):
            async with sessions() as session, session.begin():
                await session.execute(
                    insert(CampaignCount.__table__), aggregates[start : start + CHUNK]
                )
        written = time.perf_counter() - began
        week = NOW - timedelta(days=7)

        async def funnel(since: datetime | None = None) -> None:
            async with sessions() as session:
                found = await campaign_funnel(session, campaign_id="cart", since=since)
            assert since is not None or found.funnel.sent == sum(
                n for (_, _, _, metric, _), n in counts.items() if metric == "sent"
            )

        async def baseline() -> None:
            async with sessions() as session:
                await scan(session)

        await funnel()  # warm: connections, parsed versions
        await baseline()
        return Figures(
            backend=backend,
            deliveries=deliveries,
            aggregate_rows=len(aggregates),
            write_seconds=written,
            funnel_ms=await timed(repeat, funnel),
            funnel_week_ms=await timed(repeat, lambda: funnel(week)),
            scan_ms=await timed(max(repeat // 4, 3), baseline),
        )
    finally:
        await engine.dispose()


def _ms(values: list[float]) -> str:
    p95 = statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]
    return f"median {statistics.median(values):9.2f} ms   p95 {p95:9.2f} ms"


def render(figures: Figures) -> str:
    scan = statistics.median(figures.scan_ms)
    lines = [
        f"{figures.backend}: {figures.deliveries:,} deliveries, "
        f"{figures.aggregate_rows:,} aggregate rows (written in {figures.write_seconds:.0f} s)",
        f"  funnel, all time (aggregates)   {_ms(figures.funnel_ms)}   "
        f"{statistics.median(figures.funnel_ms) / scan:.4f} x scan",
        f"  funnel, last 7 days             {_ms(figures.funnel_week_ms)}   "
        f"{statistics.median(figures.funnel_week_ms) / scan:.4f} x scan",
        f"  baseline: scan of deliveries    {_ms(figures.scan_ms)}   1 x scan",
    ]
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'stats.db'}"
        print(render(await measure("sqlite", url, args.deliveries, args.repeat)), flush=True)
    if args.postgres:
        async with scratch_postgres(args.postgres) as url:
            print(render(await measure("postgresql", url, args.deliveries, args.repeat)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stats", description=__doc__)
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--postgres", help="a PostgreSQL server URL (a scratch database is used)")
    parser.add_argument("--quick", action="store_true", help="20,000 deliveries, 5 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.deliveries, args.repeat = 20_000, 5
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
