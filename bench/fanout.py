"""bench: `python -m bench.fanout` — one external trigger fanned out to an audience of
`--users` (10,000 by default; `--users 100000` for the full figure) on the embedded stack,
against the bare signal-with-start rate of the same dev server measured in the same run.

Real parts: a fresh dev server (the bench's, transfer-queue throttle lifted as in
bench/stack.py), a fresh SQLite file, `nudge api` and `nudge worker` as their own
processes (so each one's RSS can be read), the trigger posted over HTTP.

- baseline: signal-with-start of `--baseline` trivial workflows (each waits on a 30-day
  timer), 16 at a time, from this process: Temporal's own start rate here;
- fan-out: POST /v1/triggers/bench-rain; the clock runs from the answer until the fan-out
  workflow completes; its journeys wait 30 days (what is measured is starting them), and
  the rate limit is lifted (NUDGE_FANOUT_RATE_PER_SECOND) so the figure is the capacity;
- RSS of the API and the worker processes, sampled every 0.25 s, peak and at the end.

Prints the figures and the ratio; exits non-zero if any member did not get a journey.
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
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import func, insert, select
from temporalio import workflow
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.stack import UNTHROTTLED
from core.fanout import FanOutCursor, fanout_workflow_id, trigger_occurrence
from store.db import create_engine, migrate, session_factory
from store.models import JourneyEntry, Profile
from temporal.servers import DevServerOptions, dev_server, free_port
from temporal.shutdown import run_to_exit

NUDGE = Path(sys.executable).parent / "nudge"
ADMIN_TOKEN = "bench-admin-token"
CONCURRENCY = 16
CAMPAIGN = {
    "id": "bench-rain",
    "name": "Bench: a trigger to everyone",
    "entry": {"trigger": "bench-rain"},
    "steps": [{"id": "later", "type": "wait", "duration": "30d"}],
}


@workflow.defn(name="bench_waiting")
class Waiting:
    @workflow.signal(name="event")
    def event(self, _: str) -> None:
        pass

    @workflow.run
    async def run(self, _: str) -> None:
        await workflow.sleep(timedelta(days=30))


@dataclass
class Rss:
    peak_mb: float = 0.0
    last_mb: float = 0.0
    samples: list[float] = field(default_factory=list)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def sample(processes: dict[str, subprocess.Popen[bytes]], into: dict[str, Rss]) -> None:
    while True:
        for name, process in processes.items():
            with contextlib.suppress(OSError):
                mb = rss_mb(process.pid)
                rss = into[name]
                rss.last_mb = mb
                rss.peak_mb = max(rss.peak_mb, mb)
                rss.samples.append(mb)
        await asyncio.sleep(0.25)


async def baseline(client: Client, n: int) -> float:
    """Signal-with-start `n` waiting workflows, CONCURRENCY at a time: starts per second."""
    task_queue = f"bench-base-{uuid.uuid4().hex[:8]}"
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            await client.start_workflow(
                "bench_waiting",
                "x",
                id=f"bench-base-{task_queue}-{i}",
                task_queue=task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                start_signal="event",
                start_signal_args=["x"],
            )

    # Unsandboxed: this module imports what a sandbox refuses, and the figure wanted is the
    # server's start rate, not the worker's.
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[Waiting],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        took = time.perf_counter() - began
    return n / took


def nudge(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("a") as out:
        return subprocess.Popen(
            [str(NUDGE), command], env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT
        )


async def wait_ready(url: str, worker_log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                api_up = (await http.get(f"{url}/healthz")).status_code == 200
                if api_up and "worker polling task queue" in worker_log.read_text():
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("nudge api or worker not ready in time")


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="nudge-bench-fanout-") as directory:
        folder = Path(directory)
        # Its output kept; its workflows in memory, or in a database file as `make dev` keeps
        # them (slower: the figure to expect from the embedded stack).
        server_log = Path(args.server_log) if args.server_log else folder / "temporal.log"
        options = DevServerOptions(
            dynamic_config=UNTHROTTLED,
            db_file=folder / "temporal.db" if args.temporal_db == "file" else None,
            log_file=server_log,
        )
        database = f"sqlite+aiosqlite:///{folder}/nudge.db"
        await migrate(database)
        engine = create_engine(database)
        sessions = session_factory(engine)
        users = [f"user-{i:07d}" for i in range(args.users)]
        async with sessions() as session:
            for first in range(0, len(users), 5000):
                await session.execute(
                    insert(Profile),
                    [
                        {"user_id": u, "traits": {"city": "Shanghai"}}
                        for u in users[first : first + 5000]
                    ],
                )
            await session.commit()
        async with dev_server(options) as server:
            base_rate = await baseline(server.client, args.baseline)
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}
            env.update(
                NUDGE_ENVIRONMENT="test",
                NUDGE_DATABASE_URL=database,
                NUDGE_TEMPORAL_ADDRESS=server.address,
                NUDGE_TASK_QUEUE=f"bench-fanout-{uuid.uuid4().hex[:8]}",
                NUDGE_ADMIN_TOKEN=ADMIN_TOKEN,
                NUDGE_WRITE_KEY="bench-write-key",
                NUDGE_API_HOST="127.0.0.1",
                NUDGE_API_PORT=str(port),
                NUDGE_FANOUT_RATE_PER_SECOND="1000000",
                NUDGE_FANOUT_PAGE_SIZE=str(args.page_size),
                NUDGE_LOG_LEVEL="INFO",
            )
            url = f"http://127.0.0.1:{port}"
            processes = {"api": nudge("api", env, folder / "api.log")}
            for i in range(args.workers):
                name = "worker" if args.workers == 1 else f"worker-{i + 1}"
                processes[name] = nudge("worker", env, folder / f"{name}.log")
            # The dev server too: it keeps every waiting journey (in memory by default).
            watched = {**processes, "temporal": server.process}
            rss = {name: Rss() for name in watched}
            sampler = asyncio.create_task(sample(watched, rss))
            try:
                for name in processes:
                    if name.startswith("worker"):
                        await wait_ready(url, folder / f"{name}.log")
                headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
                async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
                    applied = await http.post("/v1/campaigns?activate=true", json=CAMPAIGN)
                    applied.raise_for_status()
                    await http.post("/v1/campaigns/bench-rain/activate")
                    idle = {name: r.last_mb for name, r in rss.items()}
                    cpu_before = {n: cpu_seconds(p.pid) for n, p in watched.items()}
                    began = time.perf_counter()
                    posted = await http.post(
                        "/v1/triggers/bench-rain", json={"id": "r-1", "properties": {}}
                    )
                    posted.raise_for_status()
                handle = server.client.get_workflow_handle(
                    fanout_workflow_id(trigger_occurrence("bench-rain", "r-1")),
                    result_type=FanOutCursor,
                )
                while True:
                    with contextlib.suppress(Exception):
                        done = await asyncio.wait_for(handle.result(), timeout=5)
                        break
                took = time.perf_counter() - began
                cpu = {n: cpu_seconds(p.pid) - cpu_before[n] for n, p in watched.items()}
                async with sessions() as session:
                    entered = await session.scalar(
                        select(func.count()).where(JourneyEntry.campaign_id == "bench-rain")
                    )
            finally:
                sampler.cancel()
                for process in processes.values():
                    process.send_signal(signal.SIGTERM)
                for process in processes.values():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=30)
                await engine.dispose()
        rate = args.users / took
        figures = {
            "users": args.users,
            "page_size": args.page_size,
            "workers": args.workers,
            "temporal_db": args.temporal_db,
            "baseline_starts_per_s": round(base_rate, 1),
            "fanout_journeys_per_s": round(rate, 1),
            "ratio": round(rate / base_rate, 2),
            "fanout_seconds": round(took, 1),
            "journeys_started": done.started,
            "journeys_recorded": entered,
            "pages": done.pages,
            "cpu_ms_per_journey": {n: round(1000 * c / args.users, 2) for n, c in cpu.items()},
            "rss_mb": {
                name: {"idle": round(idle[name]), "peak": round(r.peak_mb), "end": round(r.last_mb)}
                for name, r in rss.items()
            },
        }
        print(
            f"fan-out of one trigger to {args.users:,} users (pages of {args.page_size}, "
            f"{args.workers} worker process{'es' if args.workers > 1 else ''}):\n"
            f"  baseline signal-with-start ({args.baseline:,}, {CONCURRENCY} at a time): "
            f"{base_rate:,.0f} starts/s\n"
            f"  fan-out: {rate:,.0f} journeys/s ({took:,.1f} s) = {rate / base_rate:.2f}x the baseline\n"
            f"  journeys started {done.started:,}, recorded {entered:,}, pages {done.pages}\n"
            + "".join(
                f"  {name} CPU: {1000 * cpu[name] / args.users:.1f} ms per journey "
                f"({cpu[name]:.1f} s of {took:.1f} s)\n"
                for name in watched
            )
            + "".join(
                f"  {name} RSS: {idle[name]:,.0f} MB idle, {r.peak_mb:,.0f} MB peak, "
                f"{r.last_mb:,.0f} MB at the end\n"
                for name, r in rss.items()
            )
        )
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        return 0 if entered == args.users else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=2_000, help="workflows the baseline starts")
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1, help="nudge worker processes")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--server-log", help="keep the dev server's output in this file")
    parser.add_argument(
        "--temporal-db",
        choices=("memory", "file"),
        default="memory",
        help="where the dev server keeps workflows (make dev: file)",
    )
    args = parser.parse_args(argv)
    run_to_exit(lambda: run(args))


if __name__ == "__main__":
    main()
