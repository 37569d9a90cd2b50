"""tests.api: previewing templates that would hold the process — refused quickly with a 422,
and the API keeps answering meanwhile."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.fixtures.api import ADMIN, RunningApi

HOSTILE: dict[str, tuple[str, str]] = {
    # name: (template body, what the refusal says)
    "power": ("{{ ((((9**64)**64)**64)**64) > 1 }}", "`**` would be a number of about 3,909"),
    "towers": ("{{ 9**(9**(9**9)) }}", "numbers in a template are limited to 1000 digits"),
    "padded": ("{{ [1]|batch(10**8, 0)|first|length }}", "batch(100000000) with a fill value"),
    # With literal arguments, Jinja would have run these while compiling, outside any budget.
    "literal": ("{{ [1]|batch(100000000, 0)|first|length }}", "batch(100000000)"),
    "sliced": ("{{ [1]|slice(10000000)|list|length }}", "slice(10000000)"),
    "width": ("{{ '{:>{}}'.format('x', 999999999) }}", "a format width of 999999999"),
    # A filter that loops in Python for seconds: stopped by the render's deadline.
    "links": ("{{ ('x ' * 200000)|urlize|length }}", "rendering took longer than 200 ms"),
}


def campaign() -> dict[str, Any]:
    names = list(HOSTILE)
    steps = [
        {"id": name, "type": "send", "channel": "sandbox", "template": name}
        | ({"next": names[i + 1]} if i + 1 < len(names) else {})
        for i, name in enumerate(names)
    ]
    return {
        "id": "hostile",
        "name": "Hostile templates",
        "entry": {"event": "Product Added"},
        "steps": steps,
        "templates": {name: {"body": body} for name, (body, _) in HOSTILE.items()},
    }


async def slowest_health_check(api: RunningApi, stop: asyncio.Event) -> float:
    """Ask `/healthz` again and again until `stop`; the longest an answer took."""
    slowest = 0.0
    while not stop.is_set():
        started = time.monotonic()
        response = await api.http.get("/healthz")
        assert response.status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        await asyncio.sleep(0.01)
    return slowest


@pytest.mark.parametrize("step", list(HOSTILE))
async def test_a_hostile_template_is_a_quick_422_and_the_api_stays_responsive(
    api: RunningApi, step: str
):
    await api.campaign(campaign(), activate=False)
    stop = asyncio.Event()
    health = asyncio.create_task(slowest_health_check(api, stop))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    response = await api.http.post(
        "/v1/campaigns/hostile/preview", json={"step_id": step}, headers=ADMIN
    )
    took = time.monotonic() - started
    stop.set()
    slowest = await health

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"template '{step}.body' line 1: "), detail
    assert HOSTILE[step][1] in detail
    # Before: 12 s for `power`, with /healthz stalled for as long.
    assert took < 2, f"preview took {took:.2f} s"
    assert slowest < 1, f"/healthz took {slowest:.2f} s"
