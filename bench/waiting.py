"""bench: `python -m bench.waiting [--journeys N]` — many journeys waiting on a 7-day timer.

The embedded stack: a dev server (its workflows in memory, as the other benches; `make dev`
keeps them in a file: `--temporal-db file`, several times slower to start journeys), Nudge's
SQLite, and `nudge worker` as its own process (so its RSS is its own). The
campaign: an entry event → a branch on that event (no activity) → wait 7d → a webhook send. Each journey is started as the router
starts one (`temporal.journeys.start_journey`: signal-with-start), `START_CONCURRENCY` at a
time, from this process.

- start: N journeys, from the first start call until every one waits on its timer (counted
  by a visibility query on the step the journey shows): journeys/s;
- memory: the worker's and the dev server's RSS (/proc) before and after, once per worker
  cache size (`--cache-sizes`, `NUDGE_WORKFLOW_CACHE_SIZE`): the worker keeps at most that
  many journeys in memory, whatever N is;
- wake: the dev server cannot skip 7 days, so the wake is measured on Temporal's
  time-skipping test server (`temporal-test-server`, beside the interpreter) with the same
  workflow and a real worker (in this process, the real activities on SQLite, the webhook
  recorder as the provider): `--wake` journeys reach their timer, the clock jumps 7 days,
  and the time until the last message arrives gives journeys woken (and sent) per second.
  The test server is not the dev server: the figure is the worker's side of the wake.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.api.testservice.v1 import SleepRequest
from temporalio.client import Client

from bench.fanout import cpu_seconds, rss_mb
from bench.recorder import WebhookRecorder
from bench.report import machine
from bench.scaleout import WORKER_READY, nudge_env, spawn, stop
from bench.stack import UNTHROTTLED
from core.config import Environment, Settings
from core.definition import CampaignDefinition, CampaignStatus, parse_campaign
from core.events import JourneyEvent
from core.journey import idempotency_key, journey_id
from store.campaigns import save_campaign, set_status
from store.db import create_engine, migrate, session_factory
from temporal import search_attributes
from temporal.journeys import start_journey
from temporal.servers import DevServer, DevServerOptions, dev_server, time_skipping_server
from temporal.shutdown import run_to_exit
from worker.build import create_worker, worker_activities

CAMPAIGN_ID = "bench-waiting"
ENTRY_EVENT = "Bench Waiting"
WAIT = timedelta(days=7)
CAMPAIGN: dict[str, Any] = {
    "id": CAMPAIGN_ID,
    "name": "Bench: wait a week, then a webhook",
    "entry": {"event": ENTRY_EVENT},
    # The branch, decided on the entry event alone, makes the journey's first workflow task
    # move its NudgeStep search attribute to `week`: the count of journeys at their timer
    # is then one visibility query.
    "start": "go",
    "steps": [
        {
            "id": "go",
            "type": "branch",
            "branches": [
                {
                    "conditions": [{"path": "event.name", "op": "eq", "value": ENTRY_EVENT}],
                    "next": "week",
                }
            ],
            "else": "week",
        },
        {"id": "week", "type": "wait", "duration": "7d", "next": "send"},
        {"id": "send", "type": "send", "channel": "webhook", "template": "hello"},
    ],
    "templates": {"hello": {"body": "A week later: {{ event.properties.item }}"}},
}
START_CONCURRENCY = 64
JOURNEYS, CACHE_SIZES, WAKE = 2_000, (1000, 100), 200
WAKE_CACHE = 1000
QUIET_CPU = 0.05
"""The worker has settled after its start-up when it spends less than this share of a core
over `QUIET_WINDOW` seconds (it polls, and the audience clock ticks once a minute)."""
QUIET_WINDOW = 1.0


@dataclass
class CacheFigures:
    cache_size: int
    journeys: int
    start_s: float
    """From the first start call until the worker went quiet: every journey at its timer."""
    calls_s: float
    """The start calls alone (the server accepted them)."""
    at_timer: int
    """Journeys counted at their timer (NudgeStep = week) when the phase ended."""
    worker_rss_idle_mb: float
    worker_rss_half_mb: float
    """With the first half of the journeys waiting."""
    worker_rss_mb: float
    temporal_rss_mb: float
    """The dev server's, after this cache size's journeys (it keeps all of them so far)."""
    worker_cpu_ms_per_journey: float

    @property
    def journeys_per_s(self) -> float:
        return self.journeys / self.start_s


@dataclass
class WakeFigures:
    journeys: int
    cache_size: int
    start_s: float
    wake_s: float
    """From the 7-day jump until the last message arrived."""
    received: int
    duplicated: int

    @property
    def journeys_per_s(self) -> float:
        return self.received / self.wake_s if self.wake_s else 0.0


@dataclass
class WaitingFigures:
    machine: dict[str, Any]
    temporal_db: str
    caches: list[CacheFigures] = field(default_factory=list)
    wake: WakeFigures | None = None
    wake_error: str | None = None
    temporal_rss_idle_mb: float = 0.0
    duration_s: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    """The machine's 1-minute load average at the start and at the end: others may share
    these cores, and the rates here are CPU-bound."""

    @property
    def complete(self) -> bool:
        w = self.wake
        woke = self.wake_error is None and (
            w is None or (w.received == w.journeys and not w.duplicated)
        )
        return woke and all(c.at_timer == c.journeys for c in self.caches)

    def render(self) -> str:
        cores = self.machine.get("usable_cores") or self.machine.get("cores")
        lines = [
            f"Waiting journeys (wait 7d → webhook) on the embedded stack, {cores} cores; "
            f"dev server workflows in {self.temporal_db}, {self.temporal_rss_idle_mb:.0f} MB "
            "RSS before any",
        ]
        for c in self.caches:
            lines.append(
                f"  worker cache {c.cache_size:>6}: {c.journeys:,} started in {c.start_s:.1f} s "
                f"= {c.journeys_per_s:,.0f} journeys/s (start calls alone {c.calls_s:.1f} s); "
                f"worker CPU {c.worker_cpu_ms_per_journey:.1f} ms/journey; "
                f"{c.at_timer:,} at their timer"
            )
            lines.append(
                f"      worker RSS {c.worker_rss_idle_mb:.0f} MB idle, "
                f"{c.worker_rss_half_mb:.0f} MB with {c.journeys // 2:,} waiting, "
                f"{c.worker_rss_mb:.0f} MB with {c.journeys:,}; dev server RSS "
                f"{c.temporal_rss_mb:.0f} MB (every journey started so far)"
            )
        w = self.wake
        if self.wake_error:
            lines.append(f"  wake failed: {self.wake_error}")
        if w is not None:
            lines.append(
                f"  wake, on the time-skipping test server (not the dev server), a real worker "
                f"in-process, cache {w.cache_size}: {w.journeys:,} journeys reached their timer "
                f"in {w.start_s:.1f} s; after the 7-day jump {w.received:,} messages arrived in "
                f"{w.wake_s:.1f} s = {w.journeys_per_s:,.0f} journeys/s"
                + (f" ({w.duplicated} duplicated!)" if w.duplicated else "")
            )
        lines.append(
            f"took {self.duration_s:.1f} s; load average {self.load[0]:.1f} at the start, "
            f"{self.load[1]:.1f} at the end"
        )
        return "\n".join(lines)


def entry_event(user: str) -> JourneyEvent:
    return JourneyEvent(
        message_id=f"m-{user}",
        name=ENTRY_EVENT,
        timestamp=datetime.now(UTC),
        properties={"item": "Umbrella"},
    )


async def store_campaign(database_url: str) -> tuple[CampaignDefinition, int]:
    """Migrate, save the campaign and activate it; its definition and version."""
    await migrate(database_url)
    definition = parse_campaign(CAMPAIGN)
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            _, version, _ = await save_campaign(session=session, definition=definition)
            await set_status(
                session=session, campaign_id=definition.id, status=CampaignStatus.active
            )
            return definition, version.version
    finally:
        await engine.dispose()


async def start_all(
    client: Client,
    *,
    task_queue: str,
    definition: CampaignDefinition,
    version: int,
    users: list[str],
) -> float:
    """Start one journey per user, START_CONCURRENCY calls at a time; seconds taken."""
    plan = definition.plan()
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def one(user: str) -> None:
        async with gate:
            await start_journey(
                client,
                task_queue=task_queue,
                secret=None,
                campaign_id=definition.id,
                campaign_version=version,
                campaign_name=definition.name,
                plan=plan,
                user_id=user,
                entry_event=entry_event(user),
            )

    began = time.monotonic()
    await asyncio.gather(*(one(u) for u in users))
    return time.monotonic() - began


async def quiet(pid: int, *, timeout: float) -> bool:
    """Wait until process `pid` spends less than QUIET_CPU of a core over QUIET_WINDOW (its
    start-up done); False if it did not within `timeout`: the idle figure is then a busy one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        await asyncio.sleep(QUIET_WINDOW)
        if cpu_seconds(pid) - before < QUIET_CPU * QUIET_WINDOW:
            return True
    return False


