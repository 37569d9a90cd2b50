"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against the API
over HTTP on 127.0.0.1 with the dev server and a real worker. Log in through the form; the
funnel on the page equals the stats API's; an event changes it without a reload; the user
lookup shows the journey with its Temporal UI link; nothing is shown without the login."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from api.routes.dashboard import COOKIE, make_session, session_expiry
from core.experiments import in_holdout
from core.journey import journey_id
from temporal.servers import DevServer
from tests.fixtures.api import (
    ADMIN,
    ADMIN_TOKEN,
    RunningApi,
    eventually,
    make_settings,
    running_api,
)
from worker.build import create_worker, worker_activities

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no `chromium` on PATH: install Debian's chromium (.ci/run does in CI)",
)
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"

HOLDOUT = 0.5
CAMPAIGN_ID = "dash-welcome"
CAMPAIGN = {
    "id": CAMPAIGN_ID,
    "name": "Welcome (dashboard)",
    "entry": {"event": "Signed Up"},
    "goals": [{"event": "Order Completed"}],
    "holdout": HOLDOUT,
    "steps": [
        {"id": "hello", "type": "send", "channel": "sandbox", "template": "hello", "next": "wait"},
        {"id": "wait", "type": "wait", "duration": "24h"},
    ],
    "templates": {"hello": {"subject": "Welcome {{ traits.first_name }}", "body": "Hi!"}},
}
PAGE = f"/dashboard/campaigns/{CAMPAIGN_ID}"


@pytest.fixture
async def api(sqlite_url: str, dev_server: DevServer) -> AsyncIterator[RunningApi]:
    """The API and a real worker on the session's dev server, the campaign active."""
    settings = make_settings(sqlite_url, dev_server.address)
    async with worker_activities(settings, dev_server.client) as activities:
        worker = create_worker(dev_server.client, activities, task_queue=settings.task_queue)
        async with worker, running_api(settings) as api:
            await api.campaign(CAMPAIGN)
            yield api


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=args
        )
        try:
            yield browser
        finally:
            await browser.close()


def user_named(name: str, *, held_out: bool) -> str:
    """A new user id that the campaign's holdout takes, or not (it is a hash of the id)."""
    while True:
        user = f"{name}-{uuid.uuid4().hex[:6]}"
        if in_holdout(CAMPAIGN_ID, user, HOLDOUT) is held_out:
            return user


