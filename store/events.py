"""store: the event outbox — accepted events, deduplicated by messageId, until routed.

Several relays (one per API process) drain one outbox. Each claims the events it routes
(`claim_events`), so every event is routed by one relay at a time, and settles them as soon
as they are routed, a few to a transaction (`settle_events`), so a crash repeats at most the
events in flight. A relay claims in two lanes: the lane's events (by name: those that only
reach running journeys, a goal or an exit) and all the others, oldest first; a user's events
are claimed in order whichever lane they are in.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import case, exists, func, literal, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from store.db import dialect_insert, lock_users
from store.models import Event, now

MAX_ERROR_CHARS = 2000

# Rows per INSERT: well under the bind-parameter limits (SQLite 32766, asyncpg 32767).
_CHUNK = 500

OUTBOX_LOCK_NAMESPACE = 0x4E4F  # "NO": the first key of pg_advisory_xact_lock(int, int)
"""Per-user ingestion locks, apart from the caps' namespace and the migrations' lock."""

LAPSED = ("relay ", " claimed the event and never settled it (it died, stalled or failed)")
"""How `last_error` reads, around that relay's id, when a claim that was never settled is
taken over."""


class EventStatus(StrEnum):
    pending = "pending"
    """Accepted, not yet handed to Temporal (or Temporal was unreachable)."""
    routed = "routed"
    """Temporal was told: a journey started, or a running journey received the signal."""
    ignored = "ignored"
    """Nothing needed telling: no campaign cares about it, or none whose conditions held,
    and no running journey heard it."""
    failed = "failed"
    """Routing kept failing with an error that retrying did not fix (or one that retrying
    cannot fix); `last_error` says why. Set back to `pending` to retry it, and `failures`
    to 0 to give it every attempt again (else the next failure gives up at once)."""


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
        "failures": 0,
    }


async def record_events(
    *, session: AsyncSession, events: list[NewEvent]
) -> list[tuple[Event, bool]]:
    """Write events in the given order, skipping messageIds already stored.

    Returns, for each input, its stored row and whether this call wrote it (False for a
    retried request, or a messageId repeated within `events`). ON CONFLICT DO NOTHING makes
    concurrent requests carrying the same messageId agree: one writes, the others see it.

    The relay routes a user's events in id order, so a user's ids must become visible in
    the order they are assigned. Within one call they increase in input order. Across
    concurrent calls, PostgreSQL assigns an id at insert but shows the row at commit: two
    requests for one user could commit in the other order, and the relay would route the
    later id before the earlier one exists for it. So the calls take turns per user (see
    `_serialize_users`) until they commit: the second draws its ids after the first's are
    visible, and ids are drawn increasing. The other way out, ordering the relay by commit
    rather than by id, needs what PostgreSQL keeps only with `track_commit_timestamp` on;
    the lock costs nothing but the rare overlap of two requests for one user. On SQLite
    the INSERT takes the database's write lock until commit, which serialises every writer
    already.
    """
    first: dict[str, NewEvent] = {}
    for event in events:
        first.setdefault(event.message_id, event)
    await _serialize_users(session, {event.user_id for event in first.values()})
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


async def _serialize_users(session: AsyncSession, user_ids: set[str]) -> None:
    """Make concurrent ingestion transactions of the same user take turns (PostgreSQL).

    One transaction-scoped advisory lock per user, held until commit, so a second request
    for the user inserts (and draws its ids) only after the first one's rows are visible.
    One statement takes them all, in the order of their keys: two batches naming the same
    users in different orders wait for each other instead of deadlocking. Two users whose
    keys collide merely take turns too.
    """
    await lock_users(session, OUTBOX_LOCK_NAMESPACE, user_ids)


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
    """The oldest events not yet routed, in the order they were accepted. A plain read,
    for looking: routing takes its events with `claim_events`."""
    statement = (
        select(Event)
        .where(Event.status == EventStatus.pending.value)
        .order_by(Event.id)
        .limit(limit)
    )
    return list((await session.scalars(statement)).all())


def _claimable(relay_id: str, at: datetime) -> ColumnElement[bool]:
    """Pending and claimed by nobody alive: never claimed, released, this relay's own
    (left by a pass that failed), or a claim that lapsed."""
    return (Event.status == EventStatus.pending.value) & or_(
        Event.claimed_by.is_(None), Event.claimed_by == relay_id, Event.claimed_until < at
    )


LANE_TYPE = "track"
"""The lane takes `track` events only: internal events start journeys (segments, traits,
dates), and the rest never reach one."""


def _in_lane(names: Collection[str]) -> ColumnElement[bool]:
    return (Event.type == LANE_TYPE) & Event.name.in_(sorted(names))


def _older_pending(candidate_id: Any, candidate_user: Any) -> Any:
    older = aliased(Event)
    return exists().where(
        older.user_id == candidate_user,
        older.status == EventStatus.pending.value,
        older.id < candidate_id,
    )


@dataclass
class LaneScan:
    """What a claim in the lane would find, by a read: no write lock for nothing."""

    mark: int
    """The highest event id when the scan began: the next one need look only past it."""
    ready: list[int] = field(default_factory=list)
    """Pending events of the lane that are their users' oldest pending ones: a claim takes
    these."""
    waiting: list[int] = field(default_factory=list)
    """Pending events of the lane behind an earlier pending event of their user."""


async def scan_lane(
    *,
    session: AsyncSession,
    relay_id: str,
    lane_names: Collection[str],
    after_id: int = 0,
    among: Collection[int] = (),
) -> LaneScan:
    """The lane's claimable pending events with ids past `after_id` (0: all of them) or
    among `among` (those that waited before). Past a mark the read walks the new rows only
    (the index on status and id), so a relay woken by every ingestion request does not
    read the whole backlog each time."""
    mark = await session.scalar(select(func.max(Event.id))) or 0
    if not lane_names:
        return LaneScan(mark)
    older = _older_pending(Event.id, Event.user_id)
    read = select(Event.id, older.label("waits")).where(
        _claimable(relay_id, now()), _in_lane(lane_names), Event.id <= mark
    )
    rows = list((await session.execute(read.where(Event.id > after_id))).all())
    earlier = sorted(i for i in among if i <= after_id)
    if earlier:
        rows += (await session.execute(read.where(Event.id.in_(earlier)))).all()
    scan = LaneScan(mark)
    for event_id, waits in sorted(rows):
        (scan.waiting if waits else scan.ready).append(event_id)
    return scan


async def claim_events(
    *,
    session: AsyncSession,
    relay_id: str,
    lease: timedelta,
    limit: int = 500,
    lane_names: Collection[str] = (),
    lane: bool = False,
    from_id: int = 0,
) -> list[Event]:
    """Claim the oldest pending events nobody else holds, for `lease`; commit right after.

    `lane_names` name the `track` events of the lane (those that only reach running
    journeys: goals, exits, what a `wait_for` waits for). With `lane`, only those are
    claimed; without, all but those. Each lane is claimed by a relay id of its own, so
    that neither takes the other's claims for its own. `from_id`: none older than this
    (what a lane scan found ready), so that the claim need not walk the whole backlog.

    Returns them in id order. A user's events are claimed only as a prefix of that user's
    pending events: an event whose user has an older pending event this claim does not
    take — held by another relay's live claim, or locked by a claim being made right now,
    or in the other lane — is left, so a user's events are never routed by two relays (or
    two lanes) at once, nor out of order.

    One statement. On PostgreSQL the candidates are locked FOR UPDATE SKIP LOCKED, so
    relays claiming at the same instant take different rows instead of waiting for each
    other; a row they skip is still pending in this statement's snapshot, which is what
    keeps the skipped user's later events out. On SQLite the UPDATE holds the database's
    write lock from its first read, so claims simply take turns (FOR UPDATE is not SQL
    there, and SQLAlchemy leaves it out).

    A claim taken over — another relay's that lapsed, or this relay's own left by a pass
    that failed — counts as a failed attempt: that relay may have told Temporal before it
    stopped, and the router wants to know (`EventRouter._heard`).
    """
    if lane and not lane_names:
        return []
    at = now()
    if not lane_names:
        which: ColumnElement[bool] = true()
    elif lane:
        which = _in_lane(lane_names)
    else:
        which = or_(Event.name.is_(None), ~_in_lane(lane_names))
    candidates = (
        select(Event.id, Event.user_id)
        .where(_claimable(relay_id, at), which, Event.id >= from_id)
        .order_by(Event.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("candidates")
    )
    older = aliased(Event)
    waits = exists().where(
        older.user_id == candidates.c.user_id,
        older.status == EventStatus.pending.value,
        older.id < candidates.c.id,
        older.id.not_in(select(candidates.c.id).correlate(None)),
    )
    taken_over = Event.claimed_by.is_not(None)
    lapsed = literal(LAPSED[0]) + Event.claimed_by + literal(LAPSED[1])
    statement = (
        update(Event)
        .where(Event.id.in_(select(candidates.c.id).where(~waits)))
        .values(
            claimed_by=relay_id,
            claimed_until=at + lease,
            attempts=Event.attempts + case((taken_over, 1), else_=0),
            last_error=case((taken_over, lapsed), else_=Event.last_error),
        )
        .returning(Event)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    claimed = list((await session.scalars(statement)).all())
    return sorted(claimed, key=lambda event: event.id)


async def extend_claims(*, session: AsyncSession, relay_id: str, lease: timedelta) -> int:
    """Renew this relay's claims on the events it still has to route; how many."""
    result = await session.execute(
        update(Event)
        .where(Event.claimed_by == relay_id, Event.status == EventStatus.pending.value)
        .values(claimed_until=now() + lease)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result)


