"""A journey whose campaign version can no longer be used ends `failed`, with the reason,
and its outcome is recorded — with the real activities on SQLite and PostgreSQL, on a
time-skipping server."""

from __future__ import annotations

import uuid

from sqlalchemy import select, update

from core.config import Settings
from core.journey import JourneyStatus
from store.campaigns import save_campaign
from store.models import CampaignVersion, Delivery, JourneyEntry
from tests.fixtures.temporal import real_journey_worker
from tests.workflows.test_journey import CART, event, start


async def test_a_version_that_no_longer_validates_fails_the_journey_on_the_record(
    time_skipping_env, sessions
):
    user = f"u-{uuid.uuid4().hex[:8]}"
    async with sessions() as session, session.begin():
        await save_campaign(session=session, definition=CART)
        # What a stricter rule in a later release would make of the stored version.
        await session.execute(
            update(CampaignVersion)
            .where(CampaignVersion.campaign_id == CART.id)
            .values(definition={"id": CART.id, "name": "Cart", "steps": []})
        )
    settings = Settings(_env_file=None, quiet_hours_start=None, caps=[])
    client = time_skipping_env.client
    async with real_journey_worker(client, sessions, settings) as queue:
        handle = await start(client, queue, CART, user=user, entry=event("Product Added"))
        result = await handle.result()

    assert result.status is JourneyStatus.failed
    assert result.exit_reason is not None
    assert result.exit_reason.startswith(
        "send failed: campaign 'cart' version 1 no longer validates"
    )
    async with sessions() as session:
        [entry] = (
            await session.scalars(select(JourneyEntry).where(JourneyEntry.user_id == user))
        ).all()
        sent = (await session.scalars(select(Delivery).where(Delivery.user_id == user))).all()
    assert (entry.status, entry.exit_reason) == ("failed", result.exit_reason)
    assert sent == []  # nothing was tried
