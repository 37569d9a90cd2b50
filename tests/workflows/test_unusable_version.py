"""A journey whose campaign version can no longer be used ends `failed`, with the reason,
and its outcome is recorded — with the real activities on SQLite and PostgreSQL, on a
time-skipping server."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select, update
from temporalio.worker import Worker

from activities.channels.registry import build_providers
from activities.journey import JourneyActivities
from core.config import Settings
from core.journey import JourneyStatus
from store.campaigns import save_campaign
from store.models import CampaignVersion, Delivery, JourneyEntry
from tests.workflows.test_journey import CART, event, start
from workflows.journey import JourneyWorkflow


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
    queue = f"tq-{uuid.uuid4()}"
    async with httpx.AsyncClient() as http:
        activities = JourneyActivities(
            sessions=sessions,
            providers=build_providers(settings, http=http, sessions=sessions),
            settings=settings,
        )
        async with Worker(
            time_skipping_env.client,
            task_queue=queue,
            workflows=[JourneyWorkflow],
            activities=activities.all(),
        ):
            handle = await start(
                time_skipping_env.client, queue, CART, user=user, entry=event("Product Added")
            )
            result = await handle.result()

    assert result.status is JourneyStatus.failed
    assert result.exit_reason is not None
    assert result.exit_reason.startswith(
        "check_policy failed: campaign 'cart' version 1 no longer validates"
    )
    async with sessions() as session:
        [entry] = (
            await session.scalars(select(JourneyEntry).where(JourneyEntry.user_id == user))
        ).all()
        sent = (await session.scalars(select(Delivery).where(Delivery.user_id == user))).all()
    assert (entry.status, entry.exit_reason) == ("failed", result.exit_reason)
    assert sent == []  # nothing was tried