async def release_claims(*, session: AsyncSession, relay_id: str) -> int:
    """Give back this relay's claims on events it leaves pending (held behind a failure,
    Temporal out of reach, the pass stopped): another relay may take them at once."""
    result = await session.execute(
        update(Event)
        .where(Event.claimed_by == relay_id, Event.status == EventStatus.pending.value)
        .values(claimed_by=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result)


async def settle_event(
    *,
    session: AsyncSession,
    event_id: int,
    relay_id: str,
    status: EventStatus,
    error: str | None = None,
) -> bool:
    """Take one claimed event out of the outbox: `routed`, `ignored` or `failed` (with the
    error). False when this relay no longer held it — its lease lapsed and another relay
    took it over — and the row was left to that relay: a final label is never
    overwritten."""
    if status is EventStatus.pending:
        raise ValueError("settle_event takes 'routed', 'ignored' or 'failed'")
    values: dict[str, Any] = {
        "status": status.value,
        "routed_at": now(),
        "claimed_by": None,
        "claimed_until": None,
    }
    if error is not None:
        values["last_error"] = error[:MAX_ERROR_CHARS]
    result = await session.execute(
        update(Event)
        .where(
            Event.id == event_id,
            Event.claimed_by == relay_id,
            Event.status == EventStatus.pending.value,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


async def settle_events(
    *,
    session: AsyncSession,
    event_ids: Collection[int],
    relay_id: str,
    status: EventStatus,
) -> set[int]:
    """Settle claimed events, several at once, as `settle_event` does one: the ids this
    relay still held and settled; the others were taken over (their leases lapsed) and
    are left to the relay that holds them now."""
    if status is EventStatus.pending:
        raise ValueError("settle_events takes 'routed', 'ignored' or 'failed'")
    if not event_ids:
        return set()
    result = await session.execute(
        update(Event)
        .where(
            Event.id.in_(sorted(event_ids)),
            Event.claimed_by == relay_id,
            Event.status == EventStatus.pending.value,
        )
        .values(status=status.value, routed_at=now(), claimed_by=None, claimed_until=None)
        .returning(Event.id)
        .execution_options(synchronize_session=False)
    )
    return set(result.scalars())


async def mark_events(*, session: AsyncSession, event_ids: list[int], status: str) -> None:
    """Take events out of the outbox whoever holds them: `routed` to Temporal, `ignored`
    by every campaign, or `failed` (given up). Only pending events change, so a final
    label is never overwritten. (The relay settles its claimed events with `settle_events`,
    which leaves those another relay has taken over.)"""
    final = EventStatus(status)
    if final is EventStatus.pending:
        raise ValueError(
            "mark_events takes 'routed', 'ignored' or 'failed'; events start as pending"
        )
    if not event_ids:
        return
    await session.execute(
        update(Event)
        .where(Event.id.in_(event_ids), Event.status == EventStatus.pending.value)
        .values(status=final.value, routed_at=now(), claimed_by=None, claimed_until=None)
        .execution_options(synchronize_session="fetch")
    )


async def record_attempt_failure(
    *, session: AsyncSession, event_id: int, error: str, counts: bool = False
) -> int:
    """Count a failed routing attempt; the event stays pending for the relay to retry.

    `counts`: the error is one waiting does not fix, so it also counts towards giving up
    (`failures`, kept in the row so that every relay sees one count). Returns the
    event's failures so far.
    """
    result = await session.execute(
        update(Event)
        .where(Event.id == event_id)
        .values(
            attempts=Event.attempts + 1,
            failures=Event.failures + (1 if counts else 0),
            last_error=error[:MAX_ERROR_CHARS],
        )
        .returning(Event.failures)
        .execution_options(synchronize_session=False)
    )
    return result.scalar_one()


def _rowcount(result: Any) -> int:
    count: int = result.rowcount
    return count
