"""worker: `nudge dev` — the embedded stack: Temporal dev server, worker, API, demo campaigns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import Settings
from core.policy import quiet_hours_decision
from core.schedule import zone_named
from temporal.servers import (
    DevServerOptions,
    PortInUse,
    ServerError,
    dev_server,
    port_holder,
    port_is_free,
)

if TYPE_CHECKING:
    from worker.examples import Example

log = logging.getLogger("nudge.dev")

STATE_DIR = Path(".nudge")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "campaigns"


DEFAULT_TEMPORAL_PORT = 7233
DEFAULT_UI_PORT = 8233
LOCAL_HOSTS = ("127.0.0.1", "localhost")

DEMO_USER = "ada"
DEMO_CAMPAIGN = "order-receipt"
DEMO_TRAITS = {"first_name": "Ada", "locale": "de_DE"}
DEMO_ORDER = {"order_id": "demo-1001", "total": 150, "currency": "EUR"}
DEMO_MESSAGE_IDS = ("nudge-dev-demo-identify", "nudge-dev-demo-order")
"""Fixed ids: a second start that sends them again (the first was stopped before its
receipt went out) is a no-op at ingestion, never a second order."""
FIRST_SEND_WITHIN = 30.0
"""How long the first start waits for the demo receipt before printing the banner anyway."""


@dataclass(frozen=True)
class DevOptions:
    temporal_port: int | None = None
    """`--temporal-port`; None: NUDGE_TEMPORAL_PORT, else NUDGE_TEMPORAL_ADDRESS's port, else
    7233."""
    ui_port: int | None = None
    """`--ui-port`; None: NUDGE_TEMPORAL_UI_PORT, else 8233."""
    examples: Path | None = EXAMPLES
    state_dir: Path = STATE_DIR
    api_port: int | None = None
    """`--api-port`: wins over NUDGE_API_PORT. The banner's `nudge` commands then name the
    API with `--url`, since the shell's settings do not know the port."""


@dataclass(frozen=True)
class PortUse:
    """One port `nudge dev` listens on, and the two ways to choose another."""

    what: str
    flag: str
    env: str


API_PORT = PortUse("API", "--api-port", "NUDGE_API_PORT")
TEMPORAL_PORT = PortUse("Temporal", "--temporal-port", "NUDGE_TEMPORAL_PORT")
UI_PORT = PortUse("Temporal UI", "--ui-port", "NUDGE_TEMPORAL_UI_PORT")


def port_in_use(port: int, use: PortUse) -> str:
    """The one line a taken port becomes: which port, what Nudge wanted it for, who holds it
    (where this machine can tell), and both ways to move."""
    holder = port_holder(port)
    by = f" by {holder}" if holder else ""
    return (
        f"error: port {port} ({use.what}) is in use{by}: stop it, or choose another port "
        f"with {use.flag} PORT or {use.env}=PORT"
    )


def temporal_port(settings: Settings, flag: int | None) -> int:
    """The dev server's port: `--temporal-port`, else NUDGE_TEMPORAL_PORT, else the port of
    NUDGE_TEMPORAL_ADDRESS when it is set, else 7233.

    The worker and the API talk to the server `nudge dev` starts, so an address set for
    another server (another host, or another port than the one asked for) is refused
    rather than silently replaced.
    """
    chosen = flag or settings.temporal_port
    source = f"--temporal-port {flag}" if flag else f"NUDGE_TEMPORAL_PORT={chosen}"
    if "temporal_address" not in settings.model_fields_set:
        return chosen or DEFAULT_TEMPORAL_PORT
    address = settings.temporal_address
    host, _, port_text = address.rpartition(":")
    if host not in LOCAL_HOSTS or not port_text.isdigit():
        raise SystemExit(
            f"error: NUDGE_TEMPORAL_ADDRESS={address} names another Temporal server, but "
            "nudge dev runs its own on 127.0.0.1: unset NUDGE_TEMPORAL_ADDRESS (choose the "
            "port with --temporal-port or NUDGE_TEMPORAL_PORT), or run `nudge api` and "
            "`nudge worker` against that server"
        )
    if chosen and chosen != int(port_text):
        raise SystemExit(
            f"error: NUDGE_TEMPORAL_ADDRESS={address} and {source} disagree: nudge dev runs "
            "one Temporal server, which its worker and API use; give the port once "
            "(unset NUDGE_TEMPORAL_ADDRESS, or make them the same)"
        )
    return int(port_text)


async def apply_examples(settings: Settings, examples: Path, state_dir: Path) -> list[Example]:
    """Bring the example segments and campaigns in through the real API
    (`worker.examples`): a missing one is applied (a campaign activated); one still as
    nudge dev left it takes a changed shipped file as a new version; an operator's pause,
    archive or own version is kept."""
    from api.client import NudgeClient
    from worker.examples import apply_examples as bring_examples

    base = f"http://{settings.api_host}:{settings.api_port}"
    async with NudgeClient(base, admin_token=settings.admin_token) as client:
        return await bring_examples(client, examples, state_dir)


