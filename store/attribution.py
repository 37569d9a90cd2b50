"""store: conversion attribution — a goal event counts as a campaign's conversion when it
happens within the campaign's attribution window after one of its messages reached the user
(delivered, or opened or clicked, as the campaign says), credited to the last such message.

Called for every goal event as the relay takes it in (so a purchase made after the journey
ended still counts) and when a journey ends on a goal; the unique keys of `conversions`
make the two agree: one conversion per message, and one per goal event and campaign."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, case, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.definition import Attribution
from core.journey import DeliveryStatus
from core.stats import CONVERTED
from store.db import dialect_insert
from store.models import Conversion, Delivery
from store.stats import Bump, bump

EXPOSURE = {
    "delivered": Delivery.delivered_at,
    "opened": Delivery.opened_at,
    "clicked": Delivery.clicked_at,
}


class Attributed(StrEnum):
    now = "now"
    """This call recorded the conversion."""
    already = "already"
    """The goal event, or the message it would be credited to, has a conversion already."""
    none = "none"
    """No message of the campaign within the window before the goal."""


@dataclass(frozen=True)
class Goal:
    """A goal event as attribution needs it."""

    message_id: str
    name: str
    at: datetime
    properties: dict[str, Any]

    @property
    def revenue(self) -> float | None:
        """Segment's `revenue`, else `total` (Order Completed), when it is a number."""
        for key in ("revenue", "total"):
            value = self.properties.get(key)
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                if math.isfinite(value):
                    return float(value)
        return None

    @property
    def currency(self) -> str | None:
        value = self.properties.get("currency")
        return value[:8] if isinstance(value, str) and value else None


async def attribute(
    session: AsyncSession,
    *,
    campaign_id: str,
    attribution: Attribution,
    user_ids: Sequence[str],
    goal: Goal,
) -> Attributed:
    """Credit `goal` to the campaign's last message to this person within the window, in
    the caller's transaction. A held-out send (the holdout) counts from when it would have
    gone, so the holdout's conversions are measured the same way."""
    exposure = EXPOSURE[attribution.after]
    since = goal.at - attribution.window
    sent = and_(
        Delivery.status == DeliveryStatus.sent.value, exposure >= since, exposure <= goal.at
    )
    held = and_(
        Delivery.status == DeliveryStatus.held_out.value,
        Delivery.created_at >= since,
        Delivery.created_at <= goal.at,
    )
    moment = case(
        (Delivery.status == DeliveryStatus.held_out.value, Delivery.created_at), else_=exposure
    )
    found = (
        await session.execute(
            select(
                Delivery.id,
                Delivery.campaign_version,
                Delivery.step_id,
                Delivery.variant,
                Delivery.user_id,
            )
            .where(
                Delivery.campaign_id == campaign_id,
                Delivery.user_id.in_(list(user_ids)),
                or_(sent, held),
            )
            .order_by(moment.desc(), Delivery.id.desc())
            .limit(1)
        )
    ).first()
    if found is None:
        return Attributed.none
    revenue = goal.revenue
    table = Conversion.__table__
    inserted = await session.execute(
        dialect_insert(session, table)
        .values(
            delivery_id=found.id,
            campaign_id=campaign_id,
            campaign_version=found.campaign_version,
            step_id=found.step_id,
            variant=found.variant,
            user_id=found.user_id,
            message_id=goal.message_id,
            goal=goal.name,
            revenue=revenue,
            currency=goal.currency,
            at=goal.at,
        )
        .on_conflict_do_nothing()
        .returning(table.c.id)
    )
    if inserted.first() is None:
        return Attributed.already
    await bump(
        session,
        Bump(
            campaign_id=campaign_id,
            campaign_version=found.campaign_version,
            step_id=found.step_id,
            variant=found.variant,
            metric=CONVERTED,
            at=goal.at,
            amount=revenue or 0.0,
        ),
    )
    return Attributed.now
