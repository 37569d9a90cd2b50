"""bench: `python -m bench.routing [--quick]` — does routing keep up with ingestion?

On the embedded stack (`bench.stack`: dev server, SQLite, worker and API in this process), a
campaign whose journeys wait a week after their entry event. A burst of journey-starting
events, one new user each, is POSTed to /v1/batch 100 at a time; the figures are read from
the events table:

- accepted events/s (client side: first request sent → last answer), routed events/s
  (first event received → last event settled `routed`), and each event's lag
  (routed_at - received_at) at p50, p99 and max;
- the goal lane: right after the burst is accepted, a goal event for the user who entered
  first — how long until it is routed, with the burst's entries still pending ahead of it;
- the floor: as many signal-with-starts of the same journey workflow (same plan, same
  worker, `temporal.journeys.start_journey`) from a plain client, `relay_concurrency` at a
  time, so routed/raw says what the relay costs over Temporal itself;
- events that start nothing (no campaign cares about them), batches of 100 through a fresh
  API process of their own, on SQLite and on PostgreSQL (a scratch database on the server
  `--postgres` names, the tests' by default): accepted and settled (`ignored`) per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.app import create_app
from api.server import serve_in_loop
from bench.report import machine, percentile
from bench.segments import scratch_postgres
from bench.stack import WRITE_KEY, Stack, running_stack
from core.definition import CampaignDefinition
from core.events import JourneyEvent
from store.db import create_engine, migrate, session_factory
from store.models import Event
from temporal.journeys import start_journey
from temporal.servers import DevServer
from temporal.shutdown import run_to_exit

Sessions = async_sessionmaker[AsyncSession]

CAMPAIGN_ID = "bench-routing"
ENTRY_EVENT = "Bench Cart Filled"
GOAL_EVENT = "Bench Order Paid"
UNWATCHED_EVENT = "Bench Page Scrolled"
CAMPAIGN: dict[str, Any] = {
    "id": CAMPAIGN_ID,
    "name": "Bench: an entry event, a week's wait, then a send",
    "entry": {"event": ENTRY_EVENT},
    "goals": [{"event": GOAL_EVENT}],
    "steps": [
        {"id": "wait", "type": "wait", "duration": "7d", "next": "send"},
        {"id": "send", "type": "send", "channel": "webhook", "template": "hello"},
    ],
    "templates": {"hello": {"body": "{{ event.properties.item }} is still in your cart"}},
}
BATCH = 100
"""Events per /v1/batch request."""
POSTERS = 4
"""Batch requests in flight at a time."""
DEFAULT_POSTGRES = os.environ.get(
    "NUDGE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


@dataclass(frozen=True)
class Sizes:
    burst: int
    ignored: int
    settle_timeout: float


FULL = Sizes(burst=5000, ignored=5000, settle_timeout=600.0)
QUICK = Sizes(burst=200, ignored=500, settle_timeout=60.0)


@dataclass
class IgnoredFigures:
    backend: str
    events: int
    accepted_per_s: float | None = None
    settled_per_s: float | None = None
    """First request sent → last event settled `ignored`."""
    skipped: str | None = None


@dataclass
class RoutingFigures:
    events: int
    accepted_per_s: float
    routed_per_s: float
    routed_events: int
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    raw_per_s: float
    raw_concurrency: int
    relay_concurrency: int
    goal_lane_ms: float | None
    """A goal event sent right after the burst was accepted: received → routed."""
    goal_lane_backlog: int
    """The burst's events still pending when the goal event was accepted."""
    ignored: list[IgnoredFigures] = field(default_factory=list)
    duration_s: float = 0.0
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Routed events/s over raw signal-with-starts/s: the target is at least 0.8."""
        return self.routed_per_s / self.raw_per_s if self.raw_per_s else 0.0

    @property
    def complete(self) -> bool:
        return self.routed_events == self.events and self.goal_lane_ms is not None

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) lines, for `render` and for bench/run.py's table."""
        rows = [
            ("burst", f"{self.events} journey-starting events, batches of {BATCH}"),
            ("accepted", f"{self.accepted_per_s:,.0f} events/s"),
            (
                "routed",
                f"{self.routed_per_s:,.0f} events/s ({self.routed_events}/{self.events} routed, "
                f"relay concurrency {self.relay_concurrency})",
            ),
            (
                "lag (routed - received)",
                f"p50 {self.lag_p50_ms:,.0f} ms, p99 {self.lag_p99_ms:,.0f} ms, "
                f"max {self.lag_max_ms:,.0f} ms",
            ),
            (
                "raw signal-with-start",
                f"{self.raw_per_s:,.0f} /s (start_journey, {self.raw_concurrency} at a time)",
            ),
            ("routed / raw", f"{self.ratio:.2f}x (target ≥ 0.80x)"),
            (
                "goal lane",
                "not routed"
                if self.goal_lane_ms is None
                else f"{self.goal_lane_ms:,.0f} ms to route a goal behind "
                f"{self.goal_lane_backlog} pending entries",
            ),
        ]
        for ignored in self.ignored:
            label = f"start nothing, {ignored.backend}"
            if ignored.skipped is not None:
                rows.append((label, f"skipped: {ignored.skipped}"))
            else:
                rows.append(
                    (
                        label,
                        f"{ignored.accepted_per_s or 0:,.0f} accepted/s, "
                        f"{ignored.settled_per_s or 0:,.0f} settled/s ({ignored.events} events, "
                        "one API process)",
                    )
                )
        return rows

    def render(self) -> str:
        m = self.machine
        lines = [
            "Nudge bench: routing under a burst of journey-starting events (bench.routing)",
            f"machine  {m.get('usable_cores')} cores · {m.get('platform')} · "
            f"Python {m.get('python')} · {m.get('temporal_cli')}; {self.duration_s:.1f} s in all",
            "",
        ]
        width = max(len(label) for label, _ in self.rows())
        lines += [f"{label:<{width}}  {value}" for label, value in self.rows()]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "complete": self.complete}


