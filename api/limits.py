"""api: what a request may cost before it is trusted — the request guard, a pure ASGI
middleware in front of every route.

Before the app reads a byte of a body, the guard checks what the headers can tell:
the admin token on admin routes, and a declared `Content-Length` against the route's
limit. Then it hands the app a `receive` that counts the body as it streams, so a chunked
body is cut off at the limit too, and that gives up on a body that has not all arrived
within `body_timeout_seconds` of the headers (uvicorn has no such timeout: a client that
declares 100 bytes and sends 13 would hold the request for as long as it likes).

Refusals are the guard's own answers — 401, 413, 408 — with `Connection: close` when
part of the body may still be on its way, so uvicorn hangs up rather than reading it.
When the guard cuts a body off while the app reads it, whatever the app makes of that is
dropped and the guard's answer goes out instead.

It is not `BaseHTTPMiddleware`, which would read the whole body before any limit applied.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import routing
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import admin_token_problem, require_admin

DEFAULT_MAX_BODY_BYTES = 64 * 1024
"""For routes without a limit of their own: far more than any admin JSON body needs."""


@dataclass(frozen=True)
class BodyLimit:
    """How much body one route may read, in bytes on the wire (before any gunzipping)."""

    max_bytes: int
    route_refuses: bool = False
    """The route refuses a larger body itself, in its own words (the tracking routes'
    Segment-style 400, the codec's CORS headers), before or while reading it: the guard
    does not answer for it, and only stops the route reading on once it is past
    `max_bytes` (by at most the chunk that took it there)."""


@dataclass(frozen=True)
class _Policy:
    limit: BodyLimit
    admin: bool


@dataclass(frozen=True)
class _Refusal:
    status: int
    detail: str
    headers: Mapping[str, str]


class BodyRefused(HTTPException):
    """Raised from the guarded `receive`: the body is over the route's limit or too slow.

    An HTTPException, so a route that turns other errors into 400s lets it through; the
    guard answers in its place whatever the app does with it.
    """


def _kb(n: int) -> str:
    return f"{n // 1024} KB" if n >= 1024 else f"{n} bytes"


def _route_path(scope: Scope) -> str:
    """The path routes match against (Starlette's rule: without the root path)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


def _calls(dependant: Any) -> Iterator[Callable[..., Any]]:
    yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def is_admin_route(route: Any) -> bool:
    """Whether the route depends on `require_admin`, directly or through its router."""
    dependant = getattr(route, "dependant", None)
    return dependant is not None and require_admin in set(_calls(dependant))


def endpoint_routes(routes: Sequence[BaseRoute]) -> list[Any]:
    """Every endpoint route, routers included: newer FastAPI keeps included routers as
    branches (`iter_route_contexts` walks them), older FastAPI copies their routes."""
    iter_contexts = getattr(routing, "iter_route_contexts", None)
    return list(iter_contexts(routes)) if iter_contexts is not None else list(routes)


class RequestGuard:
    """The request guard: credentials and size before the body, a capped and timed body.

    `limits` maps a route's path template (`/v1/campaigns/{campaign_id}`) to its limit;
    other routes get `default`. A route is an admin route when it depends on
    `require_admin`, directly or through its router — found in the app's routes at the
    first request, so a router included later is covered like the others.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        admin_token: str,
        body_timeout_seconds: float,
        limits: Mapping[str, BodyLimit],
        default: BodyLimit = BodyLimit(DEFAULT_MAX_BODY_BYTES),
    ) -> None:
        self.app = app
        self.routes = routes
        self.admin_token = admin_token
        self.body_timeout_seconds = body_timeout_seconds
        self.limits = dict(limits)
        self.default = _Policy(default, admin=False)
        self._table: list[tuple[re.Pattern[str], frozenset[str] | None, _Policy]] = []
        self._table_for = -1

    def policies(self) -> list[tuple[re.Pattern[str], frozenset[str] | None, _Policy]]:
        if self._table_for != len(self.routes):
            table = []
            for route in endpoint_routes(self.routes):
                regex = getattr(route, "path_regex", None)
                path = getattr(route, "path", None)
                if regex is None or path is None:
                    continue
                admin = is_admin_route(route)
                methods = getattr(route, "methods", None)
                policy = _Policy(self.limits.get(path, self.default.limit), admin)
                table.append((regex, frozenset(methods) if methods else None, policy))
            self._table, self._table_for = table, len(self.routes)
        return self._table

    def policy_for(self, scope: Scope) -> _Policy:
        path, method = _route_path(scope), scope["method"]
        for regex, methods, policy in self.policies():
            if (methods is None or method in methods) and regex.match(path):
                return policy
        return self.default  # a 404 or a 405: no route reads the body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policy_for(scope)
        headers = Headers(scope=scope)
        body = _Body(
            receive,
            headers,
            limit=policy.limit,
            deadline=asyncio.get_running_loop().time() + self.body_timeout_seconds,
            timeout_seconds=self.body_timeout_seconds,
        )
        if policy.admin:
            problem = admin_token_problem(headers.get("authorization", ""), self.admin_token)
            if problem is not None:
                detail, challenge = problem
                refusal = _Refusal(401, detail, {"WWW-Authenticate": challenge})
                await _answer(send, refusal, close=not body.done)
                return
        if (
            not policy.limit.route_refuses
            and body.declared is not None
            and body.declared > policy.limit.max_bytes
        ):
            await _answer(send, body.too_large(), close=True)
            return

        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if body.refusal is not None and not started:
                return  # the app's answer to a refused body: the guard's goes out instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, body.receive, guarded_send)
        except Exception:
            if body.refusal is None or started:
                raise
        if body.refusal is not None and not started:
            await _answer(send, body.refusal, close=True)


class _Body:
    """One request's body as the app receives it: counted, capped, on a deadline."""

    def __init__(
        self,
        receive: Receive,
        headers: Headers,
        *,
        limit: BodyLimit,
        deadline: float,
        timeout_seconds: float,
    ) -> None:
        self._receive = receive
        self.limit = limit
        self.deadline = deadline
        self.timeout_seconds = timeout_seconds
        length = headers.get("content-length")
        self.declared = int(length) if length is not None and length.isdigit() else None
        # HTTP/1.1: a request with neither header has no body.
        self.done = self.declared == 0 or (
            self.declared is None and "transfer-encoding" not in headers
        )
        self.received = 0
        self.refusal: _Refusal | None = None

    def too_large(self) -> _Refusal:
        return _Refusal(
            413, f"the request body is over {_kb(self.limit.max_bytes)}, this route's limit", {}
        )

    def _refuse(self, refusal: _Refusal) -> BodyRefused:
        self.refusal = refusal
        return BodyRefused(refusal.status, refusal.detail)

    async def receive(self) -> Message:
        if self.refusal is not None:
            raise BodyRefused(self.refusal.status, self.refusal.detail)
        if self.done:
            return await self._receive()  # e.g. waiting for a disconnect: no deadline
        if self.limit.route_refuses and self.received > self.limit.max_bytes:
            raise self._refuse(self.too_large())
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self._receive()
        except TimeoutError:
            seconds = f"{self.timeout_seconds:g}"
            refusal = _Refusal(408, f"the request body did not arrive within {seconds} s", {})
            raise self._refuse(refusal) from None
        if message["type"] != "http.request":
            self.done = True  # http.disconnect
            return message
        self.received += len(message.get("body", b""))
        self.done = not message.get("more_body", False)
        if not self.limit.route_refuses and self.received > self.limit.max_bytes:
            raise self._refuse(self.too_large())
        return message


async def _answer(send: Send, refusal: _Refusal, *, close: bool) -> None:
    content = json.dumps({"detail": refusal.detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in refusal.headers.items()),
    ]
    if close:
        # Whatever is still on its way is not read: uvicorn hangs up after the answer.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
