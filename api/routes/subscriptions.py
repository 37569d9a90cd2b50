"""api: subscriptions — unsubscribe links (a page, and RFC 8058 one-click), SMS STOP/START
from Twilio, and an operator's view and edit of a user's subscriptions.

The link endpoints take no cookies and no login: the signed token is the authority, and
it only ever unsubscribes. GET never changes anything (mail scanners and link previewers
fetch URLs); only a POST — the page's button, or a mailbox provider's one-click POST with
`List-Unsubscribe=One-Click` — unsubscribes, and repeating it changes nothing.
"""

from __future__ import annotations

import html
import logging
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from api.deps import AdminDep, SessionDep, SettingsDep
from api.schemas import Message
from api.twilio import check_twilio_headers, verify_twilio
from core.config import Settings
from core.definition import SLUG, Channel
from core.events import StoredUserId
from core.links import LinkError, UnsubscribeLink, read_token
from core.sms import normalise_phone
from store import subscriptions as store
from store.subscriptions import ALL_GROUPS, SubscriptionSource, SubscriptionStatus

log = logging.getLogger("nudge.api")

router = APIRouter(tags=["subscriptions"])

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "UNSTOP"})
"""Twilio's standard opt-out and opt-in keywords (the whole message, any case)."""
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
MAX_WEBHOOK_BYTES = 64 * 1024
"""Twilio's inbound-SMS form is a few KB; enforced by the request guard (api.limits)."""

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Robots-Tag": "noindex",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}

# -- pages ---------------------------------------------------------------------------------


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
        "padding:0 1rem;line-height:1.5}button{font-size:1rem;padding:.6rem 1.2rem}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(document, status_code=status_code, headers=PAGE_HEADERS)


def _what(link: UnsubscribeLink) -> str:
    return f"{html.escape(link.group)} messages by {html.escape(link.channel)}"


def _invalid(exc: LinkError) -> HTMLResponse:
    title = "This link has expired" if exc.reason == "expired" else "This link is not valid"
    return _page(title, f"<p>{html.escape(str(exc))}.</p>", status.HTTP_400_BAD_REQUEST)


def _read(settings: Settings, token: str) -> UnsubscribeLink:
    return read_token(secret=settings.link_secret, token=token)


INVALID_LINK = {
    400: {"description": "the link is not valid: tampered, expired or cut off (a page)"}
}


@router.get(
    "/u/{token}",
    response_class=HTMLResponse,
    responses=INVALID_LINK,
    summary="Unsubscribe page (confirm)",
)
async def unsubscribe_page(token: str, settings: SettingsDep) -> HTMLResponse:
    """Asks; never unsubscribes by itself."""
    try:
        link = _read(settings, token)
    except LinkError as exc:
        return _invalid(exc)
    action = f"/u/{html.escape(token, quote=True)}"
    return _page(
        "Unsubscribe",
        f"<p>Stop receiving {_what(link)}?</p>"
        f'<form method="post" action="{action}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>',
    )


@router.post(
    "/u/{token}",
    response_class=HTMLResponse,
    responses=INVALID_LINK,
    summary="Unsubscribe (one-click)",
)
async def unsubscribe(token: str, settings: SettingsDep, session: SessionDep) -> HTMLResponse:
    """RFC 8058 one-click (body `List-Unsubscribe=One-Click`) or the page's button: the body
    is not needed, the signed token says who and what. Idempotent; never a redirect."""
    try:
        link = _read(settings, token)
    except LinkError as exc:
        return _invalid(exc)
    await store.set_subscription(
        session=session,
        user_id=link.user_id,
        channel=link.channel,
        group=link.group,
        status=SubscriptionStatus.unsubscribed,
        source=SubscriptionSource.link,
    )
    await session.commit()
    return _page("You are unsubscribed", f"<p>You will no longer receive {_what(link)}.</p>")


# -- SMS: STOP and START through Twilio -----------------------------------------------------


TWILIO_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "From": {"type": "string", "description": "the sender, E.164"},
                        "To": {"type": "string"},
                        "Body": {"type": "string", "description": "STOP, START, …"},
                        "MessageSid": {"type": "string"},
                        "AccountSid": {"type": "string"},
                    },
                }
            }
        },
    }
}
"""Twilio's inbound-message form (the fields Nudge reads; Twilio sends more)."""


