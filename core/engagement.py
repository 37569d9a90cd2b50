"""core: engagement — what happened to a message after it left (delivered, opened, clicked,
bounced, marked as spam, unsubscribed), named as Segment's Email spec names it, and how a
machine's open or click is told from a person's. Pure."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum


class EngagementKind(StrEnum):
    delivered = "delivered"
    opened = "opened"
    clicked = "clicked"
    bounced = "bounced"
    """The provider could not deliver it (a hard bounce): the address is suppressed."""
    dropped = "dropped"
    """The provider refused to try (an address on its own suppression list, invalid)."""
    spam = "spam"
    """The recipient marked it as spam: the address is suppressed on the channel."""
    unsubscribed = "unsubscribed"
    """The recipient unsubscribed through the provider (e.g. SendGrid's own link)."""


SUPPRESSES = frozenset({EngagementKind.bounced, EngagementKind.spam})
"""Kinds after which nothing more is sent to the address on that channel."""

_CHANNEL_WORD = {"email": "Email", "sms": "SMS", "push": "Push"}
_KIND_WORDS = {
    EngagementKind.delivered: "Delivered",
    EngagementKind.opened: "Opened",
    EngagementKind.clicked: "Link Clicked",
    EngagementKind.bounced: "Bounced",
    EngagementKind.dropped: "Dropped",
    EngagementKind.spam: "Marked as Spam",
}


def event_name(channel: str, kind: EngagementKind) -> str:
    """The user event an engagement becomes: `Email Opened`, `Email Link Clicked`,
    `SMS Delivered`, `Email Marked as Spam`; an unsubscribe is Segment's `Unsubscribed`."""
    if kind is EngagementKind.unsubscribed:
        return "Unsubscribed"
    return f"{_CHANNEL_WORD.get(channel, channel.title())} {_KIND_WORDS[kind]}"


def event_message_id(delivery_id: int, kind: EngagementKind, key: str = "") -> str:
    """The engagement event's messageId: one event per delivery, kind and `key` (the link,
    and whether a person or a machine), however often the pixel or the webhook comes."""
    suffix = f":{key}" if key else ""
    return f"nudge:{kind.value}:{delivery_id}{suffix}"


MACHINE_CLICK_WITHIN = timedelta(seconds=2)
"""A click this soon after the message was sent is a link scanner's, not a person's:
nobody opens, reads and clicks that fast (settings: `machine_click_seconds`)."""
MACHINE_OPEN_WITHIN = timedelta(seconds=1)
"""An open this soon after sending is a mail proxy's or a gateway's fetching the images
as the message arrives (settings: `machine_open_seconds`)."""

_MACHINE_AGENTS = re.compile(
    "|".join(
        (
            r"GoogleImageProxy",  # Gmail's image proxy fetches every image it shows
            r"YahooMailProxy",
            r"^Mozilla/5\.0$",  # Apple Mail Privacy Protection's bare agent
            r"Microsoft Office/.*Outlook",  # Outlook's link previews
            r"BingPreview",
            r"Barracuda",
            r"Mimecast",
            r"Proofpoint",
            r"SafeLinks",
            r"bot\b",
            r"[Ss]canner",
            r"[Ss]pider",
            r"[Cc]rawler",
            r"facebookexternalhit",
            r"python-requests",
            r"python-httpx",
            r"aiohttp",
            r"curl/",
            r"Wget",
            r"Go-http-client",
            r"HeadlessChrome",
        )
    )
)


def is_machine(
    *,
    kind: EngagementKind,
    user_agent: str | None,
    at: datetime,
    sent_at: datetime | None,
    method: str = "GET",
    click_within: timedelta = MACHINE_CLICK_WITHIN,
    open_within: timedelta = MACHINE_OPEN_WITHIN,
) -> bool:
    """Whether an open or a click looks like a machine's: a known proxy's or scanner's
    user agent, none at all, a request a browser following a link or showing an image
    does not make (HEAD), or faster after sending than a person could be (`click_within`,
    `open_within`; zero turns timing off). Counted either way; the stats show both."""
    agent = (user_agent or "").strip()
    if method.upper() != "GET" or not agent or _MACHINE_AGENTS.search(agent):
        return True
    if sent_at is None:
        return False
    within = click_within if kind is EngagementKind.clicked else open_within
    return within > timedelta(0) and at - sent_at < within
