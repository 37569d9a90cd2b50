"""core.tracking: rewriting an email's links and adding its pixel, the signed tokens they
carry; core.engagement.is_machine: telling a proxy's or scanner's hit from a person's."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from core.engagement import MACHINE_CLICK_WITHIN, MACHINE_OPEN_WITHIN, EngagementKind, is_machine
from core.links import b64decode, b64encode, make_token, sign
from core.tracking import (
    MAX_TRACKED_URL_CHARS,
    TrackedClick,
    TrackedOpen,
    TrackingError,
    click_token,
    open_token,
    read_click_token,
    read_open_token,
    read_tracking_token,
    tracked_html,
    tracking_key,
)

SECRET = "test-link-secret"
PUBLIC = "https://nudge.example"
TRACKED = re.compile(r"https://nudge\.example/t/c/([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)")
PIXEL = re.compile(r'<img src="https://nudge\.example/t/o/([^"]+)" [^>]*/>')


def track(html: str, *, opens: bool = True, clicks: bool = True, delivery_id: int = 42) -> str:
    return tracked_html(
        html,
        secret=SECRET,
        public_url=PUBLIC,
        delivery_id=delivery_id,
        opens=opens,
        clicks=clicks,
    )


def unsubscribe_token() -> str:
    return make_token(
        secret=SECRET,
        user_id="ada",
        channel="email",
        group="marketing",
        expires_at=datetime.now(UTC) + timedelta(days=1),
    )


def clicked(token: str) -> TrackedClick:
    return read_click_token(secret=SECRET, token=token)


# -- links -----------------------------------------------------------------------------------


def test_links_are_rewritten_and_the_rest_is_kept_byte_for_byte():
    html = (
        '<p>Hi <a href="https://shop.example/cart" class="btn">your cart</a>,\n'
        "<A  HREF='http://shop.example/a?x=1&amp;y=2' target=_blank>deals</A> and "
        '<a title="see > more" href=https://shop.example/more>more</a>.</p>'
    )
    out = track(html, opens=False)

    tokens = TRACKED.findall(out)
    assert [clicked(t) for t in tokens] == [
        TrackedClick(delivery_id=42, link=0, url="https://shop.example/cart"),
        # Entities are the URL's text: `&amp;` in an href is `&`.
        TrackedClick(delivery_id=42, link=1, url="http://shop.example/a?x=1&y=2"),
        TrackedClick(delivery_id=42, link=2, url="https://shop.example/more"),
    ]
    expected = (
        f'<p>Hi <a href="{PUBLIC}/t/c/{tokens[0]}" class="btn">your cart</a>,\n'
        f'<A  HREF="{PUBLIC}/t/c/{tokens[1]}" target=_blank>deals</A> and '
        f'<a title="see > more" href="{PUBLIC}/t/c/{tokens[2]}">more</a>.</p>'
    )
    assert out == expected


def test_links_that_are_not_tracked_keep_their_url():
    unsubscribe = f"{PUBLIC}/u/{unsubscribe_token()}"
    html = (
        '<a href="mailto:help@shop.example">mail</a>'
        '<a href="tel:+4930123">call</a>'
        '<a href="#top">top</a>'
        '<a href="/relative/page">relative</a>'
        '<a href="ftp://files.example/x">ftp</a>'
        '<a name="anchor">no href</a>'
        f'<a href="{unsubscribe}">unsubscribe</a>'
        f'<a href="{PUBLIC}/unsubscribe?u=1">unsubscribe, older</a>'
        f'<a href="{PUBLIC}/v1/unsubscribe/x">unsubscribe, v1</a>'
        f'<a href="{PUBLIC}/t/c/already.tracked">tracked already</a>'
        '<abbr href="https://shop.example/not-a-link">abbr</abbr>'
        '<area href="https://shop.example/area">'
    )
    assert track(html, opens=False) == html


def test_a_link_marked_off_keeps_its_url_and_loses_the_attribute():
    html = (
        '<a data-nudge-track="off" href="https://shop.example/help">help</a> '
        "<a href='https://shop.example/terms' DATA-NUDGE-TRACK='OFF' class=x>terms</a> "
        '<a href="https://shop.example/on" data-nudge-track="on">on</a>'
    )
    out = track(html, opens=False)
    [token] = TRACKED.findall(out)
    assert out == (
        '<a href="https://shop.example/help">help</a> '
        "<a href='https://shop.example/terms' class=x>terms</a> "
        f'<a href="{PUBLIC}/t/c/{token}">on</a>'
    )
    # The link index is the link's place among the message's links, tracked or not.
    assert clicked(token) == TrackedClick(42, 2, "https://shop.example/on")


def test_clicks_off_keeps_every_link_and_opens_off_adds_no_pixel():
    html = '<a href="https://shop.example/" data-nudge-track="off">x</a><a href="https://a.example/">a</a>'
    out = track(html, clicks=False, opens=False)
    assert out == '<a href="https://shop.example/">x</a><a href="https://a.example/">a</a>'


def test_urls_are_signed_as_a_browser_follows_them_and_written_escaped():
    html = (
        '<a href=" https://shop.example/s?q=umbrella&amp;size=L&lt;&#10;\n">odd</a>'
        '<a href="https://shop.example/caf\u00e9 menu">non-ascii</a>'
    )
    out = track(html, opens=False)
    first, second = (clicked(t).url for t in TRACKED.findall(out))
    assert first == "https://shop.example/s?q=umbrella&size=L<"
    assert second == "https://shop.example/caf%C3%A9%20menu"
    assert "&lt;" not in out and "\n" not in out


def test_a_very_long_link_is_left_alone():
    long_url = "https://shop.example/?" + "x" * MAX_TRACKED_URL_CHARS
    html = f'<a href="{long_url}">long</a>'
    assert track(html, opens=False) == html


def test_hostile_markup_is_handled_in_linear_time():
    for html in (
        '<a x="' * 50_000,
        "<a " + "a" * 200_000,
        "<a " + " / " * 100_000,
        "<a b>" * 50_000,
    ):
        started = time.perf_counter()
        assert track(html, opens=False) == html
        assert time.perf_counter() - started < 1.0


def test_a_tag_that_never_closes_ends_the_rewriting_as_it_ends_the_markup():
    html = '<a href="https://shop.example/">ok</a><a title="x href=\'https://a.example/\'>'
    out = track(html, opens=False)
    [token] = TRACKED.findall(out)
    assert out == f'<a href="{PUBLIC}/t/c/{token}">ok</a><a title="x href=\'https://a.example/\'>'


# -- the pixel -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "before"),
    [
        ("<html><body><p>Hi</p></body></html>", "</body></html>"),
        ("<html><BODY><p>Hi</p></BODY >\n</html>", "</BODY >\n</html>"),
        ("<p>Hi</p>", ""),
    ],
)
def test_the_pixel_goes_before_the_end_of_the_body(html: str, before: str):
    out = track(html, clicks=False)
    pixel = PIXEL.search(out)
    assert pixel is not None
    assert out == html[: len(html) - len(before)] + pixel.group(0) + before
    assert 'width="1" height="1" alt=""' in pixel.group(0)
    assert read_open_token(secret=SECRET, token=pixel.group(1)) == TrackedOpen(42)


def test_a_message_without_links_only_gets_its_pixel():
    out = track("<p>Hello</p>", delivery_id=7)
    [token] = PIXEL.findall(out)
    assert read_tracking_token(secret=SECRET, token=token) == TrackedOpen(7)


# -- tokens ----------------------------------------------------------------------------------


def _document(token: str) -> dict:
    return json.loads(b64decode(token.partition(".")[0]))


def _with_document(token: str, document: dict) -> str:
    """The token with its payload replaced and its signature kept: a forgery."""
    payload = b64encode(json.dumps(document, separators=(",", ":")).encode())
    return f"{payload}.{token.partition('.')[2]}"


def test_tokens_round_trip():
    token = click_token(secret=SECRET, delivery_id=9, link=3, url="https://shop.example/x")
    assert read_tracking_token(secret=SECRET, token=token) == TrackedClick(
        9, 3, "https://shop.example/x"
    )
    assert read_open_token(secret=SECRET, token=open_token(secret=SECRET, delivery_id=9)) == (
        TrackedOpen(9)
    )


def test_a_changed_url_or_delivery_is_tampered():
    token = click_token(secret=SECRET, delivery_id=9, link=0, url="https://shop.example/x")
    for change in ({"u": "https://evil.example/"}, {"d": 10}, {"i": 1}):
        forged = _with_document(token, _document(token) | change)
        with pytest.raises(TrackingError, match="altered") as err:
            read_click_token(secret=SECRET, token=forged)
        assert err.value.reason == "tampered"


def test_a_changed_signature_or_another_secret_is_tampered():
    url = "https://shop.example/x"
    token = click_token(secret=SECRET, delivery_id=9, link=0, url=url)
    payload, _, signature = token.partition(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    other_secret = click_token(secret="other", delivery_id=9, link=0, url=url)
    for bad in (f"{payload}.{flipped}", other_secret):
        with pytest.raises(TrackingError) as err:
            read_click_token(secret=SECRET, token=bad)
        assert err.value.reason == "tampered"


def test_an_unsubscribe_token_is_not_a_tracking_token():
    with pytest.raises(TrackingError) as err:
        read_tracking_token(secret=SECRET, token=unsubscribe_token())
    assert err.value.reason == "tampered"


def test_a_pixel_token_is_not_a_link_and_a_link_is_not_a_pixel():
    pixel = open_token(secret=SECRET, delivery_id=9)
    link = click_token(secret=SECRET, delivery_id=9, link=0, url="https://shop.example/x")
    with pytest.raises(TrackingError, match="not valid"):
        read_click_token(secret=SECRET, token=pixel)
    with pytest.raises(TrackingError, match="not valid"):
        read_open_token(secret=SECRET, token=link)


@pytest.mark.parametrize(
    "token", ["", "nodot", ".sig", "payload.", "random-string.x", "é.é", "a.b.c", "  "]
)
def test_malformed_tokens(token: str):
    with pytest.raises(TrackingError) as err:
        read_tracking_token(secret=SECRET, token=token)
    assert err.value.reason in {"malformed", "tampered"}


def test_a_signed_document_this_version_cannot_use_is_malformed():
    # Signed with the right key (as a future version might), but not something to follow.
    for document in (
        {"v": 2, "k": "o", "d": 1},
        {"v": 1, "k": "c", "d": 1, "i": 0, "u": "javascript:alert(1)"},
        {"v": 1, "k": "c", "d": 1, "i": 0, "u": "https://x.example/\r\nSet-Cookie: a=b"},
        {"v": 1, "k": "o", "d": "1"},
        {"v": 1, "k": "x", "d": 1},
        [1, 2],
    ):
        payload = b64encode(json.dumps(document).encode())
        token = f"{payload}.{sign(tracking_key(SECRET), payload)}"
        with pytest.raises(TrackingError) as err:
            read_tracking_token(secret=SECRET, token=token)
        assert err.value.reason == "malformed", document


# -- machines --------------------------------------------------------------------------------

SENT = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Version/17.4 Safari"


def machine(kind: EngagementKind, after: float, agent: str | None = BROWSER, **kw) -> bool:
    return is_machine(
        kind=kind, user_agent=agent, at=SENT + timedelta(seconds=after), sent_at=SENT, **kw
    )


def test_a_click_or_open_faster_than_a_person_is_a_machine():
    clicked_, opened = EngagementKind.clicked, EngagementKind.opened
    assert MACHINE_CLICK_WITHIN == timedelta(seconds=2)
    assert MACHINE_OPEN_WITHIN == timedelta(seconds=1)
    assert machine(clicked_, 0.5) and machine(clicked_, 1.99)
    assert not machine(clicked_, 2.0) and not machine(clicked_, 3600)
    assert machine(opened, 0.5) and not machine(opened, 1.0)
    # Thresholds come from settings; zero turns the timing rule off.
    assert machine(clicked_, 9, click_within=timedelta(seconds=10))
    assert not machine(clicked_, 0.1, click_within=timedelta(0))
    assert not machine(opened, 0.0, open_within=timedelta(0))
    # Not yet known when it was sent: timing cannot tell.
    assert not is_machine(kind=clicked_, user_agent=BROWSER, at=SENT, sent_at=None)


@pytest.mark.parametrize(
    "agent",
    [
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
        "Mozilla/5.0",
        "Mozilla/5.0 (compatible; Barracuda Sentinel)",
        "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.4266; Pro)",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "python-httpx/0.27.0",
        "curl/8.5.0",
        "",
        None,
    ],
)
def test_proxies_scanners_and_no_agent_are_machines_whenever_they_come(agent: str | None):
    assert machine(EngagementKind.opened, 3600, agent)
    assert machine(EngagementKind.clicked, 3600, agent)


def test_a_head_request_is_a_machine():
    assert machine(EngagementKind.clicked, 3600, method="HEAD")
    assert not machine(EngagementKind.clicked, 3600, method="GET")
