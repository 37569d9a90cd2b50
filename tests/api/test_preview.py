"""tests.api: previewing a send step over HTTP — rendered as `deliver` would, nothing sent."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from store.models import CampaignVersion
from tests.fixtures.api import ADMIN, RunningApi, eventually

CART: dict[str, Any] = {
    "id": "cart",
    "name": "Cart abandonment",
    "entry": {"event": "Product Added"},
    "steps": [
        {"id": "wait", "type": "wait", "duration": "1h", "next": "mail"},
        {"id": "mail", "type": "send", "channel": "email", "template": "mail", "next": "text"},
        {"id": "text", "type": "send", "channel": "sms", "template": "text", "next": "broken"},
        {"id": "broken", "type": "send", "channel": "sandbox", "template": "broken"},
    ],
    "templates": {
        "mail": {
            "subject": "{{ traits.first_name | default('Hi') }}, your {{ event.properties.sku }}",
            "body": "Total {{ event.properties.total | money('EUR') }} on "
            "{{ event.timestamp | date('long') }}; last: {{ last_event.name }}",
            "html": "<p>{{ campaign.name }} v{{ campaign.version }} for {{ user_id }}</p>",
            "data": {"sku": "{{ event.properties.sku }}"},
        },
        "text": {"body": "{{ traits.first_name }}: " + "x" * 170},
        "broken": {"body": "line one\n{{ 1 // 0 }}"},
    },
}


async def preview(api: RunningApi, body: dict[str, Any], campaign: str = "cart") -> Any:
    return await api.http.post(f"/v1/campaigns/{campaign}/preview", json=body, headers=ADMIN)


async def test_email_step_renders_with_stored_traits_overrides_and_events(api: RunningApi):
    await api.campaign(CART, activate=False)
    await api.post(
        "/v1/identify",
        {"userId": "ada", "traits": {"first_name": "Ada", "locale": "de_DE"}, "messageId": "i-1"},
    )
    await eventually(lambda: _has_traits(api, "ada"))
    response = await preview(
        api,
        {
            "step_id": "mail",
            "user_id": "ada",
            "traits": {"timezone": "Asia/Kolkata"},
            "event": {
                "name": "Product Added",
                "properties": {"sku": "U-1", "total": 19.5},
                "timestamp": "2025-03-05T20:00:00Z",
            },
            "last_event": {"name": "Checkout Started"},
        },
    )
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["channel"] == "email" and got["version"] == 1 and got["template"] == "mail"
    assert got["subject"] == "Ada, your U-1"
    # de_DE from the stored profile; the 6th already in Kolkata (UTC+5:30) from the override.
    assert got["body"] == "Total 19,50\xa0€ on 6. März 2025; last: Checkout Started"
    assert got["html"] == "<p>Cart abandonment v1 for ada</p>"
    assert got["data"] == {"sku": "U-1"}
    assert got["segments"] is None and got["encoding"] is None


async def _has_traits(api: RunningApi, user_id: str) -> bool:
    return bool(await api.traits(user_id))


async def test_sms_step_counts_segments_and_defaults_fill_in(api: RunningApi):
    await api.campaign(CART, activate=False)
    response = await preview(api, {"step_id": "text", "traits": {"first_name": "Zoë"}})
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["body"].startswith("Zoë: x")
    assert (got["encoding"], got["segments"]) == ("UCS-2", 3)  # 175 UTF-16 units, 67 a part

    response = await preview(api, {"step_id": "text"})
    assert response.json()["body"].startswith(": x")  # a missing trait renders empty
    assert (response.json()["encoding"], response.json()["segments"]) == ("GSM-7", 2)

    response = await preview(api, {"step_id": "mail"})  # no event: the entry event, empty
    assert response.status_code == 200, response.text
    assert response.json()["subject"] == "Hi, your "


async def test_unknown_campaign_step_or_version_is_404(api: RunningApi):
    await api.campaign(CART, activate=False)
    assert (await preview(api, {"step_id": "mail"}, campaign="nope")).status_code == 404
    missing_step = await preview(api, {"step_id": "nope"})
    assert missing_step.status_code == 404
    assert "mail" in missing_step.json()["detail"]  # names the steps there are
    missing_version = await preview(api, {"step_id": "mail", "version": 9})
    assert missing_version.status_code == 404
    assert missing_version.json()["detail"] == "campaign 'cart' version 9 is not in the store"


async def test_a_stored_version_that_no_longer_validates_is_409(api: RunningApi):
    await api.campaign(CART, activate=False)
    async with api.services.sessions() as session, session.begin():
        # What a stricter rule in a later release would make of a stored version.
        await session.execute(
            update(CampaignVersion)
            .where(CampaignVersion.campaign_id == "cart")
            .values(definition={**CART, "steps": []})
        )
    response = await preview(api, {"step_id": "mail"})
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert detail.startswith("campaign 'cart' version 1 no longer validates (steps:")
    assert detail.endswith("save the campaign again as a new version")


async def test_not_a_send_step_and_render_failure_are_422(api: RunningApi):
    await api.campaign(CART, activate=False)
    wait = await preview(api, {"step_id": "wait"})
    assert wait.status_code == 422
    assert "send" in wait.json()["detail"]
    broken = await preview(api, {"step_id": "broken"})
    assert broken.status_code == 422
    assert "'broken.body' line 2" in broken.json()["detail"]
    assert "ZeroDivisionError" in broken.json()["detail"]


async def test_preview_needs_the_admin_token(api: RunningApi):
    await api.campaign(CART, activate=False)
    response = await api.http.post("/v1/campaigns/cart/preview", json={"step_id": "mail"})
    assert response.status_code == 401


PREVIEW_HOSTILE: list[tuple[str, list[str | int]]] = [
    # (body as JSON text, the field the first error names)
    (r'{"step_id": "mail", "traits": {"first_name": "a\ud800"}}', ["traits", "first_name"]),
    (r'{"step_id": "mail", "traits": {"k\ud800": 1}}', ["traits", r"k\ud800"]),
    (r'{"step_id": "mail", "traits": {"n": [1, NaN]}}', ["traits", "n", 1]),
    (
        r'{"step_id": "mail", "event": {"name": "E", "properties": {"x": 1e999}}}',
        ["event", "properties", "x"],
    ),
    (r'{"step_id": "mail", "user_id": "a\u0000"}', ["user_id"]),
    (r'{"step_id": "mail", "user_id": "a\udc00"}', ["user_id"]),
    ('{"step_id": "mail", "user_id": "' + "\U0001f600" * 129 + '"}', ["user_id"]),
    ('{"step_id": "mail", "version": 3619885528510541319897088}', ["version"]),
    ('{"step_id": "mail", "version": 2147483648}', ["version"]),
    (
        '{"step_id": "mail", "event": {"name": "E", "timestamp": "9999-12-31T23:00:00-05:00"}}',
        ["event", "timestamp"],
    ),
]


async def test_hostile_previews_are_422_naming_the_field(api_db: RunningApi):
    await api_db.campaign(CART, activate=False)
    for text, loc in PREVIEW_HOSTILE:
        answer = await api_db.http.post(
            "/v1/campaigns/cart/preview",
            content=text.encode(),
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        assert answer.status_code == 422, (text[:80], answer.text[:300])
        assert answer.json()["detail"][0]["loc"] == ["body", *loc], (text[:80], answer.text)