async def stats(api: RunningApi) -> dict[str, Any]:
    response = await api.http.get(f"/v1/campaigns/{CAMPAIGN_ID}/stats", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def page_numbers(page: Page) -> dict[str, Any]:
    """Every number of the page's funnel table, as the page holds it (`data-value`)."""
    pairs = await page.eval_on_selector_all(
        "#funnel-numbers [data-metric]", "els => els.map(e => [e.dataset.metric, e.dataset.value])"
    )
    return {metric: json.loads(value) for metric, value in pairs}


async def numbers_match(api: RunningApi, page: Page) -> dict[str, Any]:
    expected, shown = (await stats(api))["funnel"], await page_numbers(page)
    assert shown, "no numbers on the page"
    assert shown == {metric: expected[metric] for metric in shown}
    return shown


async def test_nothing_is_shown_without_the_login(api: RunningApi):
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        for path in ("/dashboard", PAGE, "/dashboard/users?user=ada"):
            response = await http.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/dashboard/login?next=")
        forged = httpx.AsyncClient(
            base_url=api.url, cookies={COOKIE: make_session("another-token", hours=1)}
        )
        async with forged:
            for path in (f"{PAGE}/live", f"{PAGE}/funnel"):
                assert (await http.get(path)).status_code == 401, path
                assert (await forged.get(path)).status_code == 401, path
        assert (await http.get(f"{PAGE}/funnel", headers=ADMIN)).status_code == 200
        async with http.stream("GET", f"{PAGE}/live", headers=ADMIN) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            while not (line := await anext(lines)).startswith("data: "):
                pass
            assert json.loads(line.removeprefix("data: ")) == await stats(api)
        # The script and the stylesheet hold no data: public.
        assert (await http.get("/dashboard/static/dashboard.js")).status_code == 200

        own = {"origin": api.url}
        wrong = await http.post("/dashboard/login", data={"token": "nope"}, headers=own)
        assert wrong.status_code == 401 and COOKIE not in wrong.cookies
        assert "not the admin token" in wrong.text
        elsewhere = {"origin": "https://attacker.example"}
        cross = await http.post("/dashboard/login", data={"token": ADMIN_TOKEN}, headers=elsewhere)
        assert cross.status_code == 403 and COOKIE not in cross.cookies
        bare = await http.post("/dashboard/login", data={"token": ADMIN_TOKEN})
        assert bare.status_code == 403, "no Origin and no Referer: not from our form"

        right = await http.post("/dashboard/login", data={"token": ADMIN_TOKEN}, headers=own)
        assert right.status_code == 303 and right.headers["location"] == "/dashboard"
        cookie = right.headers["set-cookie"].lower()
        for attribute in ("httponly", "samesite=strict", "path=/dashboard", "max-age=43200"):
            assert attribute in cookie
        assert "secure" not in cookie  # public_url is http here
        page = await http.get("/dashboard")
        assert page.status_code == 200 and CAMPAIGN_ID in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"

        out = await http.post("/dashboard/logout", headers=own)
        assert out.status_code == 303
        assert (await http.get(f"{PAGE}/funnel")).status_code == 401


def test_sessions_are_signed_expire_and_end_with_the_admin_token():
    value = make_session("token-1", hours=1, now=1000)
    assert session_expiry(value, "token-1", now=1000) == 1000 + 3600
    assert session_expiry(value, "token-1", now=1000 + 3600) is None, "expired"
    assert session_expiry(value, "token-2", now=1000) is None, "a new admin token"
    expires, nonce, signature = value.split(".")
    assert session_expiry(f"{int(expires) + 9999}.{nonce}.{signature}", "token-1", now=1000) is None
    assert session_expiry("", "token-1") is None and session_expiry("1.2", "token-1") is None


@needs_chromium
async def test_the_dashboard_in_a_browser(api: RunningApi, browser: Browser):
    started = time.monotonic()
    ada, bob = user_named("ada", held_out=False), user_named("bob", held_out=True)
    await api.post(
        "/v1/identify",
        {"userId": ada, "traits": {"first_name": "Ada", "nickname": "<script>alert(1)</script>"}},
    )
    await api.track(ada, "Signed Up")

    async def ada_counted() -> dict[str, Any]:
        funnel: dict[str, Any] = (await stats(api))["funnel"]
        assert funnel["entered"] == 1 and funnel["sent"] == 1, funnel
        return funnel

    await eventually(ada_counted, timeout=20)

    context = await browser.new_context(base_url=api.url)
    page = await context.new_page()
    problems: list[str] = []
    # Errors in the page: a CSP violation, a script error. (Not the status of a resource:
    # the wrong token's 401, the favicon's 404.)
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(str(e)))

    # Refused without the login: the page is the login form, and a wrong token stays there.
    await page.goto(PAGE)
    assert "/dashboard/login" in page.url
    await page.fill("input[name=token]", "not-the-token")
    await page.click("button[type=submit] >> text=Log in")
    assert await page.text_content("#login-error") == "That is not the admin token."

    await page.fill("input[name=token]", ADMIN_TOKEN)
    await page.click("button[type=submit] >> text=Log in")
    await page.wait_for_url(f"**{PAGE}")
    await page.goto("/dashboard")
    await page.click(f"#campaigns a[href='{PAGE}']")
    await page.wait_for_url(f"**{PAGE}")
    await page.wait_for_selector("#live-status.live-on")
    await page.evaluate("window.loadedOnce = true")

    shown = await eventually(lambda: numbers_match(api, page), timeout=10)
    assert shown["entered"] == 1 and shown["sent"] == 1
    assert await page.text_content("#live-status") == "live"

    # Bob signs up, into the holdout: the page's numbers follow without a reload, and the
    # holdout's row appears.
    assert await page.locator("#by-group tr[data-group=holdout]").count() == 0
    await api.track(bob, "Signed Up")
    # (`expect` asks from outside the page: the page's CSP forbids the eval that
    # `wait_for_function` would use.)
    await expect(page.locator("#metric-entered")).to_have_attribute(
        "data-value", "2", timeout=15_000
    )
    await expect(page.locator("#by-group tr[data-group=holdout]")).to_have_count(1)
    assert await page.evaluate("window.loadedOnce") is True, "the page was reloaded"
    assert await page.text_content("#metric-entered") == "2"
    bar = await page.get_attribute("rect[data-bar=entered]", "width")
    assert bar is not None and float(bar) > 0
    await eventually(lambda: numbers_match(api, page), timeout=10)

    # Where server-sent events do not get through, the page polls: it follows too.
    polling = await context.new_page()
    await polling.route("**/live", lambda route: route.abort())
    polled: list[str] = []
    polling.on("request", lambda r: polled.append(r.url) if r.url.endswith("/funnel") else None)
    await polling.goto(PAGE)
    await expect(polling.locator("#live-status")).to_have_text("live", timeout=10_000)
    await api.track(user_named("cy", held_out=False), "Signed Up")
    for each in (page, polling):
        entered = each.locator("#metric-entered")
        await expect(entered).to_have_attribute("data-value", "3", timeout=15_000)
    assert polled, "the page did not poll"
    await polling.close()
    await eventually(lambda: numbers_match(api, page), timeout=10)

    # Ada buys: whatever the funnel counts of it, page and API agree.
    await api.track(ada, "Order Completed", properties={"order_id": "o-1", "revenue": 25})
    await eventually(lambda: numbers_match(api, page), timeout=10)
    if os.environ.get("NUDGE_SCREENSHOT") == "1":
        await page.wait_for_timeout(3000)  # let the conversion arrive, for the picture
        SCREENSHOT.parent.mkdir(exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT), full_page=True)

    # The user lookup: her journey, where it stands, its Temporal UI link, what was sent.
    await page.goto(f"/dashboard/users?user={quote(ada)}")
    row = page.locator("#user-journeys tbody tr")
    await row.first.wait_for()
    assert await row.count() == 1
    link = await row.locator("a.temporal").get_attribute("href")
    workflow = quote(journey_id(CAMPAIGN_ID, ada), safe="")
    assert link == f"{api.settings.temporal_ui_url}/namespaces/default/workflows/{workflow}"
    stands = await row.locator("td.stands").inner_text()
    assert "wait" in stands or "ended" in stands, stands
    assert "sent" in await page.locator("#user-deliveries tbody").inner_text()
    # Traits are shown as text, never run.
    assert "<script>alert(1)</script>" in await page.locator("#traits").inner_text()
    assert await page.evaluate("document.querySelectorAll('#traits script').length") == 0

    # Logging out ends it: the campaign page is the login form again.
    await page.click("text=Log out")
    await page.wait_for_url("**/dashboard/login")
    await page.goto(PAGE)
    assert "/dashboard/login" in page.url

    assert problems == []
    await context.close()
    assert time.monotonic() - started < 60
