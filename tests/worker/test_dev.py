"""`nudge dev` end to end: the launcher's own dev server, worker and API, the shipped
examples applied through the API, a journey driven over HTTP, a clean stop — and nothing
left running, whether it stops on Ctrl-C, on a closed terminal, or a test fails midway."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.config import Settings
from core.journey import JourneyState, JourneyStatus
from temporal.client import connect
from temporal.servers import free_port, port_is_free
from tests.fixtures.api import eventually
from worker.dev import EXAMPLES as EXAMPLE_CAMPAIGNS
from worker.dev import DevOptions, run_dev

READY_WITHIN = 90.0
STOPPED_WITHIN = 60.0


@contextlib.asynccontextmanager
async def dev_stack(settings: Settings, options: DevOptions) -> AsyncIterator[None]:
    """`run_dev` in this event loop until the block ends; ready when the block starts.

    `run_dev` says why it cannot start with SystemExit, as a command does. Raised in a task,
    SystemExit leaves the event loop itself, which every test of the session shares: the
    test awaiting it would be left pending, and wake in a later test to hand that one the
    SystemExit. Here it is an ordinary error of this test.
    """
    stop, ready = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        try:
            await run_dev(settings, options, stop=stop, ready=ready)
        except SystemExit as exc:
            raise RuntimeError(f"nudge dev exited: {exc}") from None

    stack = asyncio.create_task(run())
    readied = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait({stack, readied}, timeout=READY_WITHIN, return_when="FIRST_COMPLETED")
        if stack.done():
            stack.result()  # raises why it stopped
            raise AssertionError("nudge dev stopped before it was ready")
        assert ready.is_set(), f"nudge dev not ready within {READY_WITHIN:.0f} s"
        yield
    finally:
        readied.cancel()
        stop.set()
        await asyncio.wait({stack}, timeout=STOPPED_WITHIN)
        if not stack.done():
            stack.cancel()
            await asyncio.wait({stack})
            raise AssertionError(f"nudge dev did not stop within {STOPPED_WITHIN:.0f} s")


async def test_dev_stack_runs_the_shipped_cart_example_and_stops_cleanly(tmp_path: Path):
    ports = DevOptions(
        temporal_port=free_port(), ui_port=free_port(), state_dir=tmp_path / ".nudge"
    )
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/nudge.db",
        api_port=free_port(),
        write_key="demo-key",
    )
    async with dev_stack(settings, ports):
        base = f"http://127.0.0.1:{settings.api_port}"
        admin = {"Authorization": f"Bearer {settings.admin_token}"}
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            listed = (await http.get("/v1/campaigns", headers=admin)).json()["data"]
            shipped = {p.stem for p in EXAMPLE_CAMPAIGNS.glob("*.yaml")}
            assert {"cart-abandonment", "welcome-series", "rain-promotion"} <= shipped
            assert {(c["id"], c["status"]) for c in listed} == {(i, "active") for i in shipped}
            segments = (await http.get("/v1/segments", headers=admin)).json()["data"]
            assert {s["id"] for s in segments} == {"shanghai", "loyal-buyers", "digest-readers"}
            added = {
                "userId": "ada",
                "event": "Product Added",
                "properties": {"product_id": "sku-1", "name": "Umbrella", "price": 19.5},
            }
            assert (
                await http.post("/v1/track", json=added, auth=("demo-key", ""))
            ).status_code == 200

            async def waiting() -> JourneyState:
                r = await http.get("/v1/journeys/cart-abandonment/ada", headers=admin)
                assert r.status_code == 200, r.text
                state = JourneyState.model_validate(r.json())
                assert state.current_step == "wait-for-order"
                return state

            state = await eventually(waiting, timeout=30)
            assert state.waiting_for and state.waiting_for.startswith("waiting 1d")

            # The Temporal UI's filter finds it on the launcher's own server.
            client = await connect(f"127.0.0.1:{ports.temporal_port}")
            query = "NudgeCampaign = 'cart-abandonment' AND NudgeUser = 'ada'"

            async def listed_ids() -> list[str]:
                return [w.id async for w in client.list_workflows(query)]

            assert await eventually(listed_ids) == ["journey/cart-abandonment/ada"]

            paid = {"userId": "ada", "event": "Order Completed", "properties": {"order_id": "o-1"}}
            assert (
                await http.post("/v1/track", json=paid, auth=("demo-key", ""))
            ).status_code == 200

            async def converted() -> bool:
                r = await http.get("/v1/journeys/cart-abandonment/ada", headers=admin)
                return JourneyState.model_validate(r.json()).status is JourneyStatus.converted

            await eventually(converted, timeout=30)
        assert (ports.state_dir / "temporal.db").exists()
    for port in (ports.temporal_port, ports.ui_port, settings.api_port):
        assert port_is_free(port), f"port {port} still taken after stop"


def running(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, whatever its session: the Temporal dev server runs in a
    session of its own, out of reach of a signal to `nudge dev`'s process group."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    below: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        children = {child for child, p in parents.items() if p == parent} - below
        below |= children
        todo += children
    return below


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


@dataclass
class DevCommand:
    process: subprocess.Popen[str]
    banner: str
    below: set[int]
    """Its processes, seen while it ran."""

    def temporal_server(self) -> int:
        [pid] = [p for p in self.below if "start-dev" in command_line(p)]
        return pid

    def left_running(self) -> list[str]:
        return [command_line(p) or str(p) for p in sorted(self.below) if running(p)]


@contextlib.contextmanager
def nudge_dev_command(tmp_path: Path, *, grace: float = STOPPED_WITHIN) -> Iterator[DevCommand]:
    """`nudge dev` as `make dev` runs it, yielded once it printed its banner. However the
    block ends, nothing of it is left: asked to stop (Ctrl-C) if it still runs, then after
    `grace` seconds killed — its process group, and every process it started."""
    env = {
        **os.environ,
        "NUDGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/nudge.db",
        "NUDGE_API_PORT": str(free_port()),
        "NUDGE_WRITE_KEY": "printed-key",
    }
    command = [str(Path(sys.executable).parent / "nudge"), "dev"]
    command += ["--temporal-port", str(free_port()), "--ui-port", str(free_port())]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    below: set[int] = set()
    try:
        seen = []
        for line in process.stdout:
            seen.append(line)
            if "Stop with Ctrl-C" in line:
                break
        below |= descendants(process.pid)
        yield DevCommand(process, "".join(seen), below)
    finally:
        if process.poll() is None:
            below |= descendants(process.pid)
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        for pid in below:
            if running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)
        process.stdout.close()


linux_only = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads processes from /proc"
)


@linux_only
@pytest.mark.parametrize(
    "stop", [signal.SIGINT, getattr(signal, "SIGHUP", None)], ids=["ctrl-c", "terminal-closed"]
)
def test_nudge_dev_command_starts_and_stops_on_ctrl_c_or_a_closed_terminal(
    tmp_path: Path, stop: signal.Signals
):
    """The real command, as `make dev` runs it: it prints the banner; Ctrl-C (SIGINT) or
    closing its terminal (SIGHUP) ends it with exit code 0 and no process left behind."""
    with nudge_dev_command(tmp_path) as dev:
        assert "write key      printed-key" in dev.banner
        assert "curl -u printed-key:" in dev.banner
        assert "cart-abandonment (v1)" in dev.banner and "welcome-series (v1)" in dev.banner
        assert "segments       loyal-buyers (v1), shanghai (v1), digest-readers (v1)" in dev.banner
        assert "/v1/triggers/rain" in dev.banner
        assert "/dashboard" in dev.banner
        assert running(dev.temporal_server())
        dev.process.send_signal(stop)
        rest, _ = dev.process.communicate(timeout=STOPPED_WITHIN)
        assert dev.process.returncode == 0, dev.banner + rest
        assert "stopped." in rest
        assert dev.left_running() == []
    assert (tmp_path / ".nudge" / "temporal.db").exists()


@linux_only
def test_a_test_failing_while_nudge_dev_hangs_leaves_no_process_behind(tmp_path: Path):
    # Frozen (SIGSTOP), `nudge dev` cannot stop its Temporal server: the cleanup must.
    with pytest.raises(AssertionError, match="failed midway"):
        with nudge_dev_command(tmp_path, grace=1.0) as dev:
            server = dev.temporal_server()
            os.kill(dev.process.pid, signal.SIGSTOP)
            raise AssertionError("failed midway")
    assert not running(server)
    assert dev.left_running() == []


async def test_nudge_dev_failing_to_start_fails_the_test_that_started_it(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings(
            _env_file=None,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/nudge.db",
            api_port=taken.getsockname()[1],
        )
        options = DevOptions(temporal_port=free_port(), ui_port=free_port(), state_dir=tmp_path)
        before = asyncio.all_tasks()
        with pytest.raises(RuntimeError, match=r"nudge dev exited: port \d+ \(API\) is in use"):
            async with dev_stack(settings, options):
                pass
    assert asyncio.all_tasks() - before == set()
