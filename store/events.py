"""store: the event outbox — accepted events, deduplicated by messageId, until routed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.db import dialect_insert
from store.models import Event, now

MAX_ERROR_CHARS = 2000

# Rows per INSERT: well under the bind-parameter limits (SQLite 32766, asyncpg 32767).
_CHUNK = 500


class EventStatus(StrEnum):
    pending = "pending"
    """Accepted, not yet handed to Temporal (or Temporal was unreachable)."""
    routed = "routed"
    ignored = "ignored"
    """No active campaign cares about it."""
    failed = "failed"
    """Routing kept failing with an error that retrying did not fix; `last_error` says why.
    Set back to `pending` to retry it."""


@dataclass
class NewEvent:
    message_id: str
    type: str
    name: str | None
    user_id: str
    timestamp: datetime
    payload: dict[str, Any]


def _chunks(items: Sequence[NewEvent]) -> Iterator[Sequence[NewEvent]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _row(event: NewEvent, received_at: datetime) -> dict[str, Any]:
    return {
        "message_id": event.message_id,
        "type": event.type,
        "name": event.name,
        "user_id": event.user_id,
        "timestamp": event.timestamp,
        "payload": event.payload,
        "received_at": received_at,
        "status": EventStatus.pending.value,
        "attempts": 0,
    }


async def record_events(
    *, session: AsyncSession, events: list[NewEvent]
) -> list[tuple[Event, bool]]:
    """Write events in the given order, skipping messageIds already stored.

    Returns, for each input, its stored row and whether this call wrote it (False for a
    retried request, or a messageId repeated within `events`). ON CONFLICT DO NOTHING makes
    concurrent requests carrying the same messageId agree: one writes, the others see it.
    Ids increase in input order, which the relay relies on to keep a user's events in order.
    """
    first: dict[str, NewEvent] = {}
    for event in events:
        first.setdefault(event.message_id, event)
    received_at = now()
    written: set[str] = set()
    table = Event.__table__
    for chunk in _chunks(list(first.values())):
        statement = (
            dialect_insert(session, table)
            .values([_row(event, received_at) for event in chunk])
            .on_conflict_do_nothing(index_elements=["message_id"])
            .returning(table.c.message_id)
        )
        written.update((await session.execute(statement)).scalars())
    stored = await _by_message_id(session, list(first))
    result: list[tuple[Event, bool]] = []
    for event in events:
        result.append((stored[event.message_id], event.message_id in written))
        written.discard(event.message_id)
    return result


async def _by_message_id(session: AsyncSession, message_ids: list[str]) -> dict[str, Event]:
    stored: dict[str, Event] = {}
    for start in range(0, len(message_ids), _CHUNK):
        statement = (
            select(Event)
            .where(Event.message_id.in_(message_ids[start : start + _CHUNK]))
            .execution_options(populate_existing=True)
        )
        stored.update((e.message_id, e) for e in await session.scalars(statement))
    return stored


async def pending_events(*, session: AsyncSession, limit: int = 500) -> list[Event]:
    """The oldest events not yet routed, in the order they were accepted."""
    statement = (
        select(Event)
        .where(Event.status == EventStatus.pending.value)
        .order_by(Event.id)
        .limit(limit)
    )
    return list((await session.scalars(statement)).all())


async def mark_events(*, session: AsyncSession, event_ids: list[int], status: str) -> None:
    """Take events out of the outbox: `routed` to Temporal, `ignored` by every campaign, or
    `failed` (given up)."""
    final = EventStatus(status)
    if final is EventStatus.pending:
        raise ValueError(
            "mark_events takes 'routed', 'ignored' or 'failed'; events start as pending"
        )
    if not event_ids:
        return
    await session.execute(
        update(Event)
        .where(Event.id.in_(event_ids))
        .values(status=final.value, routed_at=now())
        .execution_options(synchronize_session="fetch")
    )


async def record_attempt_failure(*, session: AsyncSession, event_id: int, error: str) -> None:
    """Count a failed routing attempt; the event stays pending for the relay to retry."""
    await session.execute(
        update(Event)
        .where(Event.id == event_id)
        .values(attempts=Event.attempts + 1, last_error=error[:MAX_ERROR_CHARS])
        .execution_options(synchronize_session="fetch")
    )
