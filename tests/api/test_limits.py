"""The request guard (api.limits): credentials and size before a body is read, bodies capped
while they stream, slow bodies timed out — over real HTTP (uvicorn on 127.0.0.1, raw
sockets where a well-behaved client would not do it) and, for the exact byte counts, with
plain ASGI messages. Also: whether /docs and /openapi.json are public."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from api.app import BODY_LIMITS, create_app
from api.deps import require_admin
from api.limits import BodyLimit, RequestGuard
from api.routes.subscriptions import MAX_WEBHOOK_BYTES
from api.server import serve_in_loop
from core.config import Settings
from temporal.servers import free_port
from tests.fixtures.api import ADMIN, ADMIN_TOKEN, WRITE_KEY, RunningApi, make_settings

BODY_TIMEOUT = 1.0
HUGE = 200 * 1024 * 1024
CHUNK = b"x" * (64 * 1024)
SERVER_CHUNK_SLACK = 512 * 1024
"""What one `receive` may hand over at most: uvicorn buffers up to 64 KB before pausing
the socket, plus one read of the socket (256 KB)."""
WEBHOOK = "/v1/webhooks/twilio/sms"
FORM = "application/x-www-form-urlencoded"


class CountingApp:
    """The app as uvicorn calls it, counting the body bytes it takes from the server."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.received = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@dataclass
class Served:
    api: RunningApi
    counter: CountingApp

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        address = urlsplit(self.api.url)
        assert address.hostname is not None and address.port is not None
        return await asyncio.open_connection(address.hostname, address.port)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Served]:
    app = create_app(settings)
    counter = CountingApp(app)
    async with (
        serve_in_loop(counter) as served,
        httpx.AsyncClient(base_url=served.url, timeout=30) as http,
    ):
        yield Served(RunningApi(url=served.url, app=app, settings=settings, http=http), counter)


@pytest.fixture
async def served(sqlite_url: str) -> AsyncIterator[Served]:
    settings = make_settings(
        sqlite_url, f"127.0.0.1:{free_port()}", body_timeout_seconds=BODY_TIMEOUT
    )
    async with serving(settings) as running:
        yield running


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def status_of(reader: asyncio.StreamReader, timeout: float) -> int:
    line = await asyncio.wait_for(reader.readline(), timeout)
    assert line.startswith(b"HTTP/1.1 "), line
    return int(line.split()[1])


async def answer_of(
    reader: asyncio.StreamReader, timeout: float
) -> tuple[int, dict[str, str], Any]:
    code = await status_of(reader, timeout)
    headers: dict[str, str] = {}
    while (line := await asyncio.wait_for(reader.readline(), timeout)) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    return code, headers, json.loads(body)


# -- size: refused by the declared length, or cut off while streaming ----------------------


