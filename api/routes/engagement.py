"""api: engagement — the open pixel and tracked links of emails (provider status webhooks
are in api.routes.provider_webhooks).

The tracking routes take no credentials: the signed token (core.tracking) is the authority,
and all it can do is count an open or a click of one delivery and, for a link, send the
browser on to the URL that was in the message. A token that does not verify gets 400 and
goes nowhere, so these are never an open redirect. Every hit counts, a mail proxy's or a
link scanner's too, marked as a machine's where it can be told (core.engagement.is_machine).
Counting never stands in the way of the answer: a person who clicked gets where the link
goes even when the database is down, or the delivery is gone.
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import RelayDep, SessionDep, SettingsDep
from api.relay import Relay
from api.schemas import Message
from core.config import Settings
from core.engagement import EngagementKind, is_machine
from core.tracking import TrackingError, read_click_token, read_open_token
from store.engagement import Engagement, record_engagement
from store.models import Delivery

log = logging.getLogger("nudge.api")

router = APIRouter(tags=["engagement"])

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
"""A transparent 1x1 GIF, 43 bytes."""
HEADERS = {
    # Each fetch is an open: no cache (the browser's, or a proxy's) may answer for us.
    "Cache-Control": "no-store, private",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Robots-Tag": "noindex",
}

INVALID_PIXEL: dict[int | str, dict[str, Any]] = {
    400: {"model": Message, "description": "not a pixel token of ours"}
}


@router.get(
    "/t/o/{token}",
    response_class=Response,
    responses={
        200: {"content": {"image/gif": {}}, "description": "a transparent 1x1 GIF"},
        **INVALID_PIXEL,
    },
    summary="Email open pixel",
)
async def open_pixel(
    token: str, request: Request, settings: SettingsDep, session: SessionDep, relay: RelayDep
) -> Response:
    """Counts an open of the delivery the token names (each fetch: `opens`; the first, and
    the first by a person: `opened`, `opened_human`, and an `Email Opened` event)."""
    try:
        hit = read_open_token(secret=settings.link_secret, token=token)
    except TrackingError as exc:
        return JSONResponse({"detail": str(exc)}, status.HTTP_400_BAD_REQUEST, headers=HEADERS)
    await _count(
        session,
        settings,
        relay,
        request,
        kind=EngagementKind.opened,
        delivery_id=hit.delivery_id,
        source="pixel",
    )
    return Response(PIXEL, media_type="image/gif", headers=HEADERS)


@router.get(
    "/t/c/{token}",
    status_code=status.HTTP_302_FOUND,
    response_class=Response,
    responses={
        302: {"description": "to the link's URL, as it was in the message"},
        400: {"description": "not a link of ours: altered, or cut off (a page)"},
    },
    summary="Email link (tracked click)",
)
async def click(
    token: str, request: Request, settings: SettingsDep, session: SessionDep, relay: RelayDep
) -> Response:
    """Counts a click of one link of the delivery (each: `clicks`; the first, and the first
    by a person: `clicked`, `clicked_human`; an `Email Link Clicked` event per link) and
    redirects to the link's URL."""
    try:
        hit = read_click_token(secret=settings.link_secret, token=token)
    except TrackingError as exc:
        return _invalid_link(exc)
    await _count(
        session,
        settings,
        relay,
        request,
        kind=EngagementKind.clicked,
        delivery_id=hit.delivery_id,
        source="link",
        key=str(hit.link),
        properties={"link_url": hit.url, "link_id": str(hit.link)},
    )
    # Not RedirectResponse: it re-quotes the URL, and the browser must get the very URL
    # that was signed (core.tracking made it one a header can carry).
    return Response(status_code=status.HTTP_302_FOUND, headers={"Location": hit.url, **HEADERS})


# HEAD too, as link checkers and scanners send it (counted as a machine's): the same
# answers without a body, left out of the schema, which would list each operation twice.
router.add_api_route("/t/o/{token}", open_pixel, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/t/c/{token}", click, methods=["HEAD"], include_in_schema=False)


def _invalid_link(exc: TrackingError) -> HTMLResponse:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>This link is not valid</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
        "padding:0 1rem;line-height:1.5}</style></head><body>"
        f"<h1>This link is not valid</h1><p>{escape(str(exc))}.</p>"
        "<p>Open the link from the email again, or copy all of it.</p></body></html>"
    )
    return HTMLResponse(
        document,
        status_code=status.HTTP_400_BAD_REQUEST,
        headers={
            **HEADERS,
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        },
    )


async def _count(
    session: AsyncSession,
    settings: Settings,
    relay: Relay,
    request: Request,
    *,
    kind: EngagementKind,
    delivery_id: int,
    source: str,
    key: str = "",
    properties: dict[str, Any] | None = None,
) -> None:
    """Record the hit in one transaction: a read of when the delivery was sent (to judge a
    machine by its speed), then store.engagement. A delivery that is gone counts nothing.
    An event written wakes the relay, as ingestion does: a journey may wait for it."""
    at = datetime.now(UTC)
    try:
        row = (
            await session.execute(
                select(Delivery.sent_at, Delivery.created_at).where(Delivery.id == delivery_id)
            )
        ).first()
        if row is None:
            return
        machine = is_machine(
            kind=kind,
            user_agent=request.headers.get("user-agent"),
            at=at,
            # Still pending: the provider has it, the worker has not recorded it yet.
            sent_at=row.sent_at or row.created_at,
            method=request.method,
            click_within=timedelta(seconds=settings.machine_click_seconds),
            open_within=timedelta(seconds=settings.machine_open_seconds),
        )
        recorded = await record_engagement(
            session,
            Engagement(
                kind=kind,
                delivery_id=delivery_id,
                at=at,
                machine=machine,
                key=key,
                properties=properties or {},
                source=source,
            ),
        )
        await session.commit()
        if recorded.event_written:
            relay.wake()
    except Exception:
        # The open or click is lost, the person is not: the pixel and the redirect still go.
        # (The session's close rolls back what was begun.)
        log.exception("could not record %s of delivery %s", kind.value, delivery_id)
