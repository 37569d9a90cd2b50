"""core: tracked emails — the open pixel and rewritten links of an email's HTML part, and
the signed tokens they carry. Pure, stdlib.

A token is made like an unsubscribe token (core.links): base64url JSON, ".", base64url
HMAC-SHA256 of it — under a key derived from the link secret for tracking alone, so an
unsubscribe token is never a tracking token, nor the other way round. The pixel's says
which delivery; a link's says which delivery, which link, and the URL it stood for. No
row per link: the redirect goes to the URL the signature covers, and only `tracked_html`
signs, so only URLs that were in a rendered message can be redirected to.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape, unescape
from typing import Any, Literal
from urllib.parse import quote

from core.links import b64decode, b64encode, sign, signature_matches

TOKEN_VERSION = 1
OPEN_PATH = "/t/o/"
CLICK_PATH = "/t/c/"
TRACK_ATTRIBUTE = "data-nudge-track"
"""`data-nudge-track="off"` on a link keeps its own URL; the attribute itself is removed."""
NOT_TRACKED_PATHS = ("/u/", "/unsubscribe", "/v1/unsubscribe", "/t/")
"""Nudge's own URLs under the public URL that are never rewritten: the unsubscribe page
(the List-Unsubscribe link, and any copy of it in the body) and tracking URLs themselves."""
MAX_TRACKED_URL_CHARS = 4096
"""A longer link is left as it is: its token would make a URL past what some servers and
mail clients keep whole (uvicorn's request line limit is near 8 KB)."""

_KEY_CONTEXT = b"nudge-tracking-v1"
_OPEN, _CLICK = "o", "c"

Kind = Literal["open", "click"]


class TrackingError(ValueError):
    """A tracking token that cannot be honoured; `reason` is tampered or malformed, and the
    message says what the person holding it can do."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class TrackedOpen:
    delivery_id: int


@dataclass(frozen=True)
class TrackedClick:
    delivery_id: int
    link: int
    """The link's place among the message's links (0: the first `<a href>`)."""
    url: str
    """Where the link went in the rendered message: where the click is redirected."""


def tracking_key(secret: str) -> bytes:
    """The key tracking tokens are signed with: HMAC(link secret, a fixed context)."""
    if not secret:
        raise ValueError("the link secret is empty: set NUDGE_LINK_SECRET")
    return hmac.new(secret.encode(), _KEY_CONTEXT, hashlib.sha256).digest()


def _token(key: bytes, document: dict[str, object]) -> str:
    payload = b64encode(json.dumps(document, separators=(",", ":")).encode())
    return f"{payload}.{sign(key, payload)}"


def _open(delivery_id: int) -> dict[str, object]:
    return {"v": TOKEN_VERSION, "k": _OPEN, "d": delivery_id}


def _click(delivery_id: int, link: int, url: str) -> dict[str, object]:
    return {"v": TOKEN_VERSION, "k": _CLICK, "d": delivery_id, "i": link, "u": url}


def open_token(*, secret: str, delivery_id: int) -> str:
    """The pixel's token."""
    return _token(tracking_key(secret), _open(delivery_id))


def click_token(*, secret: str, delivery_id: int, link: int, url: str) -> str:
    """A link's token: `url` as the redirect will send it (tracked_html makes it from the
    href: unescaped, and percent-encoded where a header could not carry it)."""
    return _token(tracking_key(secret), _click(delivery_id, link, url))


def open_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}{OPEN_PATH}{token}"


def click_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}{CLICK_PATH}{token}"


