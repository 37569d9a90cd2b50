"""`nudge dev` end to end: the launcher's own dev server, worker and API, the shipped
examples applied through the API, a journey driven over HTTP, a clean stop — and nothing
left running, whether it stops on Ctrl-C, on a closed terminal, or a test fails midway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import Settings
from core.journey import JourneyState, JourneyStatus
from temporal.client import connect
from temporal.servers import free_port, port_is_free
from tests.cli.runner import C_LOCALE, nudge
from tests.fixtures.api import eventually
from worker.dev import EXAMPLES as EXAMPLE_CAMPAIGNS
from worker.dev import DevOptions, run_dev, temporal_port

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


def quiet_now(now: datetime) -> dict[str, str]:
    """Quiet hours that hold `now` whatever its hour (from an hour before to two after, in
    UTC): the first run must show a send at any hour, so the test runs inside them."""
    return {
        "quiet_hours_start": f"{(now - timedelta(hours=1)):%H:%M}",
        "quiet_hours_end": f"{(now + timedelta(hours=2)):%H:%M}",
        "default_timezone": "UTC",
    }


async def test_dev_stack_first_run_shows_a_send_the_cart_example_runs_and_a_restart_keeps_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """One stack, started twice on the same state. The first start, inside quiet hours,
    still shows a message sent within seconds (the demo receipt is transactional) and says
    when the quiet hours end; `nudge messages` prints it as UTF-8 and says why a user whose
    welcome waits got nothing. An operator pauses one example and archives another; the
    second start keeps both, applies nothing again, and sends no second receipt."""
    ports = DevOptions(
        temporal_port=free_port(), ui_port=free_port(), state_dir=tmp_path / ".nudge"
    )
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/nudge.db",
        api_port=free_port(),
        write_key="demo-key",
        **quiet_now(datetime.now(UTC)),
    )
    base = f"http://127.0.0.1:{settings.api_port}"
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    async with dev_stack(settings, ports), httpx.AsyncClient(base_url=base, timeout=10) as http:
        first_banner = capsys.readouterr().out
        listed = (await http.get("/v1/campaigns", headers=admin)).json()["data"]
        shipped = {p.stem for p in EXAMPLE_CAMPAIGNS.glob("*.yaml")}
        assert {"cart-abandonment", "welcome-series", "order-receipt"} <= shipped
        assert {(c["id"], c["status"]) for c in listed} == {(i, "active") for i in shipped}
        segments = (await http.get("/v1/segments", headers=admin)).json()["data"]
        assert {s["id"] for s in segments} == {"shanghai", "loyal-buyers", "digest-readers"}

        # The first send: already there when the banner printed, and shown in it.
        r = await http.get("/v1/messages", params={"user_id": "ada"}, headers=admin)
        [receipt] = r.json()["data"]
        assert receipt["subject"] == "Your order demo-1001 is confirmed"
        assert "Total: 150,00\u00a0€." in receipt["body"]  # de_DE, as the demo user's locale
        assert "Sent just now: ada completed an order" in first_banner
        assert "  to ada: Your order demo-1001 is confirmed" in first_banner
        assert "Total: 150,00\u00a0€." in first_banner
        assert "messages --user ada" in first_banner
        assert f"{base}/dashboard/users?user=ada" in first_banner
        end = settings.quiet_hours_end
        assert f"quiet hours    {settings.quiet_hours_start}-{end} UTC: NOW, until {end}" in (
            first_banner
        )

        # A marketing message inside quiet hours waits; `nudge messages` says until when.
        signed_up = {"userId": "grace", "event": "Signed Up"}
        assert (await http.post("/v1/track", json=signed_up, auth=("demo-key", ""))).is_success

        async def deferred() -> JourneyState:
            r = await http.get("/v1/journeys/welcome-series/grace", headers=admin)
            assert r.status_code == 200, r.text
            state = JourneyState.model_validate(r.json())
            assert state.waiting_for and state.waiting_for.startswith("deferred until")
            return state

        await eventually(deferred, timeout=30)
        token = settings.admin_token
        grace, ada = await asyncio.gather(
            nudge(tmp_path, "messages", "--user", "grace", url=base, admin_token=token),
            nudge(
                tmp_path, "messages", "--user", "ada", url=base, admin_token=token, environ=C_LOCALE
            ),
        )
        assert grace.code == 0, grace
        assert json.loads(grace.stdout) == []
        assert "no message sent to grace yet" in grace.stderr
        assert "welcome-series: running at step welcome: deferred until " in grace.stderr
        assert f"{end} UTC: quiet hours {settings.quiet_hours_start}-{end} in UTC" in (grace.stderr)
        assert (ada.code, ada.stderr) == (0, "")
        assert "Total: 150,00\u00a0€." in ada.stdout and "\\u20ac" not in ada.stdout
        assert json.loads(ada.stdout)[0]["id"] == receipt["id"]

        # The cart example, driven over HTTP.
        added = {
            "userId": "ada",
            "event": "Product Added",
            "properties": {"product_id": "sku-1", "name": "Umbrella", "price": 19.5},
        }
        assert (await http.post("/v1/track", json=added, auth=("demo-key", ""))).status_code == 200

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
        assert (await http.post("/v1/track", json=paid, auth=("demo-key", ""))).status_code == 200

        async def converted() -> bool:
            r = await http.get("/v1/journeys/cart-abandonment/ada", headers=admin)
            return JourneyState.model_validate(r.json()).status is JourneyStatus.converted

        await eventually(converted, timeout=30)

        async def second_receipt() -> list[dict[str, Any]]:
            r = await http.get("/v1/messages", params={"user_id": "ada"}, headers=admin)
            return [m for m in r.json()["data"] if m["subject"] == "Your order o-1 is confirmed"]

        await eventually(second_receipt, timeout=30)
        # An operator's changes that a restart must keep.
        for action, campaign in (("pause", "cart-abandonment"), ("archive", "welcome-series")):
            r = await http.post(f"/v1/campaigns/{campaign}/{action}", headers=admin)
            assert r.status_code == 200, r.text
    assert (ports.state_dir / "temporal.db").exists()
    for port in (ports.temporal_port, ports.ui_port, settings.api_port):
        assert port_is_free(port), f"port {port} still taken after stop"

    # The restart: Temporal's port from NUDGE_TEMPORAL_ADDRESS this time (honoured, not
    # overridden), the other ports new too, quiet hours off; the same state.
    again = DevOptions(ui_port=free_port(), state_dir=ports.state_dir)
    temporal = free_port()
    settings = settings.model_copy(
        update={
            "api_port": free_port(),
            "temporal_address": f"127.0.0.1:{temporal}",
            "quiet_hours_start": None,
        }
    )
    base = f"http://127.0.0.1:{settings.api_port}"
    capsys.readouterr()
    async with dev_stack(settings, again), httpx.AsyncClient(base_url=base, timeout=10) as http:
        second_banner = capsys.readouterr().out
        statuses = {
            c["id"]: c["status"]
            for c in (await http.get("/v1/campaigns", headers=admin)).json()["data"]
        }
        assert statuses["cart-abandonment"] == "paused"
        assert statuses["welcome-series"] == "archived"
        assert statuses["order-receipt"] == "active"
        assert "cart-abandonment (v1, paused)" in second_banner
        assert "welcome-series (v1, archived)" in second_banner
        assert "kept as they are" in second_banner
        assert f"Temporal       127.0.0.1:{temporal}" in second_banner
        # No second demo order: the banner shows the newest message there is.
        assert "The latest message to ada" in second_banner
        assert "Your order o-1 is confirmed" in second_banner
        r = await http.get("/v1/messages", params={"user_id": "ada"}, headers=admin)
        assert sorted(m["subject"] for m in r.json()["data"]) == [
            "Your order demo-1001 is confirmed",
            "Your order o-1 is confirmed",
        ]
        # The journeys of the first run are still there, on the same Temporal state.
        r = await http.get("/v1/journeys/cart-abandonment/ada", headers=admin)
        assert JourneyState.model_validate(r.json()).status is JourneyStatus.converted
        # Quiet hours are off now: grace's welcome, deferred by the first run's, goes at once.

        async def welcomed() -> list[str]:
            r = await http.get("/v1/messages", params={"user_id": "grace"}, headers=admin)
            return [m["subject"] for m in r.json()["data"]]

        [welcome] = await eventually(welcomed, timeout=30)
        assert welcome.startswith("Welcome")
    for port in (temporal, again.ui_port, settings.api_port):
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
def nudge_dev_command(
    tmp_path: Path,
    *,
    grace: float = STOPPED_WITHIN,
    ports_in: str = "flags",
    ports: tuple[int, int, int] | None = None,
) -> Iterator[DevCommand]:
    """`nudge dev` as `make dev` runs it, yielded once it printed its banner, its ports
    (API, Temporal, UI) given as flags or in the environment (`ports_in`). However the
    block ends, nothing of it is left: asked to stop (Ctrl-C) if it still runs, then after
    `grace` seconds killed — its process group, and every process it started."""
    api, temporal, ui = ports or (free_port(), free_port(), free_port())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")},
        "NUDGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/nudge.db",
        "NUDGE_WRITE_KEY": "printed-key",
    }
    command = [str(Path(sys.executable).parent / "nudge"), "dev"]
    if ports_in == "flags":
        command += ["--api-port", str(api), "--temporal-port", str(temporal)]
        command += ["--ui-port", str(ui)]
    else:
        env |= {
            "NUDGE_API_PORT": str(api),
            "NUDGE_TEMPORAL_PORT": str(temporal),
            "NUDGE_TEMPORAL_UI_PORT": str(ui),
        }
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
    ("stop", "ports_in"),
    [(signal.SIGINT, "environment"), (getattr(signal, "SIGHUP", None), "flags")],
    ids=["ctrl-c", "terminal-closed"],
)
def test_nudge_dev_command_starts_and_stops_on_ctrl_c_or_a_closed_terminal(
    tmp_path: Path, stop: signal.Signals, ports_in: str
):
    """The real command, as `make dev` runs it: on the ports its flags or its environment
    (NUDGE_API_PORT, NUDGE_TEMPORAL_PORT, NUDGE_TEMPORAL_UI_PORT) name, it prints the
    banner; Ctrl-C (SIGINT) or closing its terminal (SIGHUP) ends it with exit code 0 and
    no process left behind."""
    api, temporal, ui = free_port(), free_port(), free_port()
    with nudge_dev_command(tmp_path, ports_in=ports_in, ports=(api, temporal, ui)) as dev:
        assert f"API            http://127.0.0.1:{api} " in dev.banner
        assert f"Temporal       127.0.0.1:{temporal}\n" in dev.banner
        assert f"Temporal UI    http://127.0.0.1:{ui}/" in dev.banner
        server = command_line(dev.temporal_server()).split()
        assert server[server.index("--port") + 1] == str(temporal)
        assert server[server.index("--ui-port") + 1] == str(ui)
        assert "Sent just now: ada completed an order" in dev.banner
        # A port given as a flag is unknown to the shell's `nudge`: the banner points it.
        pointed = f"--url http://127.0.0.1:{api} messages --user ada" in dev.banner
        assert pointed is (ports_in == "flags"), dev.banner
        assert "write key      printed-key" in dev.banner
        assert "curl -u printed-key:" in dev.banner
        assert "cart-abandonment (v1)" in dev.banner and "order-receipt (v1)" in dev.banner
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
        in_use = r"nudge dev exited: error: port \d+ \(API\) is in use .*--api-port"
        with pytest.raises(RuntimeError, match=in_use):
            async with dev_stack(settings, options):
                pass
    assert asyncio.all_tasks() - before == set()


async def test_nudge_dev_refuses_a_taken_temporal_or_ui_port_before_it_starts(tmp_path: Path):
    """A taken Temporal or UI port ends the start at once, naming the port, its holder and
    both ways to move; nothing was started or written (the API's port: tests/cli)."""
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/nudge.db",
        api_port=free_port(),
    )
    state = tmp_path / ".nudge"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = (
            (
                DevOptions(temporal_port=port, ui_port=free_port(), state_dir=state),
                "Temporal",
                "--temporal-port PORT or NUDGE_TEMPORAL_PORT=PORT",
            ),
            (
                DevOptions(temporal_port=free_port(), ui_port=port, state_dir=state),
                "Temporal UI",
                "--ui-port PORT or NUDGE_TEMPORAL_UI_PORT=PORT",
            ),
        )
        for options, what, ways in cases:
            with pytest.raises(SystemExit) as refused:
                await run_dev(settings, options, stop=asyncio.Event())
            said = str(refused.value.code)
            assert said.startswith(
                f"error: port {port} ({what}) is in use by pid {os.getpid()} ("
            ), said
            assert said.endswith(ways), said
    assert not state.exists() and not (tmp_path / "nudge.db").exists()


