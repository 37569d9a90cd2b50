"""store: deliveries — the row per send that keeps a message from going out twice."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.engagement import EngagementKind
from core.journey import DeliverRequest, DeliveryStatus, PolicyRequest, Send
from core.stats import FAILED, HELD_OUT, suppression_metric
from store.caps import release_send
from store.db import dialect_insert
from store.models import Delivery, SandboxMessage, now
from store.stats import Bump, bump

MAX_ERROR_CHARS = 2000


async def claim_delivery(*, session: AsyncSession, request: DeliverRequest) -> Delivery:
    """The delivery row for this send, written if new; counts one more attempt.

    Inserting is idempotent (unique key, ON CONFLICT DO NOTHING), so two attempts racing
    each other see one row. The caller commits before calling the provider: the row is the
    record that a send was tried, whatever happens next. A first attempt is one statement.
    """
    written = await session.scalars(
        dialect_insert(session, Delivery)
        .values(**_row(request, DeliveryStatus.pending, attempts=1))
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(Delivery),
        execution_options={"populate_existing": True},
    )
    row = written.first()
    if row is not None:
        return row
    await session.execute(
        update(Delivery)
        .where(
            Delivery.idempotency_key == request.idempotency_key,
            Delivery.status == DeliveryStatus.pending.value,
        )
        .values(attempts=Delivery.attempts + 1, updated_at=now())
    )
    row = await get_delivery(session=session, idempotency_key=request.idempotency_key)
    assert row is not None
    return row


async def record_suppressed(
    *, session: AsyncSession, request: PolicyRequest, reason: str
) -> Delivery:
    """Record a send the policy stopped: a `suppressed` row with its reason, keyed by the
    send's idempotency key, so stats and operators see it and `deliver` never sends it.
    A row that exists already (a retried check) is left as it is."""
    if await _insert_once(session, request, DeliveryStatus.suppressed, error=reason):
        await bump(session, _count(request, suppression_metric(reason)))
    row = await get_delivery(session=session, idempotency_key=request.idempotency_key)
    assert row is not None
    return row


async def record_held_out(*, session: AsyncSession, send: Send, at: datetime) -> Delivery:
    """Record a send the holdout is not sent: a `held_out` row at the moment it would have
    gone, which the campaign's attribution window counts from, as for a delivered one."""
    if await _insert_once(session, send, DeliveryStatus.held_out, at=at):
        await bump(session, _count(send, HELD_OUT, at=at))
    row = await get_delivery(session=session, idempotency_key=send.idempotency_key)
    assert row is not None
    return row


def _count(send: Send | Delivery, metric: str, *, at: datetime | None = None) -> Bump:
    return Bump(
        campaign_id=send.campaign_id,
        campaign_version=send.campaign_version,
        step_id=send.step_id,
        variant=send.variant,
        metric=metric,
        at=at or now(),
    )


async def _insert_once(
    session: AsyncSession,
    request: Send,
    status: DeliveryStatus,
    *,
    error: str | None = None,
    at: datetime | None = None,
) -> bool:
    """The row for this send, unless one exists under its key (ON CONFLICT DO NOTHING);
    True when this call wrote it."""
    table = Delivery.__table__
    result = await session.execute(
        dialect_insert(session, table)
        .values(**_row(request, status, error=error, at=at))
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(table.c.id)
    )
    return result.first() is not None


def _row(
    request: Send,
    status: DeliveryStatus,
    *,
    attempts: int = 0,
    error: str | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    at = at or now()
    return {
        "idempotency_key": request.idempotency_key,
        "workflow_id": request.workflow_id,
        "campaign_id": request.campaign_id,
        "campaign_version": request.campaign_version,
        "step_id": request.step_id,
        "visit": request.visit,
        "channel": request.channel,
        "user_id": request.user_id,
        "status": status.value,
        "attempts": attempts,
        "error": error[:MAX_ERROR_CHARS] if error else None,
        "variant": request.variant,
        "opens": 0,
        "clicks": 0,
        "created_at": at,
        "updated_at": at,
    }


async def get_delivery(*, session: AsyncSession, idempotency_key: str) -> Delivery | None:
    result = await session.execute(
        select(Delivery)
        .where(Delivery.idempotency_key == idempotency_key)
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


async def complete_delivery(
    *,
    session: AsyncSession,
    delivery_id: int,
    status: DeliveryStatus,
    provider_message_id: str | None = None,
    provider_response: dict[str, Any] | None = None,
    error: str | None = None,
    delivered: bool = False,
) -> None:
    """Record the outcome. Only a pending row changes: a finished send stays finished, and
    the stats count the change once. `delivered`: the provider reports nothing after
    accepting (no status webhook), so accepted counts as delivered."""
    at = now()
    values: dict[str, Any] = {
        "status": status.value,
        "provider_message_id": provider_message_id,
        "provider_response": provider_response,
        "error": error[:MAX_ERROR_CHARS] if error else None,
        "updated_at": at,
    }
    if status is DeliveryStatus.sent:
        values["sent_at"] = at
        if delivered:
            values["delivered_at"] = at
    changed = await session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.status == DeliveryStatus.pending.value)
        .values(**values)
        .returning(
            Delivery.campaign_id,
            Delivery.campaign_version,
            Delivery.step_id,
            Delivery.variant,
        )
    )
    row = changed.first()
    if row is None:
        return
    metrics = [status.value]
    if status is DeliveryStatus.sent and delivered:
        metrics.append(EngagementKind.delivered.value)
    await bump(session, *(_count(row, metric, at=at) for metric in metrics))


