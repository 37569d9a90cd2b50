"""store: deliveries — the row per send that keeps a message from going out twice."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.journey import DeliverRequest, DeliveryStatus, PolicyRequest, Send
from store.caps import release_send
from store.db import dialect_insert
from store.models import Delivery, SandboxMessage, now

MAX_ERROR_CHARS = 2000


async def claim_delivery(*, session: AsyncSession, request: DeliverRequest) -> Delivery:
    """The delivery row for this send, written if new; counts one more attempt.

    Inserting is idempotent (unique key, ON CONFLICT DO NOTHING), so two attempts racing
    each other see one row. The caller commits before calling the provider: the row is the
    record that a send was tried, whatever happens next.
    """
    await _insert_once(session, request, DeliveryStatus.pending)
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
    await _insert_once(session, request, DeliveryStatus.suppressed, error=reason)
    row = await get_delivery(session=session, idempotency_key=request.idempotency_key)
    assert row is not None
    return row


async def _insert_once(
    session: AsyncSession,
    request: Send,
    status: DeliveryStatus,
    *,
    error: str | None = None,
) -> None:
    """The row for this send, unless one exists under its key (ON CONFLICT DO NOTHING)."""
    await session.execute(
        dialect_insert(session, Delivery)
        .values(
            idempotency_key=request.idempotency_key,
            workflow_id=request.workflow_id,
            campaign_id=request.campaign_id,
            campaign_version=request.campaign_version,
            step_id=request.step_id,
            visit=request.visit,
            channel=request.channel,
            user_id=request.user_id,
            status=status.value,
            attempts=0,
            error=error[:MAX_ERROR_CHARS] if error else None,
            created_at=now(),
            updated_at=now(),
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
    )


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
) -> None:
    """Record the outcome. Only a pending row changes: a finished send stays finished."""
    values: dict[str, Any] = {
        "status": status.value,
        "provider_message_id": provider_message_id,
        "provider_response": provider_response,
        "error": error[:MAX_ERROR_CHARS] if error else None,
        "updated_at": now(),
    }
    if status is DeliveryStatus.sent:
        values["sent_at"] = now()
    await session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.status == DeliveryStatus.pending.value)
        .values(**values)
    )


async def fail_delivery(
    *, session: AsyncSession, idempotency_key: str, error: str, release: bool
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
        )
    )
    if not closed.rowcount:  # type: ignore[attr-defined]
        return False
    if release:
        await release_send(session=session, idempotency_key=idempotency_key)
    return True


async def record_delivery_error(*, session: AsyncSession, delivery_id: int, error: str) -> None:
    """A retryable failure: the row stays pending, the error is kept for operators."""
    await session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(error=error[:MAX_ERROR_CHARS], updated_at=now())
    )


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