async def test_a_200_mb_sms_webhook_gets_413_without_being_read(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(head("POST", WEBHOOK, {"Content-Type": FORM, "Content-Length": str(HUGE)}))
    await writer.drain()
    try:
        code = await status_of(reader, timeout=3)
    except TimeoutError:
        # No answer before the body: send all of it, as whoever declared it would.
        for _ in range(HUGE // len(CHUNK)):
            writer.write(CHUNK)
            await writer.drain()
        code = await status_of(reader, timeout=60)
    writer.close()
    assert code == 413
    assert served.counter.received == 0


async def test_a_chunked_sms_webhook_is_cut_off_at_its_64_kb(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(head("POST", WEBHOOK, {"Content-Type": FORM, "Transfer-Encoding": "chunked"}))
    answer = asyncio.create_task(reader.readline())
    sent = 0
    with contextlib.suppress(ConnectionError):
        while sent < HUGE and not answer.done():
            writer.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
            await writer.drain()
            sent += len(CHUNK)
    with contextlib.suppress(ConnectionError):
        # The server hangs up on what is still coming: the answer may be lost to the reset.
        line = await asyncio.wait_for(answer, 10)
        assert line == b"" or line.startswith(b"HTTP/1.1 413"), line
    writer.close()
    assert sent < HUGE // 10
    assert served.counter.received <= MAX_WEBHOOK_BYTES + SERVER_CHUNK_SLACK


async def test_a_body_declared_over_an_admin_routes_limit_gets_413_unread(
    served: Served,
) -> None:
    reader, writer = await served.connect()
    headers = {**ADMIN, "Content-Type": "application/json", "Content-Length": "100000"}
    writer.write(head("PUT", "/v1/profiles/ada/subscriptions", headers))
    await writer.drain()
    code, answer_headers, body = await answer_of(reader, timeout=5)
    writer.close()
    assert code == 413
    assert body == {"detail": "the request body is over 64 KB, this route's limit"}
    assert answer_headers["connection"] == "close"
    assert served.counter.received == 0


async def test_a_body_within_the_limit_is_served_and_the_connection_kept(served: Served) -> None:
    change = {"subscriptions": [{"channel": "sms", "group": "marketing", "status": "unsubscribed"}]}
    for _ in range(2):
        answer = await served.api.http.put(
            "/v1/profiles/ada/subscriptions", json=change, headers=ADMIN
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers.get("connection") != "close"


# -- credentials before the body --------------------------------------------------------------


ADMIN_JSON_ROUTES = [
    ("PUT", "/v1/profiles/ada/subscriptions"),
    ("POST", "/v1/campaigns/cart/preview"),
    ("POST", "/v1/journeys/cart/ada/exit"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_JSON_ROUTES)
async def test_invalid_json_without_the_admin_token_is_401_not_422(
    served: Served, method: str, path: str
) -> None:
    http = served.api.http
    json_type = {"Content-Type": "application/json"}
    missing = await http.request(method, path, content=b"{not json", headers=json_type)
    assert missing.status_code == 401, missing.text
    assert missing.json() == {"detail": "send the admin token as `Authorization: Bearer <token>`"}
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await http.request(
        method,
        path,
        content=b"{not json",
        headers={**json_type, "Authorization": "Bearer not-the-token"},
    )
    assert wrong.status_code == 401, wrong.text
    assert wrong.json() == {"detail": "wrong admin token"}
    # With the token, the body is read and found wanting.
    right = await http.request(method, path, content=b"{not json", headers={**json_type, **ADMIN})
    assert right.status_code == 422, right.text


async def test_an_admin_route_refuses_a_big_body_without_a_token_unread(served: Served) -> None:
    size = 10 * 1024 * 1024
    reader, writer = await served.connect()
    headers = {"Content-Type": "application/json", "Content-Length": str(size)}
    writer.write(head("POST", "/v1/campaigns/cart/preview", headers))
    await writer.drain()
    try:
        code = await status_of(reader, timeout=3)
    except TimeoutError:
        for _ in range(size // len(CHUNK)):
            writer.write(CHUNK)
            await writer.drain()
        code = await status_of(reader, timeout=60)
    writer.close()
    assert code == 401
    assert served.counter.received == 0


async def test_a_wrong_write_key_is_refused_before_the_body(served: Served) -> None:
    reader, writer = await served.connect()
    wrong = base64.b64encode(b"not-the-key:").decode()
    headers = {
        "Authorization": f"Basic {wrong}",
        "Content-Type": "application/json",
        "Content-Length": str(HUGE),
    }
    writer.write(head("POST", "/v1/batch", headers))
    await writer.drain()
    code = await status_of(reader, timeout=5)
    writer.close()
    assert code == 401
    assert served.counter.received == 0


# -- time: a body that does not arrive ----------------------------------------------------------


SLOW = [
    ("POST", WEBHOOK, {"Content-Type": FORM}),
    ("PUT", "/v1/profiles/ada/subscriptions", {**ADMIN, "Content-Type": "application/json"}),
    (
        "POST",
        "/v1/track",
        {
            "Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(),
            "Content-Type": "application/json",
        },
    ),
]


@pytest.mark.parametrize(("method", "path", "headers"), SLOW, ids=["sms", "admin", "track"])
async def test_a_body_that_stalls_gets_408_and_the_connection_closed(
    served: Served, method: str, path: str, headers: dict[str, str]
) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await served.connect()
    writer.write(head(method, path, {**headers, "Content-Length": "100"}) + b'{"userId": "a')
    await writer.drain()
    started = loop.time()
    code, answer_headers, body = await answer_of(reader, timeout=BODY_TIMEOUT + 4)
    waited = loop.time() - started
    assert code == 408
    assert body == {"detail": f"the request body did not arrive within {BODY_TIMEOUT:g} s"}
    assert answer_headers["connection"] == "close"
    assert BODY_TIMEOUT - 0.2 < waited < BODY_TIMEOUT + 2
    assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server
    writer.close()


# -- the guard itself, message by message --------------------------------------------------------


class Reader:
    """An app that reads the whole body, then answers 200 with how much it got."""

    def __init__(self) -> None:
        self.got = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        more = True
        while more:
            message = await receive()
            self.got += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def drive(guard: RequestGuard, chunks: int, chunk: bytes) -> tuple[list[Message], int]:
    """A chunked POST /x of `chunks` chunks of `chunk`; the answer's messages and the pulls made."""
    pulled = 0

    async def receive() -> Message:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < chunks}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "root_path": "",
        "headers": [(b"transfer-encoding", b"chunked")],
    }
    await guard(scope, receive, send)
    return sent, pulled


def guard_for(app: Any, limit: BodyLimit) -> RequestGuard:
    return RequestGuard(
        app,
        routes=[Route("/x", lambda request: None, methods=["POST"])],
        admin_token=ADMIN_TOKEN,
        body_timeout_seconds=5,
        limits={"/x": limit},
    )


async def test_the_app_never_receives_more_than_the_limit() -> None:
    app = Reader()
    sent, pulled = await drive(guard_for(app, BodyLimit(1000)), chunks=10_000, chunk=b"y" * 100)
    assert app.got <= 1000
    assert pulled == 11  # the chunk that went over is not handed on, and nothing after it
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {
        "detail": "the request body is over 1000 bytes, this route's limit"
    }


async def test_a_route_that_refuses_by_itself_reads_one_chunk_past_its_limit_at_most() -> None:
    app = Reader()
    sent, pulled = await drive(
        guard_for(app, BodyLimit(1000, route_refuses=True)), chunks=10_000, chunk=b"y" * 300
    )
    assert app.got == 1200  # the route saw it go over (and would answer in its own words)
    assert pulled == 4
    assert sent[0]["status"] == 413


async def test_within_the_limit_the_app_answers() -> None:
    app = Reader()
    sent, pulled = await drive(guard_for(app, BodyLimit(1000)), chunks=10, chunk=b"y" * 100)
    assert (app.got, pulled) == (1000, 10)
    assert sent[0] == {"type": "http.response.start", "status": 200, "headers": []}


def test_every_route_limit_names_a_route_and_every_admin_route_is_guarded() -> None:
    app = create_app(make_settings("sqlite+aiosqlite://", "127.0.0.1:1"))
    guard = RequestGuard(
        app, routes=app.routes, admin_token="t", body_timeout_seconds=1, limits=BODY_LIMITS
    )
    paths = {getattr(r, "path", None) for r in _routes(app)}
    assert set(BODY_LIMITS) <= paths
    guarded = {
        (regex.pattern, methods) for regex, methods, policy in guard.policies() if policy.admin
    }
    for route in _routes(app):
        dependant = getattr(route, "dependant", None)
        calls = {d.call for d in getattr(dependant, "dependencies", [])}
        if require_admin in calls:
            assert (route.path_regex.pattern, frozenset(route.methods)) in guarded, route.path
    assert len(guarded) >= 15


def _routes(app: Any) -> list[Any]:
    from fastapi import routing

    iter_contexts = getattr(routing, "iter_route_contexts", None)
    return list(iter_contexts(app.routes)) if iter_contexts else list(app.routes)


# -- /docs and /openapi.json --------------------------------------------------------------------


SECRETS: dict[str, Any] = {
    "write_key": "prod-write-key",
    "admin_token": ADMIN_TOKEN,
    "webhook_secret": "whsec_" + base64.b64encode(b"prod-webhook-secret").decode(),
    "link_secret": "prod-link-secret",
    "payload_keys": "k1:" + base64.b64encode(b"p" * 32).decode(),
}


@pytest.mark.parametrize(
    ("environment", "docs_public", "public"),
    [
        ("dev", None, True),
        ("test", None, True),
        ("production", None, False),
        ("production", True, True),
        ("test", False, False),
    ],
)
def test_docs_are_public_outside_production_unless_set(
    environment: str, docs_public: bool | None, public: bool
) -> None:
    settings = Settings(_env_file=None, environment=environment, docs_public=docs_public, **SECRETS)
    assert settings.docs_are_public is public


@pytest.mark.parametrize("docs_public", [None, True], ids=["production", "production-public"])
async def test_docs_in_production(sqlite_url: str, docs_public: bool | None) -> None:
    settings = make_settings(
        sqlite_url,
        f"127.0.0.1:{free_port()}",
        environment="production",
        docs_public=docs_public,
        **SECRETS,
    )
    async with serving(settings) as running:
        http = running.api.http
        if docs_public:
            assert (await http.get("/docs")).status_code == 200
            assert (await http.get("/redoc")).status_code == 200
            assert "/v1/track" in (await http.get("/openapi.json")).json()["paths"]
            return
        assert (await http.get("/docs")).status_code == 404
        assert (await http.get("/redoc")).status_code == 404
        assert (await http.get("/openapi.json")).status_code == 401
        schema = await http.get("/openapi.json", headers=ADMIN)
        assert schema.status_code == 200
        assert "/v1/track" in schema.json()["paths"]
        assert "/openapi.json" not in schema.json()["paths"]
