"""api: what a path allows — OPTIONS answers with `Allow`, and a method a path does not take
gets 405 listing every method it does.

Starlette answers a wrong method with the methods of the first route whose path matched,
so `/v1/campaigns` (GET and POST are two routes) told a client `Allow: POST`, and OPTIONS
got a 405. This one route, added after all others, sees every request no other route
took and answers from all of them.
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request, Response, status
from fastapi.responses import JSONResponse
from starlette.routing import compile_path

from api.limits import endpoint_routes

CATCH_ALL = "/{path:path}"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


def _table(app: FastAPI) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    table = getattr(app.state, "allowed_methods", None)
    if table is None:
        table = [
            (compile_path(route.path)[0], frozenset(route.methods or ()))
            for route in endpoint_routes(app.routes)
            if getattr(route, "path", CATCH_ALL) != CATCH_ALL and getattr(route, "methods", None)
        ]
        app.state.allowed_methods = table
    return table


def allowed_methods(app: FastAPI, path: str) -> set[str]:
    """Every method some route of `app` takes at `path`."""
    return {m for regex, methods in _table(app) if regex.match(path) for m in methods}


async def answer_method(request: Request) -> Response:
    methods = allowed_methods(request.app, request.url.path)
    if not methods:
        return JSONResponse({"detail": "Not Found"}, status_code=status.HTTP_404_NOT_FOUND)
    allow = ", ".join(sorted(methods | {"OPTIONS"}))
    if request.method == "OPTIONS":
        return Response(status_code=status.HTTP_204_NO_CONTENT, headers={"Allow": allow})
    return JSONResponse(
        {"detail": f"{request.method} is not allowed here; use {allow}"},
        status_code=status.HTTP_405_METHOD_NOT_ALLOWED,
        headers={"Allow": allow},
    )


def add_method_answers(app: FastAPI) -> None:
    """Call last: the route must come after every other."""
    app.add_api_route(CATCH_ALL, answer_method, methods=METHODS, include_in_schema=False)
