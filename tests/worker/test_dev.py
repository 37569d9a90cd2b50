"""`nudge dev` end to end: the launcher's own dev server, worker and API, the shipped
examples applied through the API, a journey driven over HTTP, a clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.config import Settings
from core.journey import JourneyState, JourneyStatus
from temporal.client import connect
from temporal.servers import free_port, port_is_free
from tests.fixtures.api import eventually
from worker.dev import DevOptions, run_dev


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
    stop, ready = asyncio.Event(), asyncio.Event()
    stack = asyncio.create_task(run_dev(settings, ports, stop=stop, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), timeout=90)
        base = f"http://127.0.0.1:{settings.api_port}"
        admin = {"Authorization": f"Bearer {settings.admin_token}"}
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            listed = (await http.get("/v1/campaigns", headers=admin)).json()["data"]
            assert {(c["id"], c["status"]) for c in listed} == {
                ("cart-abandonment", "active"),
                ("welcome-series", "active"),
            }
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
    finally:
        stop.set()
        await asyncio.wait_for(stack, timeout=60)
    for port in (ports.temporal_port, ports.ui_port, settings.api_port):
        assert port_is_free(port), f"port {port} still taken after stop"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_nudge_dev_command_starts_and_stops_on_ctrl_c(tmp_path: Path):
    """The real command, as `make dev` runs it: it prints the banner, and Ctrl-C ends it
    with exit code 0 and no process left behind."""
    env = {
        **os.environ,
        "NUDGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/nudge.db",
        "NUDGE_API_PORT": str(free_port()),
        "NUDGE_WRITE_KEY": "printed-key",
    }
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "nudge"),
            "dev",
            "--temporal-port",
            str(free_port()),
            "--ui-port",
            str(free_port()),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "Stop with Ctrl-C" in line:
                break
        banner = "".join(seen)
        assert "write key      printed-key" in banner
        assert "curl -u printed-key:" in banner
        assert "cart-abandonment (v1), welcome-series (v1)" in banner
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, banner + rest
    assert "stopped." in rest
    assert (tmp_path / ".nudge" / "temporal.db").exists()