async def at_timer(client: Client, task_queue: str) -> int:
    """How many journeys on `task_queue` wait on their timer (visibility)."""
    query = f"TaskQueue = '{task_queue}' AND {search_attributes.STEP.name} = 'week'"
    return (await client.count_workflows(query)).count


async def all_at_timer(client: Client, task_queue: str, n: int, *, timeout: float) -> int:
    """Wait until `n` journeys on `task_queue` wait on their timer (or `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        count = await at_timer(client, task_queue)
        if count >= n or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.25)


async def measure_starts(
    n: int,
    cache_sizes: tuple[int, ...],
    *,
    temporal_db: str,
    figures: WaitingFigures,
    server: DevServer | None = None,
) -> None:
    with tempfile.TemporaryDirectory(prefix="nudge-waiting-") as directory:
        folder = Path(directory)
        database_url = f"sqlite+aiosqlite:///{folder}/nudge.db"
        definition, version = await store_campaign(database_url)
        options = DevServerOptions(
            dynamic_config=UNTHROTTLED,
            db_file=folder / "temporal.db" if temporal_db == "file" else None,
        )
        async with contextlib.AsyncExitStack() as stack:
            if server is None:
                server = await stack.enter_async_context(dev_server(options))
            figures.temporal_rss_idle_mb = rss_mb(server.process.pid)
            for cache_size in cache_sizes:
                task_queue = f"bench-waiting-{uuid.uuid4().hex[:8]}"
                env = nudge_env(
                    environment="test",
                    database_url=database_url,
                    temporal_address=server.address,
                    task_queue=task_queue,
                    workflow_cache_size=str(cache_size),
                    quiet_hours_start="00:00",
                    quiet_hours_end="00:00",
                    log_level="INFO",
                )
                worker = spawn(f"worker-cache-{cache_size}", "worker", env, folder)
                try:
                    deadline = time.monotonic() + 60
                    while WORKER_READY not in worker.output():
                        if worker.process.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"nudge worker did not start:\n{worker.tail()}")
                        await asyncio.sleep(0.05)
                    pid = worker.process.pid
                    await quiet(pid, timeout=30)
                    idle = rss_mb(pid)
                    users = [f"user-{task_queue}-{i:07d}" for i in range(n)]
                    cpu = cpu_seconds(pid)
                    # In two halves, the worker's RSS read after each: with N/2 and with N
                    # waiting (the same, once the cache is full).
                    took = calls = 0.0
                    rss: list[float] = []
                    for done, part in ((n // 2, users[: n // 2]), (n, users[n // 2 :])):
                        began = time.monotonic()
                        calls += await start_all(
                            server.client,
                            task_queue=task_queue,
                            definition=definition,
                            version=version,
                            users=part,
                        )
                        waiting = await all_at_timer(
                            server.client, task_queue, done, timeout=max(120.0, n / 10)
                        )
                        took += time.monotonic() - began
                        rss.append(rss_mb(pid))
                    cpu = cpu_seconds(pid) - cpu
                    figures.caches.append(
                        CacheFigures(
                            cache_size=cache_size,
                            journeys=n,
                            start_s=took,
                            calls_s=calls,
                            at_timer=waiting,
                            worker_rss_idle_mb=idle,
                            worker_rss_half_mb=rss[0],
                            worker_rss_mb=rss[1],
                            temporal_rss_mb=rss_mb(server.process.pid),
                            worker_cpu_ms_per_journey=1000 * cpu / n,
                        )
                    )
                finally:
                    await stop([worker])


async def measure_wake(n: int, cache_size: int) -> WakeFigures:
    """`n` journeys to their timer on the time-skipping server, 7 days skipped, until every
    message arrived at the recorder."""
    with tempfile.TemporaryDirectory(prefix="nudge-wake-") as directory:
        database_url = f"sqlite+aiosqlite:///{directory}/nudge.db"
        definition, version = await store_campaign(database_url)
        recorder = WebhookRecorder().start()
        try:
            async with time_skipping_server() as env:
                settings = Settings(
                    _env_file=None,
                    environment=Environment.test,
                    database_url=database_url,
                    task_queue=f"bench-wake-{uuid.uuid4().hex[:8]}",
                    webhook_url=recorder.url,
                    quiet_hours_start=None,
                    workflow_cache_size=cache_size,
                )
                users = [f"user-wake-{i:07d}" for i in range(n)]
                async with (
                    worker_activities(settings, env.client) as activities,
                    create_worker(
                        env.client,
                        activities,
                        task_queue=settings.task_queue,
                        workflow_cache_size=settings.workflow_cache_size,
                    ),
                ):
                    began = time.monotonic()
                    await start_all(
                        env.client,
                        task_queue=settings.task_queue,
                        definition=definition,
                        version=version,
                        users=users,
                    )
                    await all_waiting(env.client, users, timeout=max(300.0, n))
                    start_s = time.monotonic() - began
                    expected = [
                        recorder.expect(
                            idempotency_key(
                                journey_id(CAMPAIGN_ID, u), entry_event(u).message_id, "send", 1
                            )
                        )
                        for u in users
                    ]
                    began = time.monotonic()
                    # The server moves its clock only while nothing is outstanding: the call
                    # returns once it is 7 days on, the wakes' work done or under way.
                    request = SleepRequest()
                    request.duration.FromTimedelta(WAIT + timedelta(minutes=1))
                    await env.client.test_service.unlock_time_skipping_with_sleep(
                        request, timeout=timedelta(seconds=max(600.0, n))
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.gather(*expected), max(300.0, n))
                    arrivals = [a.monotonic for arr in recorder.arrivals.values() for a in arr]
                    wake_s = (max(arrivals) if arrivals else time.monotonic()) - began
                    # The journeys record their outcome after the send: let them finish
                    # before the worker goes, in real time (waiting on a result would skip
                    # time again and time out their activities).
                    with env.auto_time_skipping_disabled():
                        await _finish(env.client, users)
        finally:
            recorder.close()
        return WakeFigures(
            journeys=n,
            cache_size=cache_size,
            start_s=start_s,
            wake_s=wake_s,
            received=len(recorder.ids()),
            duplicated=sum(1 for arr in recorder.arrivals.values() if len(arr) > 1),
        )


async def all_waiting(client: Client, users: list[str], *, timeout: float) -> None:
    """Wait until every journey of `users` has no workflow task pending: at its timer (the
    steps before it run no activity). Described one by one; each found waiting is not
    asked again."""
    left = list(users)
    deadline = time.monotonic() + timeout
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def waits(user: str) -> bool:
        async with gate:
            handle = client.get_workflow_handle(journey_id(CAMPAIGN_ID, user))
            raw = (await handle.describe()).raw_description
            return (
                not raw.HasField("pending_workflow_task")
                and raw.workflow_execution_info.history_length > 3
            )

    while left:
        found = await asyncio.gather(*(waits(u) for u in left))
        left = [u for u, ok in zip(left, found, strict=True) if not ok]
        if left and time.monotonic() > deadline:
            raise TimeoutError(f"{len(left)} journeys not at their timer after {timeout:.0f} s")
        if left:
            await asyncio.sleep(0.25)


async def _finish(client: Client, users: list[str]) -> None:
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def one(user: str) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                handle = client.get_workflow_handle(journey_id(CAMPAIGN_ID, user))
                await asyncio.wait_for(handle.result(), 30)

    await asyncio.gather(*(one(u) for u in users))


async def measure(
    journeys: int = JOURNEYS,
    *,
    cache_sizes: tuple[int, ...] = CACHE_SIZES,
    wake: int = WAKE,
    temporal_db: str = "memory",
    server: DevServer | None = None,
) -> WaitingFigures:
    """Start `journeys` waiting journeys once per cache size on `server` (or a dev server
    started here, its workflows in `temporal_db`), then wake `wake` of them on the
    time-skipping server (0: no wake)."""
    begin = time.monotonic()
    load = os.getloadavg()[0]
    figures = WaitingFigures(
        machine=machine(), temporal_db="the caller's server" if server else temporal_db
    )
    await measure_starts(
        journeys, cache_sizes, temporal_db=temporal_db, figures=figures, server=server
    )
    if wake:
        try:
            figures.wake = await measure_wake(wake, max(cache_sizes, default=WAKE_CACHE))
        except Exception as exc:  # the start figures stand on their own
            figures.wake_error = f"{type(exc).__name__}: {exc}"
    figures.duration_s = time.monotonic() - begin
    figures.load = (load, os.getloadavg()[0])
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.waiting", description=__doc__)
    parser.add_argument("--journeys", type=int, default=JOURNEYS, help="per cache size")
    parser.add_argument(
        "--cache-sizes",
        default=",".join(str(c) for c in CACHE_SIZES),
        help="worker cache sizes to compare, comma-separated",
    )
    parser.add_argument("--wake", type=int, default=WAKE, help="journeys woken (0: none)")
    parser.add_argument(
        "--temporal-db",
        choices=("file", "memory"),
        default="memory",
        help="where the dev server keeps workflows (make dev: file, several times slower here)",
    )
    args = parser.parse_args(argv)
    cache_sizes = tuple(int(c) for c in args.cache_sizes.split(",") if c.strip())

    async def report() -> int:
        figures = await measure(
            args.journeys, cache_sizes=cache_sizes, wake=args.wake, temporal_db=args.temporal_db
        )
        print(figures.render())
        return 0 if figures.complete else 1

    run_to_exit(report)


if __name__ == "__main__":
    main()
