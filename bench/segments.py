"""bench: `python -m bench.segments` — what segment membership costs per event, with 10
segments defined, against storing the event, measured in the same run on the same database.

For each backend (SQLite in a temporary file; PostgreSQL too when `--postgres URL` names a
server, e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test, where a scratch database is
made and dropped): stores `--events` events of `--users` users (a mix of track and
identify) one transaction each, as ingestion does — the baseline — then takes each into
membership one transaction each, as the relay does: with no segment (the fast path), and
with 10 segments (event counts in windows, property conditions, negation, traits, any).
Prints µs per event (mean and p95) and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from core.segments import SegmentDefinition
from store.db import create_engine, migrate, session_factory
from store.events import NewEvent, record_events
from store.models import Event
from store.profiles import merge_traits
from store.segments import apply_segment, build_step, live_segments, update_for_event

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
NAMES = ["Order Completed", "App Opened", "Product Added", "Page Viewed", "Checkout Started"]
CITIES = ["Shanghai", "Paris", "Berlin", "Lagos"]

SEGMENTS: list[dict[str, Any]] = [
    {
        "id": "loyal",
        "name": "L",
        "events": [{"event": "Order Completed", "at_least": 2, "within": "30d"}],
    },
    {"id": "buyers-7d", "name": "B", "events": [{"event": "Order Completed", "within": "7d"}]},
    {
        "id": "lapsed",
        "name": "N",
        "events": [{"event": "App Opened", "at_most": 0, "within": "14d"}],
    },
    {
        "id": "active",
        "name": "A",
        "events": [{"event": "App Opened", "at_least": 3, "within": "30d"}],
    },
    {
        "id": "big",
        "name": "P",
        "events": [
            {
                "event": "Order Completed",
                "where": [{"path": "properties.total", "op": "gte", "value": 100}],
            }
        ],
    },
    {
        "id": "umbrella-cart",
        "name": "U",
        "events": [
            {
                "event": "Product Added",
                "where": [{"path": "properties.product_id", "op": "eq", "value": "sku-1"}],
                "within": "7d",
            }
        ],
    },
    {
        "id": "shanghai",
        "name": "S",
        "traits": [{"path": "traits.city", "op": "eq", "value": "Shanghai"}],
    },
    {
        "id": "pro",
        "name": "P",
        "traits": [{"path": "traits.plan", "op": "in", "value": ["pro", "team"]}],
    },
    {
        "id": "shanghai-or-loyal",
        "name": "O",
        "match": "any",
        "traits": [{"path": "traits.city", "op": "eq", "value": "Shanghai"}],
        "events": [{"event": "Order Completed", "at_least": 3, "within": "90d"}],
    },
    {
        "id": "browsers",
        "name": "W",
        "events": [
            {"event": "Page Viewed", "at_least": 5, "within": "7d"},
            {"event": "Checkout Started", "at_most": 0, "within": "7d"},
        ],
    },
]


@dataclass
class Figures:
    backend: str
    store_us: list[float]
    fast_path_us: list[float]
    segments_us: list[float]


def _make_events(users: int, count: int, rng: random.Random) -> list[NewEvent]:
    events = []
    for i in range(count):
        user = f"user-{rng.randrange(users):05d}"
        at = NOW - timedelta(days=rng.randrange(20), seconds=rng.randrange(86400))
        message_id = f"bench-{uuid.uuid4()}"
        if i % 10 == 0:
            traits = {"city": rng.choice(CITIES), "plan": rng.choice(["free", "pro"])}
            payload = {"type": "identify", "userId": user, "traits": traits}
            events.append(NewEvent(message_id, "identify", None, user, at, payload))
            continue
        name = rng.choice(NAMES)
        properties = {"total": rng.randrange(200), "product_id": f"sku-{rng.randrange(5)}"}
        payload = {"type": "track", "event": name, "userId": user, "properties": properties}
        events.append(NewEvent(message_id, "track", name, user, at, payload))
    return events


async def _run(url: str, backend: str, users: int, count: int, seed: int) -> Figures:
    await migrate(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    rng = random.Random(seed)
    try:
        async with sessions() as session:
            for definition in SEGMENTS:
                await apply_segment(
                    session=session, definition=SegmentDefinition.model_validate(definition)
                )
            await session.commit()
        async with sessions() as session:
            while (await build_step(session, now=NOW, limit=500)).segment_id is not None:
                pass
            await session.commit()
            segments = await live_segments(session=session)

        async def store(batch: list[NewEvent]) -> tuple[list[int], list[float]]:
            ids, took = [], []
            for event in batch:
                started = time.perf_counter()
                async with sessions() as session:
                    [(row, _)] = await record_events(session=session, events=[event])
                    if event.type == "identify":
                        traits = event.payload["traits"]
                        await merge_traits(session=session, user_id=event.user_id, traits=traits)
                    await session.commit()
                took.append((time.perf_counter() - started) * 1e6)
                ids.append(row.id)
            return ids, took

        async def take_in(ids: list[int], defined: list[Any]) -> list[float]:
            took = []
            for event_id in ids:
                async with sessions() as session:
                    event = await session.get(Event, event_id)
                assert event is not None
                started = time.perf_counter()
                if defined:
                    async with sessions() as session:
                        await update_for_event(session, event=event, segments=defined, now=NOW)
                        await session.commit()
                else:
                    async with sessions() as session:  # what the relay does without segments
                        await update_for_event(session, event=event, segments=[], now=NOW)
                took.append((time.perf_counter() - started) * 1e6)
            return took

        warm_ids, _ = await store(_make_events(users, 50, rng))
        await take_in(warm_ids, segments)
        ids, store_us = await store(_make_events(users, count, rng))
        fast_us = await take_in(ids, [])
        segments_us = await take_in(ids, segments)
        return Figures(backend, store_us, fast_us, segments_us)
    finally:
        await engine.dispose()


@asynccontextmanager
async def scratch_postgres(server_url: str) -> AsyncIterator[str]:
    """A database made for one bench run on the server at `server_url`, dropped after."""
    name = f"nudge_bench_{secrets.token_hex(4)}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


def _line(label: str, values: list[float], baseline: float) -> str:
    mean = statistics.fmean(values)
    p95 = statistics.quantiles(values, n=20)[-1]
    return f"  {label:<34} {mean:9.0f} µs  p95 {p95:9.0f} µs  {mean / baseline:6.2f}x store"


def render(figures: Figures) -> str:
    baseline = statistics.fmean(figures.store_us)
    return "\n".join(
        [
            f"{figures.backend}: {len(figures.store_us)} events, {len(SEGMENTS)} segments",
            _line("store the event (baseline)", figures.store_us, baseline),
            _line("membership, no segment (fast path)", figures.fast_path_us, baseline),
            _line(f"membership, {len(SEGMENTS)} segments", figures.segments_us, baseline),
        ]
    )


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}"
        print(render(await _run(url, "SQLite", args.users, args.events, args.seed)))
    if args.postgres:
        async with scratch_postgres(args.postgres) as url:
            print(render(await _run(url, "PostgreSQL", args.users, args.events, args.seed)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.segments", description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--postgres", metavar="URL", help="also run on this PostgreSQL server")
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
