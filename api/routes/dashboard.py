"""api: the dashboard — server-rendered pages for marketers, behind the admin login.

Jinja2 pages (`api/templates`) with their charts drawn here as SVG, one small script and
one stylesheet (`api/static`); nothing is built or fetched at run time. A campaign's page
stays live over server-sent events, with polling of the same JSON when those fail.

A browser cannot send the admin token on a navigation, so the login form trades it for a
session cookie: signed under a key derived from the admin token (changing the token logs
everyone out) and carrying its expiry; HttpOnly, SameSite=Strict, Path=/dashboard. Every
page and data endpoint takes that cookie or the bearer token itself: pages send whoever
has neither to the login (303), data endpoints answer 401. None of these routes depends on
`require_admin`, so the request guard (`api.limits`) lets them through to do that check.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from api.deps import ServicesDep, SessionDep, SettingsDep, admin_token_problem
from api.schemas import CampaignId
from api.stats import campaign_funnel
from core.config import Settings
from core.events import MAX_USER_ID_BYTES
from core.journey import QUERY_STATE, JourneyState
from core.stats import CONVERTED, ENTERED, CampaignFunnel, Funnel
from store import campaigns as campaign_store
from store import reports
from store.identities import person_ids, person_profile
from store.stats import series

log = logging.getLogger("nudge.dashboard")

router = APIRouter(prefix="/dashboard", include_in_schema=False)

HERE = Path(__file__).resolve().parent.parent
templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

# -- sessions ----------------------------------------------------------------------------

COOKIE = "nudge_dashboard"
COOKIE_PATH = "/dashboard"
SESSION_KEY_PURPOSE = b"nudge dashboard session v1"
MAX_LOGIN_BYTES = 4096
"""A login form is one token: far below the request guard's default limit."""


def _session_key(admin_token: str) -> bytes:
    return hmac.new(admin_token.encode(), SESSION_KEY_PURPOSE, hashlib.sha256).digest()


def _signature(admin_token: str, payload: str) -> str:
    digest = hmac.new(_session_key(admin_token), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_session(admin_token: str, *, hours: float, now: float | None = None) -> str:
    """A session cookie's value: `expiry.nonce.signature`."""
    expires = int((time.time() if now is None else now) + hours * 3600)
    payload = f"{expires}.{secrets.token_urlsafe(12)}"
    return f"{payload}.{_signature(admin_token, payload)}"


def session_expiry(value: str, admin_token: str, *, now: float | None = None) -> int | None:
    """When a session cookie expires, or None when it is not one of ours or has expired."""
    expires, _, rest = value.partition(".")
    nonce, _, signature = rest.partition(".")
    if not expires.isdigit() or not nonce or not signature:
        return None
    expected = _signature(admin_token, f"{expires}.{nonce}")
    if not secrets.compare_digest(signature.encode(), expected.encode()):
        return None
    if int(expires) <= (time.time() if now is None else now):
        return None
    return int(expires)


def signed_in(request: Request, settings: Settings) -> bool:
    """The bearer token, or a valid session cookie."""
    authorization = request.headers.get("authorization")
    if authorization and admin_token_problem(authorization, settings.admin_token) is None:
        return True
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and session_expiry(cookie, settings.admin_token) is not None


def _login_url(next_path: str | None = None) -> str:
    return f"{COOKIE_PATH}/login" + (f"?{urlencode({'next': next_path})}" if next_path else "")


def require_page_login(request: Request, settings: SettingsDep) -> None:
    if not signed_in(request, settings):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(
            status.HTTP_303_SEE_OTHER, "log in first", headers={"Location": _login_url(target)}
        )


def require_data_login(request: Request, settings: SettingsDep) -> None:
    if not signed_in(request, settings):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "log in at /dashboard/login, or send the admin token as `Authorization: Bearer`",
            headers={"WWW-Authenticate": "Bearer"},
        )


PageLogin = Depends(require_page_login)
DataLogin = Depends(require_data_login)