def read_tracking_token(
    *, secret: str, token: str, kind: Kind | None = None
) -> TrackedOpen | TrackedClick:
    """What a token stands for, or a `TrackingError`: a signature that does not match
    (changed, another secret, an unsubscribe token) is `tampered`; a good signature over
    something this version cannot read, or a token of the other `kind`, is `malformed`.
    The signature is checked first, in constant time, before the payload is believed."""
    payload, dot, signature = token.strip().partition(".")
    if not dot or not payload or not signature:
        raise TrackingError("malformed", "this link is incomplete: copy the whole link")
    if not signature_matches(tracking_key(secret), payload, signature):
        raise TrackingError(
            "tampered", "this link has been altered or is not one of ours: nothing to open"
        )
    hit = _hit(_document(payload))
    if hit is None or (kind is not None and kind != _kind(hit)):
        raise TrackingError("malformed", "this link is not valid: nothing to open")
    return hit


def read_open_token(*, secret: str, token: str) -> TrackedOpen:
    """The pixel a token stands for, or a `TrackingError` (a link's token included)."""
    hit = read_tracking_token(secret=secret, token=token, kind="open")
    assert isinstance(hit, TrackedOpen)
    return hit


def read_click_token(*, secret: str, token: str) -> TrackedClick:
    """The link a token stands for, or a `TrackingError` (the pixel's token included)."""
    hit = read_tracking_token(secret=secret, token=token, kind="click")
    assert isinstance(hit, TrackedClick)
    return hit


