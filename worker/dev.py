"""worker: `nudge dev` — the embedded stack: Temporal dev server, worker, API, demo campaigns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from api.app import create_app
from api.server import serve_in_loop
from core.config import Settings
from store.db import migrate
from temporal.client import converter_for
from temporal.servers import DevServerOptions, PortInUse, ServerError, dev_server, port_is_free
from worker.build import create_worker, put_schedules_in_place, worker_activities

log = logging.getLogger("nudge.dev")

STATE_DIR = Path(".nudge")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "campaigns"


@dataclass(frozen=True)
class DevOptions:
    temporal_port: int = 7233
    ui_port: int = 8233
    examples: Path | None = EXAMPLES
    state_dir: Path = STATE_DIR


async def apply_examples(settings: Settings, examples: Path) -> list[str]:
    """Create (or update) and activate every example campaign through the real API, after
    the example segments (`examples/segments/`, beside the campaigns) they reach."""
    from api.client import NudgeClient

    applied = []
    base = f"http://{settings.api_host}:{settings.api_port}"
    async with NudgeClient(base, admin_token=settings.admin_token) as client:
        for path in sorted((examples.parent / "segments").glob("*.y*ml")):
            segment = await client.apply_segment(path.read_text())
            applied.append(f"segment {segment['id']} (v{segment['version']})")
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
    segments = [a.removeprefix("segment ") for a in applied if a.startswith("segment ")]
    campaigns = [a for a in applied if not a.startswith("segment ")]
    return f"""
Nudge is running (embedded: Temporal dev server + SQLite, sandbox channel).

  API            {api}          (docs: {api}/docs)
  dashboard      {api}/dashboard    (log in with the admin token below)
  Temporal UI    {ui}/namespaces/default/workflows?query={query}
  write key      {settings.write_key}
  admin token    {settings.admin_token}
  campaigns      {", ".join(campaigns) or "none"}
  segments       {", ".join(segments) or "none"}

Drive the cart-abandonment demo (Segment's HTTP Tracking API):

  curl -u {settings.write_key}: {api}/v1/track -H 'content-type: application/json' \\
    -d '{{"userId": "ada", "event": "Product Added", "properties": {{"product_id": "sku-1", "name": "Umbrella", "price": 19.5}}}}'

  {nudge} events send --user ada --event "Product Added" --properties '{{"product_id": "sku-2", "name": "Raincoat"}}'
  {nudge} journeys show cart-abandonment ada
  {nudge} messages --user ada          (what the sandbox channel "sent")

Rain in Shanghai (an external trigger: every user whose city is Shanghai gets the offer):

  curl -u {settings.write_key}: {api}/v1/identify -H 'content-type: application/json' \
    -d '{{"userId": "li", "traits": {{"city": "Shanghai"}}}}'
  curl {api}/v1/triggers/rain -H 'Authorization: Bearer {settings.admin_token}' \
    -H 'content-type: application/json' -d '{{"id": "rain-1", "properties": {{"city": "Shanghai", "mm": 12}}}}'
  {nudge} messages --user li

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
        # A closed terminal (SIGHUP) too: the Temporal dev server runs in a session of its
        # own, which no signal from the terminal reaches, so a `nudge dev` killed by one
        # would leave it running, holding its ports and its database file.
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
    if not port_is_free(settings.api_port, settings.api_host):
        raise SystemExit(
            f"port {settings.api_port} (API) is in use: stop what runs there first, "
            "or choose another port with NUDGE_API_PORT"
        )

    await migrate(settings.database_url)
    server_options = DevServerOptions(
        port=options.temporal_port,
        ui_port=options.ui_port,
        db_file=options.state_dir / "temporal.db",
        log_file=options.state_dir / "temporal.log",
        # The UI asks the API to decrypt what it shows (the API's codec endpoint).
        ui_codec_endpoint=f"http://{settings.api_host}:{settings.api_port}/codec",
    )
    async with contextlib.AsyncExitStack() as stack:
        try:
            server = await stack.enter_async_context(
                dev_server(server_options, converter=converter_for(settings))
            )
        except PortInUse as exc:
            flag = "--temporal-port" if exc.port == options.temporal_port else "--ui-port"
            raise SystemExit(f"{exc}, or choose another port with {flag}") from exc
        except ServerError as exc:
            raise SystemExit(str(exc)) from exc
        # The launcher owns the dev server: the stack talks to the port it started it on.
        update = {"temporal_address": server.address}
        if server.ui_url:
            update["temporal_ui_url"] = server.ui_url  # the dashboard links journeys there
        if server.ui_url and server.ui_url not in settings.codec_origins:
            # The UI decodes through the API from the browser: its origin must be allowed.
            update["codec_cors_origins"] = ",".join([*settings.codec_origins, server.ui_url])
        settings = settings.model_copy(update=update)
        activities = await stack.enter_async_context(worker_activities(settings, server.client))
        await stack.enter_async_context(
            create_worker(
                server.client,
                activities,
                task_queue=settings.task_queue,
                workflow_cache_size=settings.workflow_cache_size,
            )
        )
        await put_schedules_in_place(server.client, settings)
        served = await stack.enter_async_context(
            serve_in_loop(create_app(settings), host=settings.api_host, port=settings.api_port)
        )
        applied = await apply_examples(settings, options.examples) if options.examples else []
        print(banner(settings, options, applied), flush=True)
        if ready is not None:
            ready.set()
        # uvicorn catches Ctrl-C itself while serving: either way ends the stack.
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({stopper, served.task}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        print("\nstopping…", flush=True)
    print("stopped.", flush=True)
