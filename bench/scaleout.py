"""bench: `python -m bench.scaleout [--quick]` — Nudge as separate processes, scaled out.

`nudge api` and `nudge worker` run as their own OS processes (the real CLI, configured by
NUDGE_* variables), against one dev server (the bench's, transfer-queue throttle lifted as
in bench/stack.py) and one scratch PostgreSQL database, with the webhook recorder as the
provider and the bench campaign (`bench.stack.CAMPAIGN`) applied and activated over the API.

Shapes: 1 API + 1 worker, 1 API + 2 workers, 2 API replicas + 2 workers (requests spread
over the replicas in turn). For each: `--journeys` journeys (POST /v1/track, a new user
each, `CONCURRENCY` at a time) — journeys/s from the first POST to the last webhook
arrival, latency percentiles, each message exactly once, and CPU per journey: utime+stime
from /proc of every Nudge process and of the dev server, read before and after (after
every journey finished, so its work after the send counts). `--quick`: the first shape,
a few journeys. Exits 0 when every message arrived exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.client import NudgeClient
from bench.fanout import cpu_seconds, rss_mb
from bench.recorder import Arrival, WebhookRecorder
from bench.report import LatencyFigures, latency_figures, machine
from bench.segments import scratch_postgres
from bench.stack import CAMPAIGN, CAMPAIGN_ID, ENTRY_EVENT, SEND_STEP, UNTHROTTLED
from core.journey import idempotency_key, journey_id
from store.db import migrate
from temporal.servers import DevServer, DevServerOptions, dev_server, free_port
from temporal.shutdown import run_to_exit

DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
POSTGRES_ENV = "NUDGE_BENCH_POSTGRES_URL"
WRITE_KEY = "bench-write-key"
ADMIN_TOKEN = "bench-admin-token"
CONCURRENCY = 20
WARMUP = 2
"""Journeys per API replica run first and not counted: connections, caches, imports."""
JOURNEY_TIMEOUT = 60.0
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
WORKER_READY = "worker polling task queue"
"""What `run_worker` logs once its pollers run."""


@dataclass(frozen=True)
class Shape:
    apis: int
    workers: int

    @property
    def name(self) -> str:
        apis = "1 API" if self.apis == 1 else f"{self.apis} API replicas"
        workers = "1 worker" if self.workers == 1 else f"{self.workers} workers"
        return f"{apis} + {workers}"


SHAPES = (Shape(1, 1), Shape(1, 2), Shape(2, 2))
QUICK_SHAPES = (Shape(1, 1),)
JOURNEYS, QUICK_JOURNEYS = 200, 20


@dataclass
class ShapeFigures:
    shape: Shape
    latency: LatencyFigures
    expected: int
    """Messages expected at the recorder: the warm-up's and the measured journeys'."""
    missing: int
    duplicated: int
    unexpected: int
    cpu_ms_per_journey: dict[str, float]
    """Per process (`api-1`, `worker-1`, …, `temporal`), over the measured journeys."""
    rss_mb: dict[str, float]
    """Per process, after the journeys."""
    start_s: float
    """From spawning the processes until every one was ready."""

    @property
    def exactly_once(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected)

    @property
    def nudge_cpu_ms(self) -> float:
        return sum(v for k, v in self.cpu_ms_per_journey.items() if k != "temporal")


@dataclass
class ScaleOutFigures:
    machine: dict[str, Any]
    database: str
    shapes: list[ShapeFigures] = field(default_factory=list)
    duration_s: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    """The machine's 1-minute load average at the start and at the end: others may share
    these cores, and every figure here is CPU-bound."""

    @property
    def complete(self) -> bool:
        return bool(self.shapes) and all(
            s.exactly_once and s.latency.received == s.latency.n for s in self.shapes
        )

    def rows(self) -> list[str]:
        """The table, one line each: a header, then one row per shape."""
        lines = [
            f"{'shape':<28} {'journeys':>8} {'journeys/s':>10} {'p50 ms':>7} {'p90 ms':>7} "
            f"{'once':>5} {'Nudge CPU ms/j':>14} {'Temporal ms/j':>13}"
        ]
        for s in self.shapes:
            lat = s.latency
            lines.append(
                f"{s.shape.name:<28} {lat.received:>4}/{lat.n:<3} "
                f"{_num(lat.throughput_per_s, '.1f'):>10} {_num(lat.p50_ms, '.0f'):>7} "
                f"{_num(lat.p90_ms, '.0f'):>7} {'yes' if s.exactly_once else 'NO':>5} "
                f"{s.nudge_cpu_ms:>14.1f} {s.cpu_ms_per_journey.get('temporal', 0.0):>13.1f}"
            )
        return lines

    def render(self) -> str:
        cores = self.machine.get("usable_cores") or self.machine.get("cores")
        lines = [
            f"Scale-out: nudge api / nudge worker as processes, one dev server, {self.database}, "
            f"{cores} cores, {CONCURRENCY} journeys in flight",
            *self.rows(),
        ]
        for s in self.shapes:
            per = ", ".join(f"{k} {v:.1f}" for k, v in s.cpu_ms_per_journey.items())
            rss = ", ".join(f"{k} {v:.0f}" for k, v in s.rss_mb.items())
            lines.append(
                f"  {s.shape.name}: ready in {s.start_s:.1f} s; CPU ms/journey {per}; RSS MB {rss}"
            )
            if not s.exactly_once:
                lines.append(
                    f"    missing {s.missing}, duplicated {s.duplicated}, "
                    f"unexpected {s.unexpected} of {s.expected}"
                )
        lines.append(
            f"took {self.duration_s:.1f} s; load average {self.load[0]:.1f} at the start, "
            f"{self.load[1]:.1f} at the end"
        )
        return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# -- processes -----------------------------------------------------------------------


def nudge_command(command: str) -> list[str]:
    """The installed `nudge` script beside the interpreter, else the module."""
    script = Path(sys.executable).parent / "nudge"
    if script.exists():
        return [str(script), command]
    return [sys.executable, "-m", "cli.main", command]


def nudge_env(**settings: str) -> dict[str, str]:
    """This process's environment without any NUDGE_* of the shell, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}
    env.update({f"NUDGE_{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class NudgeProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    offset: int = 0
    """Where this incarnation's output starts in `log` (appended to by each)."""
    url: str | None = None
    """An API's base URL."""

    async def ready(self, http: httpx.AsyncClient) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")
        if self.url is None:
            return WORKER_READY in self.output()
        with contextlib.suppress(httpx.TransportError):
            return (await http.get(f"{self.url}/healthz")).status_code == 200
        return False

    def output(self) -> str:
        with self.log.open(errors="replace") as log:
            log.seek(self.offset)
            return log.read()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


def spawn(name: str, command: str, env: dict[str, str], directory: Path) -> NudgeProcess:
    log = directory / f"{name}.log"
    with log.open("ab") as out:
        offset = out.tell()
        # cwd: a directory of its own, so no developer's .env is read.
        process = subprocess.Popen(
            nudge_command(command),
            env=env,
            cwd=directory,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return NudgeProcess(name, process, log, offset)


async def stop(processes: list[NudgeProcess]) -> None:
    """SIGTERM all, wait for each; SIGKILL whoever is still there after STOP_TIMEOUT."""
    for p in processes:
        if p.process.poll() is None:
            p.process.send_signal(signal.SIGTERM)
    for p in processes:
        try:
            await asyncio.to_thread(p.process.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.process.kill()
            await asyncio.to_thread(p.process.wait)


@contextlib.asynccontextmanager
async def running_shape(
    shape: Shape, *, base_env: dict[str, str], directory: Path
) -> AsyncIterator[tuple[list[NudgeProcess], float]]:
    """The shape's processes, ready; stopped when the block ends, whatever happened."""
    processes: list[NudgeProcess] = []
    began = time.monotonic()
    try:
        for i in range(shape.workers):
            processes.append(spawn(f"worker-{i + 1}", "worker", base_env, directory))
        for i in range(shape.apis):
            port = free_port()
            env = {**base_env, "NUDGE_API_HOST": "127.0.0.1", "NUDGE_API_PORT": str(port)}
            api = spawn(f"api-{i + 1}", "api", env, directory)
            api.url = f"http://127.0.0.1:{port}"
            processes.append(api)
        deadline = time.monotonic() + READY_TIMEOUT
        async with httpx.AsyncClient(timeout=2.0) as http:
            for p in processes:
                while not await p.ready(http):
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{p.name} not ready in {READY_TIMEOUT:.0f} s:\n{p.tail()}"
                        )
                    await asyncio.sleep(0.05)
        yield processes, time.monotonic() - began
    finally:
        await stop(processes)


# -- journeys ------------------------------------------------------------------------


@dataclass
class Sample:
    workflow_id: str
    webhook_id: str
    started: float
    arrival: Arrival | None = None


async def one_journey(
    api: NudgeClient, recorder: WebhookRecorder, name: str, timeout: float
) -> Sample:
    user, message_id = f"user-{name}", f"m-{name}"
    workflow_id = journey_id(CAMPAIGN_ID, user)
    # The `webhook-id` is the send's idempotency key: known before the event is sent.
    webhook_id = idempotency_key(workflow_id, message_id, SEND_STEP, 1)
    arrived = recorder.expect(webhook_id)
    sample = Sample(workflow_id, webhook_id, time.monotonic())
    await api.track(
        user_id=user, event=ENTRY_EVENT, properties={"item": "Umbrella"}, message_id=message_id
    )
    with contextlib.suppress(TimeoutError):
        sample.arrival = await asyncio.wait_for(arrived, timeout)
    return sample


async def journeys(
    apis: list[NudgeClient], recorder: WebhookRecorder, *, tag: str, n: int, concurrency: int
) -> tuple[list[Sample], float]:
    """`n` journeys, at most `concurrency` in flight, the i-th through API replica i mod
    len(apis); with the time from the first POST to the last arrival."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Sample:
        async with gate:
            return await one_journey(apis[i % len(apis)], recorder, f"{tag}-{i}", JOURNEY_TIMEOUT)

    begin = time.monotonic()
    samples = list(await asyncio.gather(*(one(i) for i in range(n))))
    arrivals = [s.arrival.monotonic for s in samples if s.arrival is not None]
    return samples, (max(arrivals) if arrivals else time.monotonic()) - begin


async def settle(server: DevServer, samples: list[Sample]) -> None:
    """Wait until every journey has finished (its outcome recorded after the send)."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(sample: Sample) -> None:
        async with gate:
            handle = server.client.get_workflow_handle(sample.workflow_id)
            with contextlib.suppress(Exception):  # a failed journey shows as missing
                await asyncio.wait_for(handle.result(), JOURNEY_TIMEOUT)

    await asyncio.gather(*(one(s) for s in samples))


async def measure_shape(
    shape: Shape,
    *,
    server: DevServer,
    recorder: WebhookRecorder,
    database_url: str,
    directory: Path,
    task_queue: str,
    n: int,
    apply_campaign: bool,
) -> ShapeFigures:
    tag = uuid.uuid4().hex[:8]
    base_env = nudge_env(
        environment="test",
        database_url=database_url,
        temporal_address=server.address,
        # One task queue for every shape: each worker puts the housekeeping schedules
        # in place for its queue, and they outlive the run on a shared server.
        task_queue=task_queue,
        write_key=WRITE_KEY,
        admin_token=ADMIN_TOKEN,
        webhook_url=recorder.url,
        # No quiet hours (equal start and end): a bench at 22:00 UTC must not wait.
        quiet_hours_start="00:00",
        quiet_hours_end="00:00",
        log_level="INFO",
    )
    seen_before = recorder.ids()
    async with running_shape(shape, base_env=base_env, directory=directory) as (processes, up):
        api_urls = [p.url for p in processes if p.url is not None]
        async with contextlib.AsyncExitStack() as stack:
            apis = [
                await stack.enter_async_context(
                    NudgeClient(url, admin_token=ADMIN_TOKEN, write_key=WRITE_KEY)
                )
                for url in api_urls
            ]
            if apply_campaign:
                await apis[0].apply_campaign(json.dumps(CAMPAIGN), activate=True)
                if len(apis) > 1:  # the other replicas reload active campaigns this often
                    await asyncio.sleep(5.0 + 1.0)
            warm, _ = await journeys(
                apis, recorder, tag=f"{tag}-warm", n=WARMUP * len(apis), concurrency=CONCURRENCY
            )
            await settle(server, warm)

            watched = {p.name: p.process.pid for p in processes}
            watched["temporal"] = server.process.pid
            cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
            samples, elapsed = await journeys(apis, recorder, tag=tag, n=n, concurrency=CONCURRENCY)
            await settle(server, samples)
            cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in watched.items()}
            rss = {name: rss_mb(pid) for name, pid in watched.items()}

    expected = {s.webhook_id for s in warm + samples}
    counts = {webhook_id: recorder.count(webhook_id) for webhook_id in expected}
    latencies = [s.arrival.monotonic - s.started for s in samples if s.arrival is not None]
    return ShapeFigures(
        shape=shape,
        latency=latency_figures(latencies, n=n, elapsed=elapsed, throughput=True),
        expected=len(expected),
        missing=sum(1 for c in counts.values() if c == 0),
        duplicated=sum(1 for c in counts.values() if c > 1),
        unexpected=len(recorder.ids() - seen_before - expected),
        cpu_ms_per_journey={name: 1000 * c / n for name, c in cpu.items()},
        rss_mb=rss,
        start_s=up,
    )


async def measure(
    quick: bool,
    *,
    journeys_per_shape: int | None = None,
    postgres_url: str | None = None,
    server: DevServer | None = None,
    shapes: tuple[Shape, ...] | None = None,
    log_directory: Path | None = None,
) -> ScaleOutFigures:
    """Every shape (the first alone when `quick`) on one dev server (`server`, or one
    started here) and one scratch database on the PostgreSQL server at `postgres_url`."""
    begin = time.monotonic()
    shapes = shapes or (QUICK_SHAPES if quick else SHAPES)
    n = journeys_per_shape or (QUICK_JOURNEYS if quick else JOURNEYS)
    postgres_url = postgres_url or os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)
    figures = ScaleOutFigures(machine=machine(), database="PostgreSQL")
    load = os.getloadavg()[0]
    async with contextlib.AsyncExitStack() as stack:
        database_url = await stack.enter_async_context(scratch_postgres(postgres_url))
        # The schema is migrated while the dev server starts.
        migrating = asyncio.ensure_future(migrate(database_url))
        try:
            if server is None:
                server = await stack.enter_async_context(
                    dev_server(DevServerOptions(dynamic_config=UNTHROTTLED))
                )
        finally:
            await migrating
        recorder = WebhookRecorder().start()
        stack.callback(recorder.close)
        if log_directory is not None:
            log_directory.mkdir(parents=True, exist_ok=True)
            directory = log_directory
        else:
            directory = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="nudge-scale-"))
            )
        task_queue = f"bench-scaleout-{uuid.uuid4().hex[:8]}"
        for i, shape in enumerate(shapes):
            figures.shapes.append(
                await measure_shape(
                    shape,
                    server=server,
                    recorder=recorder,
                    database_url=database_url,
                    directory=directory,
                    task_queue=task_queue,
                    n=n,
                    apply_campaign=i == 0,
                )
            )
    figures.duration_s = time.monotonic() - begin
    figures.load = (load, os.getloadavg()[0])
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one shape, a few journeys")
    parser.add_argument("--journeys", type=int, help="per shape")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help=f"the PostgreSQL server (default: ${POSTGRES_ENV} or {DEFAULT_POSTGRES})",
    )
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep the processes' logs here")
    args = parser.parse_args(argv)

    async def report() -> int:
        figures = await measure(
            args.quick,
            journeys_per_shape=args.journeys,
            postgres_url=args.postgres,
            log_directory=args.logs,
        )
        print(figures.render())
        return 0 if figures.complete else 1

    run_to_exit(report)


if __name__ == "__main__":
    main()