@dataclass(frozen=True)
class FirstSend:
    """What the banner shows of the demo user's messages: the newest one (the receipt the
    first start sent, or whatever came later), or why there is none."""

    message: dict[str, Any] | None = None
    sent_now: bool = False
    problem: str | None = None


async def first_send(settings: Settings, campaigns: list[Example]) -> FirstSend:
    """On a start that finds no message to the demo user, identify her and complete an
    order, so the transactional receipt goes out at once, at any hour, and wait for it."""
    from api.client import NudgeClient

    base = f"http://{settings.api_host}:{settings.api_port}"
    async with NudgeClient(
        base, admin_token=settings.admin_token, write_key=settings.write_key
    ) as client:
        newest = await client.sandbox_messages(user_id=DEMO_USER, limit=1)
        if newest:
            return FirstSend(newest[0])
        receipt = next((c for c in campaigns if c.id == DEMO_CAMPAIGN), None)
        if receipt is None or receipt.status != "active":
            state = "missing" if receipt is None else receipt.problem or receipt.status
            return FirstSend(problem=f"the {DEMO_CAMPAIGN} example is {state}")
        identify_id, order_id = DEMO_MESSAGE_IDS
        await client.identify(user_id=DEMO_USER, traits=DEMO_TRAITS, message_id=identify_id)
        await client.track(
            user_id=DEMO_USER, event="Order Completed", properties=DEMO_ORDER, message_id=order_id
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIRST_SEND_WITHIN
        while loop.time() < deadline:
            newest = await client.sandbox_messages(user_id=DEMO_USER, limit=1)
            if newest:
                return FirstSend(newest[0], sent_now=True)
            await asyncio.sleep(0.1)
    return FirstSend(
        problem=f"no receipt within {FIRST_SEND_WITHIN:.0f} s: "
        f"see `nudge journeys show {DEMO_CAMPAIGN} {DEMO_USER}`"
    )


def nudge_command() -> str:
    """How to call `nudge` from here: bare when it is on PATH, else the venv's script."""
    beside = Path(sys.executable).parent / "nudge"
    if shutil.which("nudge") == str(beside) or not beside.exists():
        return "nudge"
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


@dataclass(frozen=True)
class Started:
    """What the banner reports of one start."""

    temporal_port: int
    ui_port: int
    examples: list[Example]
    first: FirstSend | None
    cli_url: str | None = None
    """Where `nudge` commands must be pointed (`--url`) when the API is not where the
    shell's settings say."""


def quiet_hours_line(settings: Settings, now: datetime) -> str:
    """When marketing messages wait, in the default zone; whether they wait right now."""
    if not settings.quiet_hours_start or not settings.quiet_hours_end:
        return "none (NUDGE_QUIET_HOURS_START/END unset)"
    window = f"{settings.quiet_hours_start}-{settings.quiet_hours_end} {settings.default_timezone}"
    deferred = quiet_hours_decision(now=now, settings=settings, timezone=None)
    if deferred is None or deferred.defer_until is None:
        return f"{window} (marketing messages due then wait for the end)"
    until = deferred.defer_until.astimezone(zone_named(settings.default_timezone))
    return (
        f"{window}: NOW, until {until:%H:%M} — marketing messages (welcome, cart reminder) "
        "wait until then; transactional ones (receipts) go out at once"
    )


def message_lines(message: dict[str, Any]) -> list[str]:
    subject = message.get("subject")
    lines = [f"  to {message.get('user_id')}" + (f": {subject}" if subject else "")]
    lines += [f"    {line}" for line in str(message.get("body", "")).strip().splitlines()[:6]]
    return lines


def first_send_lines(settings: Settings, first: FirstSend | None, nudge: str) -> list[str]:
    api = f"http://{settings.api_host}:{settings.api_port}"
    see = [
        "",
        f"  see it:  {nudge} messages --user {DEMO_USER}",
        f"           {api}/dashboard/users?user={DEMO_USER}",
    ]
    if first is None:
        return []
    if first.message is None:
        return [
            f"No message to {DEMO_USER} yet ({first.problem}).",
            *see[1:],
            "",
        ]
    head = (
        f"Sent just now: {DEMO_USER} completed an order, and the {DEMO_CAMPAIGN} campaign "
        "(transactional: it goes out at any hour) sent the receipt. The sandbox channel "
        "keeps it:"
        if first.sent_now
        else f"The latest message to {DEMO_USER} (the sandbox channel keeps them):"
    )
    return [head, "", *message_lines(first.message), *see, ""]


def banner(settings: Settings, started: Started, *, now: datetime | None = None) -> str:
    api = f"http://{settings.api_host}:{settings.api_port}"
    nudge = nudge_command()
    if started.cli_url:
        nudge += f" --url {started.cli_url}"
    ui = f"http://127.0.0.1:{started.ui_port}"
    query = "NudgeCampaign%3D%27cart-abandonment%27"
    segments = [e.label for e in started.examples if e.kind == "segment"]
    campaigns = [e.label for e in started.examples if e.kind == "campaign"]
    kept = any(e.kept for e in started.examples)
    keeping = "\n  (examples found from an earlier start are kept as they are)" if kept else ""
    keeping += "".join(f"\n  {e.note}" for e in started.examples if e.note)
    first = "\n".join(first_send_lines(settings, started.first, nudge))
    quiet = quiet_hours_line(settings, now or datetime.now(UTC))
    return f"""
Nudge is running (embedded: Temporal dev server + SQLite, sandbox channel).

  API            {api}          (docs: {api}/docs)
  dashboard      {api}/dashboard    (log in with the admin token below)
  Temporal       127.0.0.1:{started.temporal_port}
  Temporal UI    {ui}/namespaces/default/workflows?query={query}
  write key      {settings.write_key}
  admin token    {settings.admin_token}
  campaigns      {", ".join(campaigns) or "none"}
  segments       {", ".join(segments) or "none"}{keeping}
  quiet hours    {quiet}

{first}
Drive the cart-abandonment demo (Segment's HTTP Tracking API):

  curl -u {settings.write_key}: {api}/v1/track -H 'content-type: application/json' \\
    -d '{{"userId": "ada", "event": "Product Added", "properties": {{"product_id": "sku-1", "name": "Umbrella", "price": 19.5}}}}'

  {nudge} events send --user ada --event "Product Added" --properties '{{"product_id": "sku-2", "name": "Raincoat"}}'
  {nudge} journeys show cart-abandonment ada
  {nudge} messages --user ada          (what the sandbox channel "sent"; says why when nothing was)

Rain in Shanghai (an external trigger: every user whose city is Shanghai gets the offer):

  curl -u {settings.write_key}: {api}/v1/identify -H 'content-type: application/json' \
    -d '{{"userId": "li", "traits": {{"city": "Shanghai"}}}}'
  curl {api}/v1/triggers/rain -H 'Authorization: Bearer {settings.admin_token}' \
    -H 'content-type: application/json' -d '{{"id": "rain-1", "properties": {{"city": "Shanghai", "mm": 12}}}}'
  {nudge} messages --user li

Ports: --api-port/NUDGE_API_PORT, --temporal-port/NUDGE_TEMPORAL_PORT, --ui-port/NUDGE_TEMPORAL_UI_PORT.
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
    campaigns are applied, the first message sent and the banner printed."""
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
    if options.api_port is not None:
        settings = settings.model_copy(update={"api_port": options.api_port})
    temporal = temporal_port(settings, options.temporal_port)
    ui = options.ui_port or settings.temporal_ui_port or DEFAULT_UI_PORT
    # All three before anything starts: a taken port is said at once, not after a
    # migration and a dev server's start.
    for port, use, host in (
        (settings.api_port, API_PORT, settings.api_host),
        (temporal, TEMPORAL_PORT, "127.0.0.1"),
        (ui, UI_PORT, "127.0.0.1"),
    ):
        if not port_is_free(port, host):
            raise SystemExit(port_in_use(port, use))
    if len({settings.api_port, temporal, ui}) < 3:
        raise SystemExit(
            f"error: the API ({settings.api_port}), Temporal ({temporal}) and the Temporal UI "
            f"({ui}) need three different ports"
        )
    if "public_url" not in settings.model_fields_set:
        # Unsubscribe links point at this API, on whatever port it was given.
        settings = settings.model_copy(
            update={"public_url": f"http://{settings.api_host}:{settings.api_port}"}
        )

    # The stack's modules (the API, the worker, the store: two seconds of imports) once
    # the ports are known to be free, so a taken one is said at once.
    from api.app import create_app
    from api.server import serve_in_loop
    from store.db import migrate
    from temporal.client import converter_for
    from temporal.journeys import recheck_running_journeys
    from worker.build import create_worker, put_schedules_in_place, worker_activities

    await migrate(settings.database_url)
    server_options = DevServerOptions(
        port=temporal,
        ui_port=ui,
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
        except PortInUse as exc:  # taken between the check and the start
            raise SystemExit(
                port_in_use(exc.port, {temporal: TEMPORAL_PORT}.get(exc.port, UI_PORT))
            ) from exc
        except ServerError as exc:
            raise SystemExit(f"error: {exc}") from exc
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
        # This start's quiet hours may differ from the last one's: deferred sends ask again.
        await recheck_running_journeys(server.client)
        served = await stack.enter_async_context(
            serve_in_loop(create_app(settings), host=settings.api_host, port=settings.api_port)
        )
        examples = (
            await apply_examples(settings, options.examples, options.state_dir)
            if options.examples
            else []
        )
        first = None
        if options.examples:
            campaigns = [e for e in examples if e.kind == "campaign"]
            first = await first_send(settings, campaigns)
        moved = options.api_port is not None and options.api_port != Settings().api_port
        cli_url = f"http://{settings.api_host}:{settings.api_port}" if moved else None
        print(banner(settings, Started(temporal, ui, examples, first, cli_url)), flush=True)
        if ready is not None:
            ready.set()
        # uvicorn catches Ctrl-C itself while serving: either way ends the stack.
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({stopper, served.task}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        print("\nstopping…", flush=True)
    print("stopped.", flush=True)