@router.post(
    "/v1/webhooks/twilio/sms",
    summary="Twilio inbound SMS (STOP / START)",
    openapi_extra=TWILIO_FORM,
    responses={403: {"model": Message, "description": "X-Twilio-Signature missing or wrong"}},
)
async def twilio_sms(request: Request, settings: SettingsDep, session: SessionDep) -> Response:
    """STOP (STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT) unsubscribes every user whose `phone`
    trait is the sender from all `sms` groups; START or UNSTOP subscribes them again. Any
    other text is ignored. The answer is empty TwiML: Twilio sends its own confirmation."""
    check_twilio_headers(request, settings)
    # The request guard (api.limits) streams this body with a cap of MAX_WEBHOOK_BYTES and
    # answers 413 past it: the whole of a larger one is never read, signed or not.
    raw = await request.body()
    params = parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
    verify_twilio(request, settings, params)
    form = dict(params)
    sender = form.get("From", "").strip()
    word = form.get("Body", "").strip().upper()
    if sender and (word in STOP_WORDS or word in START_WORDS):
        # Phones are stored as E.164 where they can be; Twilio sends E.164 too, but a
        # compatible provider may not.
        number = str(normalise_phone(sender))
        users = await store.users_with_trait(session=session, trait="phone", value=number)
        for user_id in users:
            if word in STOP_WORDS:
                await store.set_subscription(
                    session=session,
                    user_id=user_id,
                    channel=Channel.sms.value,
                    group=ALL_GROUPS,
                    status=SubscriptionStatus.unsubscribed,
                    source=SubscriptionSource.sms_stop,
                )
            else:
                await store.resubscribe_channel(
                    session=session,
                    user_id=user_id,
                    channel=Channel.sms.value,
                    source=SubscriptionSource.sms_start,
                )
        await session.commit()
        log.info("sms %s from a number of %d user(s)", word, len(users))
    return Response(EMPTY_TWIML, media_type="application/xml")


# -- operators ------------------------------------------------------------------------------


class SubscriptionPublic(BaseModel):
    channel: str
    group: str
    status: SubscriptionStatus
    source: SubscriptionSource | str
    updated_at: datetime


class SuppressionPublic(BaseModel):
    channel: str
    reason: str
    created_at: datetime


class SubscriptionsPublic(BaseModel):
    user_id: str
    subscriptions: list[SubscriptionPublic]
    """Recorded choices; any (channel, group) not listed is subscribed. Group `*`: every
    group on that channel."""
    suppressions: list[SuppressionPublic]
    """Channels never sent to (hard bounces), even for transactional messages."""


class SubscriptionChange(BaseModel):
    channel: Channel
    group: str = Field(pattern=rf"{SLUG}|^\*$")
    status: SubscriptionStatus


class SubscriptionsUpdate(BaseModel):
    """Set each listed (channel, group); the ones not listed keep their state."""

    subscriptions: list[SubscriptionChange] = Field(max_length=100)


async def _public(session: SessionDep, user_id: str) -> SubscriptionsPublic:
    rows = await store.list_subscriptions(session=session, user_id=user_id)
    suppressed = await store.list_suppressions(session=session, user_id=user_id)
    return SubscriptionsPublic(
        user_id=user_id,
        subscriptions=[
            SubscriptionPublic(
                channel=r.channel,
                group=r.subscription_group,
                status=SubscriptionStatus(r.status),
                source=r.source,
                updated_at=r.updated_at,
            )
            for r in rows
        ],
        suppressions=[
            SuppressionPublic(channel=s.channel, reason=s.reason, created_at=s.created_at)
            for s in suppressed
        ],
    )


@router.get(
    "/v1/profiles/{user_id}/subscriptions",
    dependencies=[AdminDep],
    response_model=SubscriptionsPublic,
    summary="A user's subscriptions and suppressions",
)
async def get_subscriptions(user_id: StoredUserId, session: SessionDep) -> SubscriptionsPublic:
    return await _public(session, user_id)


@router.put(
    "/v1/profiles/{user_id}/subscriptions",
    dependencies=[AdminDep],
    response_model=SubscriptionsPublic,
    summary="Subscribe or unsubscribe a user (source: api)",
)
async def put_subscriptions(
    user_id: StoredUserId, body: SubscriptionsUpdate, session: SessionDep
) -> SubscriptionsPublic:
    at = datetime.now(UTC)
    for change in body.subscriptions:
        await store.set_subscription(
            session=session,
            user_id=user_id,
            channel=change.channel.value,
            group=change.group,
            status=change.status,
            source=SubscriptionSource.api,
            at=at,
        )
    await session.commit()
    return await _public(session, user_id)


@router.delete(
    "/v1/profiles/{user_id}/suppressions/{channel}",
    dependencies=[AdminDep],
    response_model=SubscriptionsPublic,
    responses={404: {"model": Message, "description": "no suppression on that channel"}},
    summary="Lift a hard-bounce suppression (the user's address was corrected)",
)
async def delete_suppression(
    user_id: StoredUserId, channel: Channel, session: SessionDep
) -> SubscriptionsPublic:
    if not await store.remove_suppression(session=session, user_id=user_id, channel=channel.value):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"user {user_id!r} is not suppressed on {channel.value}"
        )
    await session.commit()
    return await _public(session, user_id)
