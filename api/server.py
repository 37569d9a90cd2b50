"""api: serving the app under uvicorn inside a running event loop (the dev launcher, tests
and the bench share this one way)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp


@dataclass(frozen=True)
class Served:
    url: str
    task: asyncio.Task[None]
    """Ends when uvicorn stops (it stops on Ctrl-C by itself while serving)."""


@contextlib.asynccontextmanager
async def serve_in_loop(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[Served]:
    """Serve `app` (the API, or a test's wrapper around it) on `host:port` (0: an ephemeral
    port) until the block ends.

    uvicorn has no timeout for a request's body, nor a limit on its size: the app's request
    guard (`api.limits`) has both, so they hold however the app is served.
    """
    # IPPROTO_TCP, not 0: asyncio turns Nagle off only for sockets made that way; with it
    # on, back-to-back answers wait ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                await task  # raises what failed at start-up
                raise RuntimeError("uvicorn exited during start-up")
            await asyncio.sleep(0.01)
        yield Served(url=f"http://{host}:{bound}", task=task)
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=30)
        finally:
            sock.close()