def _message(user: str, message_id: str, event: str) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": event,
        "messageId": message_id,
        "properties": {"item": "Umbrella"},
    }


async def post_batches(http: httpx.AsyncClient, messages: list[dict[str, Any]]) -> float:
    """POST `messages` to /v1/batch, BATCH per request, POSTERS requests at a time, in
    order of their batches' starts; seconds from the first request to the last answer."""
    batches = [messages[i : i + BATCH] for i in range(0, len(messages), BATCH)]
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def poster() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            response = await http.post("/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""))
            response.raise_for_status()

    began = time.monotonic()
    await asyncio.gather(*(poster() for _ in range(POSTERS)))
    return time.monotonic() - began


async def pending(sessions: Sessions, prefix: str) -> int:
    async with sessions() as session:
        statement = (
            select(func.count())
            .select_from(Event)
            .where(Event.status == "pending", Event.message_id.like(f"{prefix}%"))
        )
        return await session.scalar(statement) or 0


async def settled(sessions: Sessions, prefix: str, timeout: float) -> None:
    """Wait until no event whose message id starts with `prefix` is pending."""
    deadline = time.monotonic() + timeout
    while await pending(sessions, prefix):
        if time.monotonic() > deadline:
            raise TimeoutError(f"events {prefix}* still pending after {timeout:.0f}s")
        await asyncio.sleep(0.05)


async def rows_of(sessions: Sessions, prefix: str) -> list[tuple[str, datetime, datetime | None]]:
    async with sessions() as session:
        statement = select(Event.status, Event.received_at, Event.routed_at).where(
            Event.message_id.like(f"{prefix}%")
        )
        return [(s, r, t) for s, r, t in (await session.execute(statement)).all()]


@contextlib.asynccontextmanager
async def api_http(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as http:
        yield http


async def burst(stack: Stack, url: str, sessions: Sessions, sizes: Sizes) -> dict[str, Any]:
    """The routing burst and the goal behind it."""
    tag = uuid.uuid4().hex[:8]
    prefix = f"burst-{tag}-"
    users = [f"user-{tag}-{i}" for i in range(sizes.burst)]
    messages = [_message(u, f"{prefix}{i}", ENTRY_EVENT) for i, u in enumerate(users)]
    async with api_http(url) as http:
        took = await post_batches(http, messages)
        goal_id = f"goal-{tag}"
        backlog = await pending(sessions, prefix)
        response = await http.post(
            "/v1/track", json=_message(users[0], goal_id, GOAL_EVENT), auth=(WRITE_KEY, "")
        )
        response.raise_for_status()
    await settled(sessions, goal_id, sizes.settle_timeout)
    [(goal_status, goal_received, goal_routed)] = await rows_of(sessions, goal_id)
    await settled(sessions, prefix, sizes.settle_timeout)
    found = await rows_of(sessions, prefix)
    routed = [(r, t) for s, r, t in found if s == "routed" and t is not None]
    lags = sorted((t - r).total_seconds() * 1000 for r, t in routed)
    first = min(r for _, r, _ in found)
    last = max(t for _, t in routed) if routed else first
    span = (last - first).total_seconds()
    goal_ms = (
        (goal_routed - goal_received).total_seconds() * 1000
        if goal_status == "routed" and goal_routed is not None
        else None
    )
    return {
        "events": sizes.burst,
        "accepted_per_s": sizes.burst / took,
        "routed_per_s": len(routed) / span if span > 0 else 0.0,
        "routed_events": len(routed),
        "lag_p50_ms": percentile(lags, 50) if lags else 0.0,
        "lag_p99_ms": percentile(lags, 99) if lags else 0.0,
        "lag_max_ms": lags[-1] if lags else 0.0,
        "goal_lane_ms": goal_ms,
        "goal_lane_backlog": backlog,
    }


async def raw_rate(stack: Stack, n: int, concurrency: int) -> float:
    """`n` signal-with-starts of the bench campaign's journey (its plan, its task queue,
    the same worker), new users, `concurrency` at a time: per second."""
    definition = CampaignDefinition.model_validate(CAMPAIGN)
    plan = definition.plan()
    settings = stack.settings
    tag = uuid.uuid4().hex[:8]
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await start_journey(
                stack.client,
                task_queue=settings.task_queue,
                secret=settings.user_secret,
                campaign_id=CAMPAIGN_ID,
                campaign_version=1,
                campaign_name=definition.name,
                plan=plan,
                user_id=f"raw-{tag}-{i}",
                entry_event=JourneyEvent(
                    message_id=f"raw-{tag}-{i}",
                    name=ENTRY_EVENT,
                    timestamp=datetime.now().astimezone(),
                    properties={"item": "Umbrella"},
                ),
            )

    began = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.monotonic() - began)


async def ignored_rate(backend: str, database_url: str, stack: Stack, n: int) -> IgnoredFigures:
    """`n` events no campaign cares about, through an API process of their own (its relay
    settles them `ignored` without asking Temporal)."""
    await migrate(database_url)
    settings = stack.settings.model_copy(
        update={
            "database_url": database_url,
            "task_queue": f"bench-ignored-{uuid.uuid4().hex[:8]}",
        }
    )
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    tag = uuid.uuid4().hex[:8]
    prefix = f"idle-{tag}-"
    messages = [
        _message(f"idle-{tag}-{i % max(1, n // 4)}", f"{prefix}{i}", UNWATCHED_EVENT)
        for i in range(n)
    ]
    try:
        async with serve_in_loop(create_app(settings)) as served, api_http(served.url) as http:
            began = time.monotonic()
            took = await post_batches(http, messages)
            await settled(sessions, prefix, 120.0)
            done = time.monotonic() - began
    finally:
        await engine.dispose()
    return IgnoredFigures(backend, n, accepted_per_s=n / took, settled_per_s=n / done)


async def measure(
    quick: bool,
    *,
    postgres: str | None = DEFAULT_POSTGRES,
    server: DevServer | None = None,
    sizes: Sizes | None = None,
) -> RoutingFigures:
    """Start the stack (on `server` when given), run every part, shut down. `sizes`
    overrides what `quick` chooses (the tests' few events)."""
    sizes = sizes or (QUICK if quick else FULL)
    begin = time.monotonic()
    ignored: list[IgnoredFigures] = []
    async with running_stack(server) as stack:
        with tempfile.TemporaryDirectory(prefix="nudge-bench-ignored-") as directory:
            url = f"sqlite+aiosqlite:///{Path(directory) / 'ignored.db'}"
            ignored.append(await ignored_rate("SQLite", url, stack, sizes.ignored))
        if postgres:
            try:
                async with scratch_postgres(postgres) as url:
                    ignored.append(await ignored_rate("PostgreSQL", url, stack, sizes.ignored))
            except OSError as exc:
                ignored.append(IgnoredFigures("PostgreSQL", sizes.ignored, skipped=str(exc)))
        await stack.nudge.apply_campaign(json.dumps(CAMPAIGN), activate=True)
        engine = create_engine(stack.settings.database_url)
        try:
            # The stack keeps its API's address in its client only.
            url = str(stack.nudge._http.base_url)
            figures = await burst(stack, url, session_factory(engine), sizes)
        finally:
            await engine.dispose()
        concurrency = stack.settings.relay_concurrency
        raw = await raw_rate(stack, sizes.burst, concurrency)
    return RoutingFigures(
        **figures,
        raw_per_s=raw,
        raw_concurrency=concurrency,
        relay_concurrency=concurrency,
        ignored=ignored,
        duration_s=time.monotonic() - begin,
        machine=machine(),
    )


async def _main(args: argparse.Namespace) -> int:
    figures = await measure(args.quick, postgres=None if args.no_postgres else args.postgres)
    print(figures.render())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures.as_json(), indent=2, default=str) + "\n")
    return 0 if figures.complete else 1


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 events, not 5,000")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, metavar="URL")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    run_to_exit(lambda: _main(args))


if __name__ == "__main__":
    main()
