"""api: the codec endpoint — lets the Temporal UI and CLI show what Nudge encrypted.

Temporal's tools never hold Nudge's payload keys: they POST a history's payloads here
(`/codec/decode`, Temporal's remote codec protocol) and show what comes back. The UI calls
it from the operator's browser, so the UI's origin must be allowed (CORS); whether a token
is required is `NUDGE_CODEC_AUTH` (production: the admin token). Payloads that were never
encrypted come back unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response, status
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payloads

from api.deps import SettingsDep, admin_token_problem
from core.config import Settings
from temporal.client import codec_for
from temporal.codec import PayloadKeyMissing, PayloadTampered

router = APIRouter(prefix="/codec", tags=["codec"])

PAYLOADS = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "payloads": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "metadata": {
                                        "type": "object",
                                        "additionalProperties": {
                                            "type": "string",
                                            "description": "base64",
                                        },
                                    },
                                    "data": {"type": "string", "description": "base64"},
                                },
                            },
                        }
                    },
                }
            }
        },
    }
}
"""Temporal's `Payloads` in protobuf's JSON form: what the UI and the CLI send."""

MAX_BODY_BYTES = 4 * 1024 * 1024
"""A history page's payloads; Temporal's own payload limit is 2 MB each."""


def _cors_headers(request: Request, settings: Settings) -> dict[str, str]:
    origin = request.headers.get("origin", "").rstrip("/")
    if not origin or origin not in settings.codec_origins:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


def _error(
    request: Request,
    settings: Settings,
    code: int,
    detail: str,
    extra: dict[str, str] | None = None,
) -> Response:
    headers = {**_cors_headers(request, settings), **(extra or {})}
    return Response(
        json.dumps({"detail": detail}),
        status_code=code,
        media_type="application/json",
        headers=headers,
    )


@router.options("/{operation}", include_in_schema=False)
async def preflight(operation: str, request: Request, settings: SettingsDep) -> Response:
    """A browser asks before POSTing JSON with an Authorization or X-Namespace header."""
    headers = _cors_headers(request, settings)
    headers["Allow"] = "POST, OPTIONS"
    if headers.get("Access-Control-Allow-Origin"):
        headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Namespace"
        headers["Access-Control-Max-Age"] = "600"
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)


async def _transcode(request: Request, settings: Settings, operation: str) -> Response:
    # The admin routes' own check (NUDGE_CODEC_AUTH=token); answered here, not by
    # require_admin, so the 401 carries the CORS headers a browser needs to read it.
    problem = settings.codec_requires_token and admin_token_problem(
        request.headers.get("authorization", ""), settings.admin_token
    )
    if problem:
        detail, challenge = problem
        return _error(
            request,
            settings,
            status.HTTP_401_UNAUTHORIZED,
            f"{detail} (NUDGE_CODEC_AUTH=token)",
            {"WWW-Authenticate": challenge},
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return _error(
                request,
                settings,
                status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                f"at most {MAX_BODY_BYTES // (1024 * 1024)} MB of payloads per request",
            )
    try:
        payloads = json_format.Parse(bytes(body), Payloads(), ignore_unknown_fields=True)
    except (json_format.ParseError, DecodeError, UnicodeDecodeError, RecursionError) as exc:
        return _error(
            request,
            settings,
            status.HTTP_400_BAD_REQUEST,
            f'send {{"payloads": [{{"metadata": {{…}}, "data": "<base64>"}}]}}: {exc}',
        )
    codec = codec_for(settings)
    try:
        if operation == "decode":
            result = await codec.decode(payloads.payloads)
        else:
            result = await codec.encode(payloads.payloads)
    except (PayloadKeyMissing, PayloadTampered) as exc:
        return _error(request, settings, status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))
    answer: dict[str, Any] = json_format.MessageToDict(Payloads(payloads=result))
    answer.setdefault("payloads", [])
    return Response(
        json.dumps(answer),
        media_type="application/json",
        headers=_cors_headers(request, settings),
    )


@router.post(
    "/decode",
    openapi_extra=PAYLOADS,
    responses={
        200: {"description": "the payloads, decrypted"},
        400: {"description": "not a Payloads JSON body"},
        401: {"description": "a token is required and was not sent (or is wrong)"},
        413: {"description": "over 4 MB"},
        422: {"description": "a payload's key is unknown, or it does not authenticate"},
    },
)
async def decode(request: Request, settings: SettingsDep) -> Response:
    """Temporal's remote codec protocol: `{"payloads": [...]}` in, decrypted out."""
    return await _transcode(request, settings, "decode")


@router.post(
    "/encode",
    openapi_extra=PAYLOADS,
    responses={
        200: {"description": "the payloads, encrypted under the first key"},
        400: {"description": "not a Payloads JSON body"},
        401: {"description": "a token is required and was not sent (or is wrong)"},
        413: {"description": "over 4 MB"},
    },
)
async def encode(request: Request, settings: SettingsDep) -> Response:
    """What the UI uses to send a signal or start a workflow with an encrypted input."""
    return await _transcode(request, settings, "encode")