async def fail_delivery(
    *,
    session: AsyncSession,
    idempotency_key: str,
    error: str,
    release: bool,
    provider_response: dict[str, Any] | None = None,
) -> bool:
    """A pending row becomes `failed` with the error; a row already finished (sent,
    failed) stays as it is. True when a pending row was closed.

    `release` gives the slot the send policy reserved in the send ledger back, so a message
    that never went out does not count against the user's frequency caps: only when it is
    certain that nothing went out (the provider's final no, a message that could not be
    built). A send given up after retries may have reached the user (the provider accepted,
    the answer was lost), so it keeps its slot."""
    closed = await session.execute(
        update(Delivery)
        .where(
            Delivery.idempotency_key == idempotency_key,
            Delivery.status == DeliveryStatus.pending.value,
        )
        .values(
            status=DeliveryStatus.failed.value,
            error=error[:MAX_ERROR_CHARS],
            updated_at=now(),
            **({"provider_response": provider_response} if provider_response else {}),
        )
        .returning(
            Delivery.campaign_id,
            Delivery.campaign_version,
            Delivery.step_id,
            Delivery.variant,
        )
    )
    row = closed.first()
    if row is None:
        return False
    await bump(session, _count(row, FAILED))
    if release:
        await release_send(session=session, idempotency_key=idempotency_key)
    return True


async def record_delivery_error(
    *,
    session: AsyncSession,
    delivery_id: int,
    error: str,
    provider_response: dict[str, Any] | None = None,
) -> None:
    """A retryable failure: the row stays pending, the attempt's error (and what the
    provider answered, when it answered) is kept for operators until the next attempt."""
    values: dict[str, Any] = {"error": error[:MAX_ERROR_CHARS], "updated_at": now()}
    if provider_response is not None:
        values["provider_response"] = provider_response
    await session.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))


async def store_sandbox_message(
    *,
    session: AsyncSession,
    delivery_id: int,
    user_id: str,
    subject: str | None,
    body: str,
    data: dict[str, Any] | None,
) -> int:
    """Keep a sandbox 'send'; idempotent per delivery. Returns the message's id."""
    await session.execute(
        dialect_insert(session, SandboxMessage)
        .values(
            delivery_id=delivery_id,
            user_id=user_id,
            subject=subject,
            body=body,
            data=data,
            created_at=now(),
        )
        .on_conflict_do_nothing(index_elements=["delivery_id"])
    )
    result = await session.execute(
        select(SandboxMessage.id).where(SandboxMessage.delivery_id == delivery_id)
    )
    return int(result.scalar_one())


async def list_sandbox_messages(
    *, session: AsyncSession, user_id: str | None = None, limit: int = 100
) -> list[SandboxMessage]:
    stmt = select(SandboxMessage).order_by(SandboxMessage.id.desc()).limit(limit)
    if user_id is not None:
        stmt = stmt.where(SandboxMessage.user_id == user_id)
    return list((await session.execute(stmt)).scalars())


async def count_deliveries(*, session: AsyncSession, campaign_id: str) -> dict[str, int]:
    result = await session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.campaign_id == campaign_id)
        .group_by(Delivery.status)
    )
    return {status: int(n) for status, n in result.all()}


# -- operator reads --------------------------------------------------------------------------


async def delivery_by_id(*, session: AsyncSession, delivery_id: int) -> Delivery | None:
    return await session.get(Delivery, delivery_id, populate_existing=True)


async def journey_deliveries(
    *, session: AsyncSession, workflow_id: str, since: datetime | None = None, limit: int = 50
) -> list[Delivery]:
    """A journey's sends, the latest first: those under its workflow id, from `since` (the
    journey's entry, so an earlier journey of the same user and campaign is left out)."""
    statement = (
        select(Delivery)
        .where(Delivery.workflow_id == workflow_id)
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(limit)
    )
    if since is not None:
        statement = statement.where(Delivery.created_at >= since)
    return list((await session.scalars(statement)).all())


MAX_RETRIES = 20
"""Operator retries of one send: more than this is not a retry, it is an outage."""


def retry_key(idempotency_key: str, retry: int) -> str:
    """The idempotency key of an operator's `retry`-th new try of a failed send: the same
    for every attempt (and every request) of that retry, another for the next."""
    raw = f"{idempotency_key}\x1fretry\x1f{retry}"
    return "nudge_" + hashlib.sha256(raw.encode()).hexdigest()[:40]


async def retries_of(*, session: AsyncSession, delivery: Delivery) -> list[Delivery]:
    """The rows of the operator retries of `delivery` so far, first to last."""
    keys = [retry_key(delivery.idempotency_key, n) for n in range(1, MAX_RETRIES + 1)]
    rows = {
        row.idempotency_key: row
        for row in await session.scalars(
            select(Delivery)
            .where(Delivery.idempotency_key.in_(keys))
            .execution_options(populate_existing=True)
        )
    }
    found: list[Delivery] = []
    for key in keys:
        if key not in rows:
            break
        found.append(rows[key])
    return found


async def original_of(*, session: AsyncSession, delivery: Delivery) -> Delivery:
    """The send a retry row retried (the row itself when it is no retry): a retry is made
    of the same journey, step and visit as its original, under a key derived from it."""
    candidates = await session.scalars(
        select(Delivery).where(
            Delivery.workflow_id == delivery.workflow_id,
            Delivery.step_id == delivery.step_id,
            Delivery.visit == delivery.visit,
            Delivery.id != delivery.id,
        )
    )
    for candidate in candidates:
        keys = {retry_key(candidate.idempotency_key, n) for n in range(1, MAX_RETRIES + 1)}
        if delivery.idempotency_key in keys:
            return candidate
    return delivery
