"""bench: an HTTP double on 127.0.0.1 that notes when each `webhook-id` arrived.

The arrival time is taken in the server's own thread as soon as a request's headers are
read, so a busy event loop (the API, the workers and the driver share one) delays the
driver noticing an arrival, never the figure itself.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Arrival:
    webhook_id: str
    monotonic: float
    """`time.monotonic()` when the request's headers had been read."""
    wall: float
    """`time.time()` at the same moment, to line up with Temporal's event times."""
    headers: dict[str, str]
    body: bytes


class WebhookRecorder:
    """Answers every POST with 200 and records it by its `webhook-id` header.

    `expect(id)` (called on the event loop before the request is caused) gives a future
    that resolves with the first arrival of that id.
    """

    def __init__(self) -> None:
        self.arrivals: dict[str, list[Arrival]] = defaultdict(list)
        self._waiting: dict[str, asyncio.Future[Arrival]] = {}
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as a real provider would offer: no TCP handshake per message.
            protocol_version = "HTTP/1.1"
            # Headers and body are two writes: without TCP_NODELAY the body waits for the
            # client's delayed ACK (~40 ms) and the activity's POST returns that much later.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                now, wall = time.monotonic(), time.time()
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                webhook_id = headers.get("webhook-id", "")
                recorder._arrived(Arrival(webhook_id, now, wall, headers, body))
                payload = json.dumps({"id": f"bench-{webhook_id}"}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/bench"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> WebhookRecorder:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def expect(self, webhook_id: str) -> asyncio.Future[Arrival]:
        future: asyncio.Future[Arrival] = asyncio.get_running_loop().create_future()
        with self._lock:
            already = self.arrivals.get(webhook_id)
            if already:
                future.set_result(already[0])
            else:
                self._waiting[webhook_id] = future
        return future

    def count(self, webhook_id: str) -> int:
        with self._lock:
            return len(self.arrivals.get(webhook_id, ()))

    def ids(self) -> set[str]:
        with self._lock:
            return set(self.arrivals)

    def _arrived(self, arrival: Arrival) -> None:
        with self._lock:
            self.arrivals[arrival.webhook_id].append(arrival)
            future = self._waiting.pop(arrival.webhook_id, None)
        if future is not None:
            future.get_loop().call_soon_threadsafe(_resolve, future, arrival)


def _resolve(future: asyncio.Future[Arrival], arrival: Arrival) -> None:
    if not future.done():  # the driver may have given up waiting
        future.set_result(arrival)