def _document(payload: str) -> dict[str, Any] | None:
    try:
        document = json.loads(b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    if isinstance(document, dict) and document.get("v") == TOKEN_VERSION:
        return document
    return None


def _hit(document: dict[str, Any] | None) -> TrackedOpen | TrackedClick | None:
    if document is None or type(delivery_id := document.get("d")) is not int:
        return None
    if document.get("k") == _OPEN:
        return TrackedOpen(delivery_id=delivery_id)
    link, url = document.get("i"), document.get("u")
    if document.get("k") == _CLICK and type(link) is int and isinstance(url, str):
        return (
            TrackedClick(delivery_id=delivery_id, link=link, url=url) if _trackable(url) else None
        )
    return None


def _kind(hit: TrackedOpen | TrackedClick) -> Kind:
    return "open" if isinstance(hit, TrackedOpen) else "click"


# -- rewriting the HTML part ----------------------------------------------------------------

# An `<a>` start tag and its attributes, tokenised as browsers do: a value in quotes may
# hold `>` (and a quote left open runs to the end), an unquoted one runs to the next space
# or `>`. A tag ends at the first `>` outside quotes. Markup past what this reads (a quote
# never closed, an attribute name starting with a quote or `=`) ends the rewriting there:
# the rest is left as it is. Possessive quantifiers: no backtracking, one pass per tag.
_NAME = r"""[^\s/>"'=][^\s/>=]*+"""
_VALUE = r""""[^"]*+"|'[^']*+'|(?!["'])[^\s>]*+"""
_A_START = re.compile(r"<a(?=[\s/>])", re.IGNORECASE)
_A_TAG = re.compile(rf"<a(?:[\s/]++|{_NAME}(?:\s*+=\s*+(?:{_VALUE}))?+)*+>", re.IGNORECASE)
_ATTRIBUTE = re.compile(rf"[\s/]*+(?P<name>{_NAME})(?:\s*+=\s*+(?P<value>{_VALUE}))?+")
_HTTP = re.compile(r"https?://", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_URL_NOISE = re.compile(r"[\t\n\r]")
_C0_AND_SPACE = "".join(map(chr, range(0x21)))


def _trackable(url: str) -> bool:
    return bool(_HTTP.match(url)) and all(0x20 < ord(c) < 0x7F for c in url)


def _carries(url: str) -> bool:
    return _trackable(url) and len(url) <= MAX_TRACKED_URL_CHARS


def _location(href: str) -> str:
    """The URL a browser would follow for an href, as a `Location` can carry it: tabs and
    line breaks dropped and the ends trimmed (as the URL standard does), other characters
    outside printable ASCII (spaces, non-ASCII) percent-encoded as UTF-8."""
    url = _URL_NOISE.sub("", href).strip(_C0_AND_SPACE)
    return "".join(c if 0x20 < ord(c) < 0x7F else quote(c, safe="") for c in url)


def _own(url: str, public_url: str) -> bool:
    base = public_url.rstrip("/").lower()
    lowered = url.lower()
    return any(lowered.startswith(base + path) for path in NOT_TRACKED_PATHS)


def _unquote(value: str) -> str:
    if value[:1] in ('"', "'"):
        return value[1:-1]
    return value


def tracked_html(
    html: str,
    *,
    secret: str,
    public_url: str,
    delivery_id: int,
    opens: bool,
    clicks: bool,
) -> str:
    """The HTML part with its links rewritten through Nudge and an open pixel added.

    With `clicks`, each `<a href="http(s)://…">` points at `{public_url}/t/c/{token}`
    instead, except links marked `data-nudge-track="off"`, Nudge's own unsubscribe
    links, and links too long to carry (MAX_TRACKED_URL_CHARS); `mailto:`, `tel:`, `#…`
    and relative links are never touched. `data-nudge-track` is removed from every link.
    With `opens`, a 1x1 image `{public_url}/t/o/{token}` goes before `</body>` (at the
    end when there is none). Everything else is kept byte for byte.
    """
    key = tracking_key(secret)
    parts: list[str] = []
    done = links = 0
    for start in _A_START.finditer(html):
        if start.start() < done:
            continue  # inside the previous tag's attributes
        tag = _A_TAG.match(html, start.start())
        if tag is None:
            break  # never closes, or cannot be read: the rest stays as it is
        href, cut, track = _read_link(tag.group(0))
        replace: dict[tuple[int, int], str] = {}
        if href is not None:
            url = _location(unescape(_unquote(href.group("value"))))
            if clicks and track and _carries(url) and not _own(url, public_url):
                tracked = click_url(public_url, _token(key, _click(delivery_id, links, url)))
                replace[href.span("value")] = f'"{escape(tracked, quote=True)}"'
            links += 1
        parts += [
            html[done : tag.start()],
            _splice(tag.group(0), sorted([*cut, *replace]), replace),
        ]
        done = tag.end()
    out = "".join(parts) + html[done:]
    if opens:
        token = _token(key, _open(delivery_id))
        pixel = (
            f'<img src="{escape(open_url(public_url, token), quote=True)}" width="1" '
            'height="1" alt="" style="display:block;width:1px;height:1px;border:0" />'
        )
        ends = list(_BODY_END.finditer(out))
        if ends:
            at = ends[-1].start()
            out = out[:at] + pixel + out[at:]
        else:
            out += pixel
    return out


def _read_link(tag: str) -> tuple[re.Match[str] | None, list[tuple[int, int]], bool]:
    """An `<a>` tag's first href (browsers ignore the others), the spans of its
    `data-nudge-track` attributes, and whether they leave it tracked."""
    href: re.Match[str] | None = None
    ours: list[tuple[int, int]] = []
    track = True
    for attribute in _attributes(tag):
        name = attribute.group("name").lower()
        if name == "href" and href is None and attribute.group("value") is not None:
            href = attribute
        elif name == TRACK_ATTRIBUTE:
            value = unescape(_unquote(attribute.group("value") or ""))
            track = track and value.strip().lower() != "off"
            ours.append(attribute.span())
    return href, ours, track


def _attributes(tag: str) -> Iterator[re.Match[str]]:
    """A start tag's attributes in order, each with the space before it."""
    at, end = 2, len(tag) - 1  # after `<a`, before `>`
    while (attribute := _ATTRIBUTE.match(tag, at, end)) is not None and attribute.end() > at:
        yield attribute
        at = attribute.end()


def _splice(
    tag: str, spans: list[tuple[int, int]], replacements: dict[tuple[int, int], str]
) -> str:
    """`tag` with each span (in order, none overlapping) removed, or replaced when
    `replacements` names it."""
    parts, last = [], 0
    for start, end in spans:
        parts.append(tag[last:start])
        parts.append(replacements.get((start, end), ""))
        last = end
    parts.append(tag[last:])
    return "".join(parts)