@pytest.mark.parametrize(
    ("address", "env_port", "flag", "port"),
    [
        (None, None, None, 7233),
        (None, 7300, None, 7300),
        (None, 7300, 7400, 7400),
        ("127.0.0.1:7500", None, None, 7500),
        ("localhost:7500", 7500, 7500, 7500),
        ("127.0.0.1:7500", None, 7400, "127.0.0.1:7500 and --temporal-port 7400 disagree"),
        ("127.0.0.1:7500", 7400, None, "127.0.0.1:7500 and NUDGE_TEMPORAL_PORT=7400 disagree"),
        ("temporal.example.com:7233", None, None, "names another Temporal server"),
    ],
)
def test_the_dev_servers_port_never_silently_overrides_nudge_temporal_address(
    address: str | None, env_port: int | None, flag: int | None, port: int | str
):
    """--temporal-port, else NUDGE_TEMPORAL_PORT, else NUDGE_TEMPORAL_ADDRESS's port, else
    7233; an address the dev server could not serve is refused, naming both settings."""
    given: dict[str, Any] = {"temporal_port": env_port}
    if address is not None:
        given["temporal_address"] = address
    settings = Settings(_env_file=None, **given)
    if isinstance(port, int):
        assert temporal_port(settings, flag) == port
    else:
        with pytest.raises(SystemExit) as refused:
            temporal_port(settings, flag)
        assert port in str(refused.value.code)
        assert str(refused.value.code).startswith("error: NUDGE_TEMPORAL_ADDRESS=")
