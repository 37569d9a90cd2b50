"""store: frequency caps — the send ledger and the one atomic "count, then reserve" per user."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.policy import CapCheck
from store.db import dialect_insert
from store.models import SendReservation

CAP_LOCK_NAMESPACE = 0x4E43  # "NC": the first key of pg_advisory_xact_lock(int, int)
"""Two-key advisory locks live apart from the one-key lock the migrations take."""


@dataclass(frozen=True)
class Reservation:
    """The ledger's answer: `hit` is the cap that said no (None: reserved, may send)."""

    hit: CapCheck | None
    existing: bool = False
    """True when this idempotency key had reserved before (a retried check)."""

    @property
    def allowed(self) -> bool:
        return self.hit is None


async def _serialize_user(session: AsyncSession, user_id: str) -> None:
    """Make concurrent reservations for one user take turns (PostgreSQL).

    On SQLite the INSERT that `reserve_send` starts with is the lock: it takes the
    database's write lock, which a second writer waits for (busy timeout), and its snapshot
    then starts after the first writer's commit.
    """
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:ns, hashtext(:user_id))"),
            {"ns": CAP_LOCK_NAMESPACE, "user_id": user_id},
        )


async def reserve_send(
    *,
    session: AsyncSession,
    idempotency_key: str,
    user_id: str,
    channel: str,
    campaign_id: str,
    group: str,
    priority: str,
    caps: Sequence[CapCheck],
    at: datetime,
    person: Sequence[str] = (),
) -> Reservation:
    """Reserve a send against every cap, or name the first cap it would exceed (the slots
    its priority may fill: `CapCheck.fill`).

    Call it first thing in a transaction, then commit: the reservation is written before
    counting (on SQLite that write is what serialises users; on PostgreSQL an advisory
    lock per user does), counted along with the rest, and deleted again when a cap is
    exceeded — so two journeys checking the same user at the same instant cannot both
    take the last slot. A key that reserved before is allowed again (a retried check).

    `person`: every id of the person `user_id` is (store.identities.person_ids, the
    canonical one first), so caps count the person once, whichever id each journey runs
    under; the lock is the canonical id's. Empty: `user_id` alone.
    """
    ids = list(person) or [user_id]
    await _serialize_user(session, ids[0])
    inserted = await session.execute(
        dialect_insert(session, SendReservation.__table__)
        .values(
            idempotency_key=idempotency_key,
            user_id=user_id,
            channel=channel,
            campaign_id=campaign_id,
            subscription_group=group,
            priority=priority,
            at=at,
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(SendReservation.__table__.c.id)
    )
    reservation_id = inserted.scalar_one_or_none()
    if reservation_id is None:
        return Reservation(hit=None, existing=True)
    for cap in caps:
        if await count_sends(session=session, user_id=ids, cap=cap, at=at) > cap.fill:
            await session.execute(
                delete(SendReservation).where(SendReservation.id == reservation_id)
            )
            return Reservation(hit=cap)
    return Reservation(hit=None)


async def count_sends(
    *, session: AsyncSession, user_id: str | Sequence[str], cap: CapCheck, at: datetime
) -> int:
    """The user's reserved sends that `cap` counts, in the window ending at `at`; with
    several ids (a person's), theirs together."""
    ids = [user_id] if isinstance(user_id, str) else list(user_id)
    stmt = select(func.count()).where(
        SendReservation.user_id.in_(ids), SendReservation.at > at - cap.window
    )
    if cap.group is not None:
        stmt = stmt.where(SendReservation.subscription_group == cap.group)
    if cap.channel is not None:
        stmt = stmt.where(SendReservation.channel == cap.channel)
    if cap.campaign_id is not None:
        stmt = stmt.where(SendReservation.campaign_id == cap.campaign_id)
    return int((await session.execute(stmt)).scalar_one())


async def release_send(*, session: AsyncSession, idempotency_key: str) -> bool:
    """Give a reserved slot back (a send that will never happen); True if there was one."""
    result = await session.execute(
        delete(SendReservation).where(SendReservation.idempotency_key == idempotency_key)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def prune_ledger(
    *, session: AsyncSession, before: datetime, keep: Mapping[str, datetime]
) -> int:
    """Forget reservations no cap counts any more: those older than `before`, except that a
    campaign named in `keep` keeps its own since the instant given there (its caps look
    further back). Returns how many were deleted."""
    everyone = delete(SendReservation).where(SendReservation.at < before)
    if keep:
        everyone = everyone.where(SendReservation.campaign_id.not_in(list(keep)))
    deleted = int((await session.execute(everyone)).rowcount)  # type: ignore[attr-defined]
    for campaign_id, since in keep.items():
        result = await session.execute(
            delete(SendReservation).where(
                SendReservation.campaign_id == campaign_id, SendReservation.at < since
            )
        )
        deleted += int(result.rowcount)  # type: ignore[attr-defined]
    return deleted
