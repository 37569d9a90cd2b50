"""tests.simulate: the limits of `POST /v1/campaigns/{id}/simulate` — at most
NUDGE_SIMULATION_CONCURRENCY rehearsals at once, and NUDGE_SIMULATION_TIMEOUT_SECONDS for
each (its wait for a turn included), past which the answer is 504 and its process, its
Temporal test server and its files are gone.

Watched for real: the API runs in this test's process, so each rehearsal is a child of it
(`python -m worker.simulate`, a process group of its own with its test server); a watcher
reads /proc while the requests are in flight."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from temporal.servers import free_port
from tests.fixtures.api import ADMIN, make_settings, running_api
from tests.simulate.test_simulate_loop import TICKER

EXAMPLES = Path(__file__).parents[2] / "examples"
CART = yaml.safe_load((EXAMPLES / "campaigns" / "cart-abandonment.yaml").read_text())
ABANDONED = yaml.safe_load(
    (EXAMPLES / "scenarios" / "cart-abandonment" / "abandoned.yaml").read_text()
)
ENDLESS = {
    "name": "2,000 steps of a message a minute",
    "user": "ada",
    "events": [{"at": "0s", "event": "Signed Up"}],
    "max_steps": 2000,
}
"""A loop stopped at the most steps a scenario may allow (`max_steps`): some 1,000 sends,
which take some 13 s of rehearsal (measured), far past the 4 s limit below."""
TEST_SERVER = "temporal-test-server"


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    ppid: int
    pgid: int
    cmdline: str


def proc(pid: int) -> Proc | None:
    """The process `pid` as /proc shows it; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid pgrp …": comm may hold spaces and parentheses.
    state, ppid, pgid = stat[stat.rindex(")") + 2 :].split()[:3]
    return Proc(pid, state, int(ppid), int(pgid), cmdline.strip())


def alive(pid: int) -> bool:
    """Running (a zombie has ended: only its exit status waits to be collected)."""
    found = proc(pid)
    return found is not None and found.state != "Z"


def live_processes() -> list[Proc]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = proc(int(name))
            if p is not None and p.state != "Z":
                found.append(p)
    return found


def scratch_of(pid: int) -> str | None:
    """The rehearsal's TMPDIR (where its database is), from its environment."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    for item in environ:
        if item.startswith(b"TMPDIR="):
            return item.removeprefix(b"TMPDIR=").decode()
    return None


@dataclass
class Watch:
    """Every `worker.simulate` child of this process seen, the most alive at once, and the
    processes of each one's group (its Temporal test server)."""

    engines: set[int] = field(default_factory=set)
    most_at_once: int = 0
    groups: dict[int, set[str]] = field(default_factory=dict)
    """engine pid (its group's id) → the command lines seen in its group."""
    members: set[int] = field(default_factory=set)
    scratch: set[str] = field(default_factory=set)
    live: int = 0

    def look(self) -> None:
        everything = live_processes()
        engines = [
            p for p in everything if p.ppid == os.getpid() and "worker.simulate" in p.cmdline
        ]
        self.live = len(engines)
        self.most_at_once = max(self.most_at_once, self.live)
        for engine in engines:
            self.engines.add(engine.pid)
            where = scratch_of(engine.pid)
            if where:
                self.scratch.add(where)
        for p in everything:
            if p.pgid in self.engines:
                self.groups.setdefault(p.pgid, set()).add(p.cmdline)
                self.members.add(p.pid)

    async def run(self) -> None:
        while True:
            self.look()
            await asyncio.sleep(0.02)

    async def until(self, check: Callable[[Watch], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not check(self):
            assert time.monotonic() < deadline, f"not seen within {timeout}s: {self}"
            await asyncio.sleep(0.02)


async def timed(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[Any, float]:
    began = time.monotonic()
    response = await http.post(path, json=body, headers=ADMIN)
    return response, time.monotonic() - began


async def test_a_rehearsal_past_its_time_is_504_and_leaves_no_process_behind(
    sqlite_url: str,
) -> None:
    """One turn, 4 s each: the first rehearsal (a long loop) is ended at 4 s with its test
    server; the second, which waited for the turn, is 504 at 4 s of its own; neither ran
    beside the other, nothing of either is left, and the turn is free again after."""
    limit = 4.0
    settings = make_settings(
        sqlite_url,
        f"127.0.0.1:{free_port()}",
        simulation_concurrency=1,
        simulation_timeout_seconds=limit,
    )
    watch = Watch()
    async with running_api(settings) as api:
        await api.campaign(TICKER, activate=False)
        await api.campaign(CART, activate=False)
        watcher = asyncio.create_task(watch.run())
        try:
            first = asyncio.create_task(timed(api.http, "/v1/campaigns/ticker/simulate", ENDLESS))
            await watch.until(lambda w: w.live == 1)
            second = asyncio.create_task(timed(api.http, "/v1/campaigns/ticker/simulate", ENDLESS))
            (one, one_took), (two, two_took) = await first, await second
        finally:
            watcher.cancel()
        told = (
            f"the rehearsal took longer than {limit:g} s (its wait for a turn included; "
            "NUDGE_SIMULATION_TIMEOUT_SECONDS); shorten the scenario (`until`) or try again "
            "when fewer run"
        )
        assert (one.status_code, one.json()) == (504, {"detail": told})
        assert (two.status_code, two.json()) == (504, {"detail": told})
        # Each within its own limit (the second's wait for the turn counted in it).
        assert limit <= one_took < limit + 5, one_took
        assert limit <= two_took < limit + 5, two_took
        # One at a time; the first's test server was running when it was ended.
        assert watch.most_at_once == 1, watch
        first_engine = min(watch.engines)
        assert any(TEST_SERVER in line for line in watch.groups[first_engine]), watch.groups
        # Nothing of them is left: no process of theirs, no process in their groups, no
        # file (their databases were in a TMPDIR of their own).
        watch.look()
        assert [pid for pid in watch.members | watch.engines if alive(pid)] == []
        assert [p for p in live_processes() if p.pgid in watch.engines] == []
        assert watch.scratch and not any(Path(d).exists() for d in watch.scratch), watch

        # The turn was given back: with time enough, a short rehearsal is answered.
        api.services.settings = settings.model_copy(update={"simulation_timeout_seconds": 60})
        done, _ = await timed(api.http, "/v1/campaigns/cart-abandonment/simulate", ABANDONED)
        assert done.status_code == 200, done.text
        assert done.json()["passed"] is True


async def test_no_more_rehearsals_run_at_once_than_the_concurrency(sqlite_url: str) -> None:
    """Two turns, three rehearsals asked at once: two run side by side, the third waits
    for a turn and still completes."""
    settings = make_settings(
        sqlite_url,
        f"127.0.0.1:{free_port()}",
        simulation_concurrency=2,
        simulation_timeout_seconds=60,
    )
    watch = Watch()
    async with running_api(settings) as api:
        await api.campaign(CART, activate=False)
        watcher = asyncio.create_task(watch.run())
        try:
            answers = await asyncio.gather(
                *(
                    timed(api.http, "/v1/campaigns/cart-abandonment/simulate", ABANDONED)
                    for _ in range(3)
                )
            )
        finally:
            watcher.cancel()
    for response, _ in answers:
        assert response.status_code == 200, response.text
        assert response.json()["passed"] is True
    assert len(watch.engines) == 3, watch
    assert watch.most_at_once == 2, watch
    assert [pid for pid in watch.members | watch.engines if alive(pid)] == []