def _safe_next(value: str | None) -> str:
    """Where to go after logging in: a dashboard path of this site, never elsewhere."""
    if value and value.startswith(COOKIE_PATH) and not value.startswith("//"):
        if all(c.isprintable() and c not in "\\" for c in value):
            return value
    return COOKIE_PATH


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: Request, settings: Settings) -> bool:
    """A form post from the dashboard's own pages (with the SameSite=Strict cookie, the
    defence against cross-site posts): its Origin, else its Referer, must be the API's
    public URL or the host the request was sent to."""
    claimed = request.headers.get("origin")
    if not claimed or claimed == "null":
        referer = request.headers.get("referer")
        if not referer:
            return False
        claimed = referer
    own = {_origin(settings.public_url)}
    host = request.headers.get("host")
    if host:
        own.add(f"{request.url.scheme}://{host}".lower())
    return _origin(claimed) in own


# -- responses ---------------------------------------------------------------------------

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = templates.get_template(template).render(static=STATIC_URLS, **context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def data(payload: str) -> Response:
    return Response(payload, media_type="application/json", headers=SECURITY_HEADERS)


STATIC = {
    name: ((HERE / "static" / name).read_bytes(), kind)
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"))
}
"""The script and the stylesheet, read once: (content, media type) by name."""
STATIC_URLS = {
    name: f"{COOKIE_PATH}/static/{name}?v={hashlib.sha256(content).hexdigest()[:12]}"
    for name, (content, _) in STATIC.items()
}
"""Each asset's URL carries a hash of its content, so a new release is never served stale."""


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """The script and the stylesheet: public, they hold no data."""
    if name not in STATIC:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    content, kind = STATIC[name]
    return Response(
        content,
        media_type=kind,
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


# -- formatting, shared with dashboard.js (same strings, so a live update does not jump) --


NONE = "\u2013"
"""An en dash: what a rate with no base, or a missing time, shows."""


def fmt(value: Any, kind: str = "count") -> str:
    if value is None:
        return NONE
    if kind == "count":
        return f"{int(value):,}"
    if kind == "rate":
        return f"{value * 100:.1f}%"
    if kind == "money":
        return f"{value:,.2f}"
    if kind == "points":
        return f"{value * 100:+.1f} pts"
    if kind == "p":
        return f"{value:.3f}"
    return str(value)


def raw(value: Any) -> str:
    """A value as dashboard.js reads it back (`data-value`): JSON."""
    return json.dumps(value)


def when(value: datetime | None) -> str:
    return NONE if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


templates.globals.update(fmt=fmt, raw=raw, when=when)

# -- charts ------------------------------------------------------------------------------

BARS = [
    ("entered", "Entered"),
    ("sent", "Sent"),
    ("delivered", "Delivered"),
    ("opened", "Opened (all)"),
    ("opened_human", "Opened by a person"),
    ("clicked", "Clicked (all)"),
    ("clicked_human", "Clicked by a person"),
    ("converted", "Converted"),
]
"""The funnel chart, top to bottom."""

NUMBERS = [
    *BARS,
    ("revenue", "Revenue", "money"),
    ("conversion_rate", "Conversion rate (converted / entered)", "rate"),
    ("delivery_rate", "Delivery rate (delivered / sent)", "rate"),
    ("open_rate", "Open rate (opened by a person / delivered)", "rate"),
    ("click_rate", "Click rate (clicked by a person / delivered)", "rate"),
    ("goal_without_message", "Goals reached with no message before"),
    ("held_out", "Sends held out (holdout)"),
    ("suppressed", "Suppressed"),
    ("failed", "Failed"),
    ("bounced", "Bounced"),
    ("dropped", "Dropped"),
    ("spam", "Marked as spam"),
    ("unsubscribed", "Unsubscribed"),
    ("opens", "Every open (repeats included)"),
    ("clicks", "Every click (repeats included)"),
]
"""The numbers table: (metric, label[, format]); counts unless a format is given."""

CHART_LEFT, CHART_SPAN, BAR_HEIGHT, BAR_GAP = 170, 380, 22, 8


def bar_width(value: int, biggest: int) -> float:
    """dashboard.js draws the same: round(value / max(biggest, 1) * span, 1)."""
    return round(value / max(biggest, 1) * CHART_SPAN, 1)


@dataclass(frozen=True)
class Bar:
    metric: str
    label: str
    value: int
    y: int
    width: float


def funnel_bars(funnel: Funnel) -> list[Bar]:
    values = [int(getattr(funnel, metric)) for metric, _ in BARS]
    biggest = max(values)
    return [
        Bar(metric, label, value, i * (BAR_HEIGHT + BAR_GAP), bar_width(value, biggest))
        for i, ((metric, label), value) in enumerate(zip(BARS, values, strict=True))
    ]


@dataclass(frozen=True)
class Bucket:
    start: datetime
    entered: int
    converted: int
    revenue: float


MAX_BUCKETS = 400
"""Bars in the chart over time at most: a longer span shows its latest days."""
HOURLY_UP_TO = timedelta(hours=72)


def buckets(
    rows: list[tuple[datetime, str, int, float]],
    *,
    since: datetime | None,
    until: datetime | None,
    now: datetime,
) -> tuple[str, list[Bucket]]:
    """Entries and conversions per hour (over a span of up to 72 hours) or per day, the
    empty ones filled in: ('hour' or 'day', the buckets, oldest first)."""
    if not rows and since is None:
        return "day", []
    last = until or now + timedelta(microseconds=1)  # until is exclusive; now is shown
    # At least a day's worth of hours: one bar alone says little.
    first = since or min(min(hour for hour, *_ in rows), last - timedelta(hours=23))
    unit = timedelta(hours=1) if last - first <= HOURLY_UP_TO else timedelta(days=1)

    def floor(at: datetime) -> datetime:
        at = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        return at if unit == timedelta(hours=1) else at.replace(hour=0)

    counts: dict[datetime, list[float]] = {}
    for hour, metric, count, amount in rows:
        slot = counts.setdefault(floor(hour), [0, 0, 0.0])
        if metric == ENTERED:
            slot[0] += count
        elif metric == CONVERTED:
            slot[1] += count
            slot[2] += amount
    start = floor(first)
    # The latest MAX_BUCKETS days of a longer span.
    start = max(start, floor(last - unit * MAX_BUCKETS) + unit)
    out: list[Bucket] = []
    at = start
    while at < last:
        entered, converted, revenue = counts.get(at, [0, 0, 0.0])
        out.append(Bucket(at, int(entered), int(converted), round(revenue, 2)))
        at += unit
    return ("hour" if unit == timedelta(hours=1) else "day"), out


# -- query parameters --------------------------------------------------------------------


def parse_when(text: str | None, *, end: bool = False) -> datetime | None:
    """A date (`2025-03-01`: that day, in UTC; as `until`, up to the end of it) or an ISO
    date and time (UTC unless it says otherwise). Raises ValueError."""
    if not text:
        return None
    if len(text) == 10:
        day = date.fromisoformat(text)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return start + timedelta(days=1) if end else start
    at = datetime.fromisoformat(text)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    since: datetime | None = None
    until: datetime | None = None
    problem: str | None = None

    def query(self) -> str:
        values = {k: v.isoformat() for k, v in (("since", self.since), ("until", self.until)) if v}
        return f"?{urlencode(values)}" if values else ""


def window_of(since: str | None, until: str | None) -> Window:
    try:
        return Window(parse_when(since), parse_when(until, end=True))
    except ValueError:
        return Window(problem="since and until are dates (2025-03-01) or ISO times")


def window_or_400(since: str | None, until: str | None) -> Window:
    window = window_of(since, until)
    if window.problem:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, window.problem)
    return window


# -- login -------------------------------------------------------------------------------


@router.get("/login")
async def login_form(request: Request, settings: SettingsDep, next: str | None = None) -> Response:
    if signed_in(request, settings):
        return RedirectResponse(_safe_next(next), status.HTTP_303_SEE_OTHER)
    return page("login.html", next=_safe_next(next), error=None, signed_in=False)


@router.post("/login")
async def login(request: Request, settings: SettingsDep) -> Response:
    if not same_origin(request, settings):
        return page("login.html", 403, next=COOKIE_PATH, error=CROSS_SITE, signed_in=False)
    form = await _form(request)
    token, target = form.get("token", ""), _safe_next(form.get("next"))
    if not secrets.compare_digest(token.encode(), settings.admin_token.encode()):
        error = "That is not the admin token."
        return page("login.html", 401, next=target, error=error, signed_in=False)
    response = RedirectResponse(target, status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        COOKIE,
        make_session(settings.admin_token, hours=settings.dashboard_session_hours),
        max_age=int(settings.dashboard_session_hours * 3600),
        path=COOKIE_PATH,
        secure=settings.public_url.lower().startswith("https:"),
        httponly=True,
        samesite="strict",
    )
    return response


CROSS_SITE = "This form can only be sent from the dashboard's own page: open it and try again."


@router.post("/logout")
async def logout(request: Request, settings: SettingsDep) -> Response:
    if not same_origin(request, settings):
        raise HTTPException(status.HTTP_403_FORBIDDEN, CROSS_SITE)
    response = RedirectResponse(_login_url(), status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


async def _form(request: Request) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body, first value of each field (read by hand:
    python-multipart is not a dependency)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send the login form")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LOGIN_BYTES:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "the form is too large")
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    return {name: values[0] for name, values in fields.items()}


# -- pages -------------------------------------------------------------------------------


@router.get("", dependencies=[PageLogin])
async def campaigns_page(session: SessionDep) -> Response:
    rows = []
    for campaign in await campaign_store.list_campaigns(session=session):
        funnel = await campaign_funnel(session, campaign_id=campaign.id)
        rows.append((campaign, funnel.funnel))
    return page("campaigns.html", campaigns=rows, signed_in=True)


async def _campaign_or_404(session: AsyncSession, campaign_id: str) -> None:
    campaign = await campaign_store.get_campaign(session=session, campaign_id=campaign_id)
    if campaign is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {campaign_id!r}")


@router.get("/campaigns/{campaign_id}", dependencies=[PageLogin])
async def campaign_page(
    campaign_id: CampaignId,
    session: SessionDep,
    since: str | None = None,
    until: str | None = None,
) -> Response:
    campaign = await campaign_store.get_campaign(session=session, campaign_id=campaign_id)
    if campaign is None:
        return page("missing.html", 404, what=f"No campaign {campaign_id!r}.", signed_in=True)
    window = window_of(since, until)
    funnel = await campaign_funnel(
        session, campaign_id=campaign_id, since=window.since, until=window.until
    )
    rows = await series(
        session,
        campaign_id=campaign_id,
        metrics=[ENTERED, CONVERTED],
        since=window.since,
        until=window.until,
    )
    unit, timeline = buckets(rows, since=window.since, until=window.until, now=datetime.now(UTC))
    deliveries = await reports.recent_deliveries(
        session, campaign_id=campaign_id, since=window.since, until=window.until
    )
    base = f"{COOKIE_PATH}/campaigns/{quote(campaign_id)}"
    return page(
        "campaign.html",
        campaign=campaign,
        funnel=funnel,
        bars=funnel_bars(funnel.funnel),
        chart={"left": CHART_LEFT, "span": CHART_SPAN, "bar": BAR_HEIGHT, "gap": BAR_GAP},
        numbers=[(m, label, rest[0] if rest else "count") for m, label, *rest in NUMBERS],
        unit=unit,
        timeline=timeline,
        most_converted=max([b.converted for b in timeline] + [1]),
        deliveries=deliveries,
        window=window,
        since=window.since.date().isoformat() if window.since else "",
        until=(window.until - timedelta(days=1)).date().isoformat() if window.until else "",
        live_url=base + "/live" + window.query(),
        poll_url=base + "/funnel" + window.query(),
        signed_in=True,
    )


@router.get("/campaigns/{campaign_id}/funnel", dependencies=[DataLogin])
async def campaign_funnel_json(
    campaign_id: CampaignId,
    session: SessionDep,
    since: str | None = None,
    until: str | None = None,
) -> Response:
    """What the live stream sends, for polling: the campaign's `CampaignFunnel`."""
    await _campaign_or_404(session, campaign_id)
    window = window_or_400(since, until)
    funnel = await campaign_funnel(
        session, campaign_id=campaign_id, since=window.since, until=window.until
    )
    return data(funnel.model_dump_json())


CHECK_SECONDS = 1.0
"""How often a live stream looks at the aggregates (a few rows: cheap)."""
HEARTBEAT_SECONDS = 15.0
"""A comment line this often when nothing changed, so proxies keep the stream open."""
STREAM_SECONDS = 10.0
"""How long one stream lasts before the browser reconnects (`retry`, and the stream
carries on where it was, by `Last-Event-ID`): a logout or a new admin token takes effect
within this long, and no stream holds the server's shutdown — uvicorn waits for open
responses to finish before it stops, and tells the app nothing — for longer than this."""


@router.get("/campaigns/{campaign_id}/live", dependencies=[DataLogin])
async def campaign_live(
    request: Request,
    campaign_id: CampaignId,
    services: ServicesDep,
    since: str | None = None,
    until: str | None = None,
) -> Response:
    """Server-sent events: `funnel` with the `CampaignFunnel` whenever it changes."""
    async with services.sessions() as session:
        await _campaign_or_404(session, campaign_id)
    window = window_or_400(since, until)
    last_seen = request.headers.get("last-event-id")
    loop = asyncio.get_running_loop()

    async def funnel_now() -> CampaignFunnel:
        async with services.sessions() as session:
            return await campaign_funnel(
                session, campaign_id=campaign_id, since=window.since, until=window.until
            )

    async def events() -> AsyncIterator[str]:
        sent, quiet_since, ends = last_seen, loop.time(), loop.time() + STREAM_SECONDS
        yield "retry: 1000\n\n"
        while loop.time() < ends:
            try:
                payload = (await funnel_now()).model_dump_json()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("live funnel of %r: %s", campaign_id, exc)
                payload = None
            tag = None if payload is None else hashlib.sha256(payload.encode()).hexdigest()[:16]
            if payload is not None and tag != sent:
                yield f"id: {tag}\nevent: funnel\ndata: {payload}\n\n"
                sent, quiet_since = tag, loop.time()
            elif loop.time() - quiet_since >= HEARTBEAT_SECONDS:
                yield ": still here\n\n"
                quiet_since = loop.time()
            await asyncio.sleep(CHECK_SECONDS)

    # Starlette ends the stream as soon as the client goes away (it listens for the
    # disconnect while streaming).
    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={**SECURITY_HEADERS, "X-Accel-Buffering": "no"},
    )


STATE_TIMEOUT = timedelta(seconds=3)
"""A running journey's state needs a worker to answer; the page does not wait longer."""


async def journey_state(client: Client | None, workflow_id: str) -> JourneyState | None:
    """The `state` query's answer (as `GET /v1/journeys/...` asks it), or None when
    Temporal or a worker does not give one in time."""
    if client is None:
        return None
    try:
        state: JourneyState = await client.get_workflow_handle(workflow_id).query(
            QUERY_STATE, result_type=JourneyState, rpc_timeout=STATE_TIMEOUT
        )
    except Exception as exc:  # unreachable, no worker, gone: the page says "unknown"
        log.info("state of %r: %s", workflow_id, exc)
        return None
    return state


def temporal_link(settings: Settings, workflow_id: str) -> str | None:
    if not settings.temporal_ui_url:
        return None
    namespace = quote(settings.temporal_namespace, safe="")
    return (
        f"{settings.temporal_ui_url.rstrip('/')}/namespaces/{namespace}"
        f"/workflows/{quote(workflow_id, safe='')}"
    )


@router.get("/users", dependencies=[PageLogin])
async def user_page(
    session: SessionDep, services: ServicesDep, settings: SettingsDep, user: str = ""
) -> Response:
    user = user.strip()
    if not user:
        return page("user.html", user="", found=None, error=None, signed_in=True)
    if len(user.encode()) > MAX_USER_ID_BYTES:
        error = f"A user id is at most {MAX_USER_ID_BYTES} bytes."
        return page("user.html", 400, user="", found=None, error=error, signed_in=True)
    ids = await person_ids(session, user)
    profile = await person_profile(session, user)
    journeys = await reports.person_journeys(session, user_ids=ids)
    deliveries = await reports.person_deliveries(session, user_ids=ids)
    names = await reports.campaign_names(session)
    client = services.temporal.client
    running = [j for j in journeys if j.status == "running"]
    states = await asyncio.gather(*(journey_state(client, j.workflow_id) for j in running))
    by_workflow = {j.workflow_id: s for j, s in zip(running, states, strict=True)}
    found = {
        "ids": ids,
        "traits": sorted((profile.traits if profile else {}).items()),
        "journeys": [
            (j, by_workflow.get(j.workflow_id), temporal_link(settings, j.workflow_id))
            for j in journeys
        ],
        "deliveries": deliveries,
        "names": names,
    }
    return page("user.html", user=user, found=found, error=None, signed_in=True, dumps=_trait)


def _trait(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
