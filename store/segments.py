"""store: segments — saved audiences, their members kept current as events arrive and as
time passes, and the build that evaluates existing users after a segment changes.

How membership stays current without a scan per event:

- `update_for_event` takes one stored event in: a `track` adds 1 to the per-day counter
  of each segment criterion it matches (`event_counters`: user, criterion, UTC day);
  then only the user's memberships that the event can change are evaluated again (the
  segments counting its name, those reading the traits it changed, and those never
  evaluated for the user or evaluated on an older version), from a few counter rows and
  the profile. A membership that flips writes an internal event (`Segment Entered` /
  `Segment Exited`) to the outbox in the same transaction; the relay routes it later.
- Each membership row keeps `recheck_at`, the instant a counted day leaves a window and
  the answer may change by itself; `recheck_due` (called by the periodic clock) takes
  only the rows that are due, through their index.
- A new or changed segment is `building`: `build_step` walks the existing users in id
  order (users with a profile or an event), backfills the segment's counters from the stored
  events and evaluates each user, then marks the segment `ready`.

The counting rule, which keeps counters from counting an event twice or never:
`update_for_event` runs in one transaction that first flips `events.counted` from false
to true (so an event is taken in once, however often the relay repeats it), holds a
per-user lock (PostgreSQL; SQLite's single writer does the same), and reads the set of
segments inside that lock. `build_step` holds the same per-user locks and *replaces* the
user's counters for the segment's criteria (from the window's first day on) with the
number of stored events that match and that the relay has either taken in (`counted`) or
settled without taking in (status not `pending`: routed while no segment was known). A
pending event not yet taken in is left to `update_for_event`, which will add it. So every
matching event is in the counter exactly once, whichever of the two comes first.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, union, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.conditions import evaluate_all
from core.events import SEGMENT_ENTERED, SEGMENT_EXITED
from core.routing import INTERNAL_TYPE, ROUTED_TYPE
from core.segments import (
    EventCriterion,
    SegmentDefinition,
    affected_by,
    counted_criteria,
    day_start,
    definition_hash,
    evaluate_segment,
    window_start,
)
from store.db import dialect_insert, lock_users
from store.events import EventStatus, NewEvent, record_events
from store.identities import canonical_user
from store.models import (
    Event,
    EventCounter,
    Identity,
    Profile,
    Segment,
    SegmentMembership,
)

SEGMENT_LOCK_NAMESPACE = 0x5347  # "SG": pg_advisory_xact_lock(ns, hashtext(user_id))
"""Per-user locks held while a user's counters and memberships change (PostgreSQL)."""

IDENTIFY_TYPE = "identify"


class SegmentNotFound(LookupError):
    def __init__(self, segment_id: str):
        super().__init__(f"no segment {segment_id!r}")
        self.segment_id = segment_id


@dataclass(frozen=True)
class LiveSegment:
    """A segment as membership updates use it: its current version, parsed."""

    id: str
    name: str
    version: int
    status: str
    build_cursor: str | None
    definition: SegmentDefinition
    created_at: datetime | None = None
    """When the segment was created: a segment deleted and created again under the same id
    numbers its transitions anew, and its internal events must not repeat the old ids."""

    def evaluates(self, user_id: str) -> bool:
        """Whether membership of this user is kept now: always once the segment is
        ready; while it builds, only for users the build has passed (the others get
        their counters and first evaluation from the build)."""
        if self.status == "ready":
            return True
        return self.build_cursor is not None and user_id <= self.build_cursor


@dataclass(frozen=True)
class Transition:
    """A user entered or left a segment; `message_id` names the internal event written."""

    segment_id: str
    user_id: str
    entered: bool
    changes: int
    message_id: str


@dataclass(frozen=True)
class BuildProgress:
    """What one `build_step` did: the segment it worked on (None: nothing to build), how
    many users it evaluated, whether that segment is now ready, and where it stands."""

    segment_id: str | None
    evaluated: int
    done: bool
    cursor: str | None = None


# -- definitions ---------------------------------------------------------------------------


def definition_of(row: Segment) -> SegmentDefinition:
    return SegmentDefinition.model_validate(row.definition)


def live(row: Segment) -> LiveSegment:
    return LiveSegment(
        id=row.id,
        name=row.name,
        version=row.version,
        status=row.status,
        build_cursor=row.build_cursor,
        definition=definition_of(row),
        created_at=row.created_at,
    )


async def apply_segment(
    *, session: AsyncSession, definition: SegmentDefinition
) -> tuple[Segment, bool]:
    """Create the segment or, when its definition changed, make the next version (which
    builds again from the first user). The bool says whether anything was written."""
    digest = definition_hash(definition)
    stored = definition.model_dump(mode="json", exclude_defaults=True)
    table = Segment.__table__
    created = await session.execute(
        dialect_insert(session, table)
        .values(
            id=definition.id,
            name=definition.name,
            version=1,
            definition=stored,
            definition_hash=digest,
            status="building",
            build_cursor=None,
            created_at=datetime.now(UTC),
            updated_at=datetime.now(UTC),
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(table.c.id)
    )
    is_new = created.first() is not None
    row = await session.get(Segment, definition.id, with_for_update=True, populate_existing=True)
    if row is None:  # pragma: no cover - inserted or present a moment ago
        raise SegmentNotFound(definition.id)
    if is_new:
        return row, True
    if row.definition_hash == digest:
        return row, False
    row.version += 1
    row.name = definition.name
    row.definition = stored
    row.definition_hash = digest
    row.status = "building"
    row.build_cursor = None
    await session.flush()
    return row, True


async def list_segments(*, session: AsyncSession) -> list[Segment]:
    return list((await session.scalars(select(Segment).order_by(Segment.id))).all())


async def get_segment(*, session: AsyncSession, segment_id: str) -> Segment | None:
    return await session.get(Segment, segment_id)


async def delete_segment(*, session: AsyncSession, segment_id: str) -> bool:
    """Forget a segment and its memberships (counters stay: other segments may share
    them, and they are per user and day, bounded by the events)."""
    await session.execute(
        delete(SegmentMembership).where(SegmentMembership.segment_id == segment_id)
    )
    result = await session.execute(delete(Segment).where(Segment.id == segment_id))
    return bool(getattr(result, "rowcount", 0))


async def live_segments(*, session: AsyncSession) -> list[LiveSegment]:
    return [live(row) for row in await list_segments(session=session)]


async def segments_mark(*, session: AsyncSession) -> tuple[int, datetime | None]:
    """A cheap 'did segments change?' check: how many there are, and the latest change."""
    row = (await session.execute(select(func.count(), func.max(Segment.updated_at)))).one()
    return int(row[0]), row[1]


async def count_members(*, session: AsyncSession, segment_id: str) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(SegmentMembership)
        .where(SegmentMembership.segment_id == segment_id, SegmentMembership.member.is_(True))
    )
    return int(count or 0)


async def list_members(
    *, session: AsyncSession, segment_id: str, after: str | None = None, limit: int = 100
) -> list[str]:
    """Members' user ids in id order, after `after` (keyset paging)."""
    statement = select(SegmentMembership.user_id).where(
        SegmentMembership.segment_id == segment_id, SegmentMembership.member.is_(True)
    )
    if after is not None:
        statement = statement.where(SegmentMembership.user_id > after)
    statement = statement.order_by(SegmentMembership.user_id).limit(limit)
    return list((await session.scalars(statement)).all())


async def is_member(*, session: AsyncSession, segment_id: str, user_id: str) -> bool:
    member = await session.scalar(
        select(SegmentMembership.member).where(
            SegmentMembership.segment_id == segment_id, SegmentMembership.user_id == user_id
        )
    )
    return bool(member)


# -- identity and locks --------------------------------------------------------------------


async def _lock_users(session: AsyncSession, user_ids: Iterable[str]) -> None:
    """Serialise the work on these users' counters and memberships until commit."""
    await lock_users(session, SEGMENT_LOCK_NAMESPACE, user_ids)


async def _current(session: AsyncSession, cached: Sequence[LiveSegment]) -> list[LiveSegment]:
    """The segments as they are in this transaction: the cached definitions, with status
    and cursor read now, and any version the cache has not seen read from the store."""
    rows = (
        await session.execute(
            select(Segment.id, Segment.version, Segment.status, Segment.build_cursor)
        )
    ).all()
    known = {(s.id, s.version): s for s in cached}
    missing = [r.id for r in rows if (r.id, r.version) not in known]
    fresh: dict[str, LiveSegment] = {}
    if missing:
        for row in await session.scalars(select(Segment).where(Segment.id.in_(missing))):
            fresh[row.id] = live(row)
    out = []
    for r in rows:
        base = known.get((r.id, r.version)) or fresh.get(r.id)
        if base is None or base.version != r.version:
            continue  # changed again since the read above: the next event sees it
        out.append(
            LiveSegment(
                base.id,
                base.name,
                r.version,
                r.status,
                r.build_cursor,
                base.definition,
                base.created_at,
            )
        )
    return out


# -- evaluation and writes -----------------------------------------------------------------


def event_context(event: Event) -> dict[str, Any]:
    """The `event` root of a counted criterion's `where`, as journeys see an event."""
    properties = event.payload.get("properties")
    return {
        "name": event.name,
        "message_id": event.message_id,
        "timestamp": event.timestamp.isoformat(),
        "properties": properties if isinstance(properties, dict) else {},
    }


def traits_in(event: Event) -> set[str]:
    """The traits an event wrote to the profile: an identify's, and any `context.traits`."""
    changed: set[str] = set()
    if event.type == IDENTIFY_TYPE and isinstance(event.payload.get("traits"), dict):
        changed.update(event.payload["traits"])
    context = event.payload.get("context")
    if isinstance(context, dict) and isinstance(context.get("traits"), dict):
        changed.update(context["traits"])
    return changed


def utc_day(at: datetime) -> date:
    return at.astimezone(UTC).date()


def message_id_for(
    segment_id: str, user_id: str, changes: int, created_at: datetime | None = None
) -> str:
    """The id of a transition's internal event: the segment (as created: a segment made
    again under an old id starts its numbering anew), a hash of the user, the count."""
    digest = hashlib.sha256(user_id.encode()).hexdigest()[:16]
    made = f"{int(created_at.timestamp() * 1000):x}:" if created_at is not None else ""
    return f"nudge:segment:{segment_id}:{made}{digest}:{changes}"


async def _read_counts(
    session: AsyncSession, user_id: str, criteria: list[EventCriterion], now: datetime
) -> dict[str, dict[date, int]]:
    """The user's per-day counts for these criteria, from the earliest window's first day
    (every day when one counts ever): one query."""
    keys = sorted({c.counter_key() for c in criteria})
    counts: dict[str, dict[date, int]] = defaultdict(dict)
    if not keys:
        return counts
    statement = select(EventCounter.counter, EventCounter.day, EventCounter.count).where(
        EventCounter.user_id == user_id, EventCounter.counter.in_(keys)
    )
    starts = [window_start(c, utc_day(now)) for c in criteria]
    if all(s is not None for s in starts):
        statement = statement.where(EventCounter.day >= min(s for s in starts if s is not None))
    for counter, day, count in (await session.execute(statement)).all():
        counts[counter][day] = count
    return counts


async def _evaluate_user(
    session: AsyncSession,
    *,
    user_id: str,
    segments: list[LiveSegment],
    rows: dict[str, SegmentMembership],
    now: datetime,
) -> list[Transition]:
    """Evaluate these segments for one user (locked) and write what changed."""
    if not segments:
        return []
    traits: dict[str, Any] = {}
    if any(s.definition.traits for s in segments):
        profile = await session.get(Profile, user_id)
        traits = dict(profile.traits) if profile is not None else {}
    criteria = [c for s in segments for c in s.definition.events]
    counts = await _read_counts(session, user_id, criteria, now)
    transitions: list[Transition] = []
    for segment in segments:
        result = evaluate_segment(segment.definition, traits=traits, counts=counts, now=now)
        row = rows.get(segment.id)
        if row is None:
            row = SegmentMembership(
                segment_id=segment.id,
                user_id=user_id,
                member=False,
                version=segment.version,
                changes=0,
                changed_at=now,
                recheck_at=None,
            )
            session.add(row)
            rows[segment.id] = row
        if row.member != result.member:
            row.member = result.member
            row.changes += 1
            row.changed_at = now
            transitions.append(
                Transition(
                    segment_id=segment.id,
                    user_id=user_id,
                    entered=result.member,
                    changes=row.changes,
                    message_id=message_id_for(segment.id, user_id, row.changes, segment.created_at),
                )
            )
        if row.version != segment.version:
            row.version = segment.version
        if row.recheck_at != result.recheck_at:
            row.recheck_at = result.recheck_at
    await session.flush()
    if transitions:
        names = {s.id: s.name for s in segments}
        await record_events(
            session=session,
            events=[_internal_event(t, names[t.segment_id], now) for t in transitions],
        )
    return transitions


def _internal_event(transition: Transition, segment_name: str, now: datetime) -> NewEvent:
    name = SEGMENT_ENTERED if transition.entered else SEGMENT_EXITED
    return NewEvent(
        message_id=transition.message_id,
        type=INTERNAL_TYPE,
        name=name,
        user_id=transition.user_id,
        timestamp=now,
        payload={
            "type": INTERNAL_TYPE,
            "event": name,
            "userId": transition.user_id,
            "messageId": transition.message_id,
            "timestamp": now.isoformat(),
            "properties": {"segment": transition.segment_id, "segment_name": segment_name},
        },
    )


async def _memberships(
    session: AsyncSession, user_id: str, segment_ids: Iterable[str] | None = None
) -> dict[str, SegmentMembership]:
    statement = select(SegmentMembership).where(SegmentMembership.user_id == user_id)
    if segment_ids is not None:
        statement = statement.where(SegmentMembership.segment_id.in_(list(segment_ids)))
    rows = await session.scalars(statement.execution_options(populate_existing=True))
    return {row.segment_id: row for row in rows}


async def _bump_counters(session: AsyncSession, user_id: str, keys: list[str], day: date) -> None:
    table = EventCounter.__table__
    statement = dialect_insert(session, table).values(
        [{"user_id": user_id, "counter": key, "day": day, "count": 1} for key in keys]
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["user_id", "counter", "day"], set_={"count": table.c.count + 1}
        )
    )


async def update_for_event(
    session: AsyncSession, *, event: Event, segments: Sequence[LiveSegment], now: datetime
) -> list[Transition]:
    """Take one stored event into segment membership; the caller commits.

    `segments` is the caller's cached list (an empty one is the fast path: nothing is
    read or written). Does nothing for an event already taken in (`events.counted`), so
    a relay that dies and repeats the event counts it once. Nudge's own internal events
    are never counted."""
    if event.type == INTERNAL_TYPE or not segments:
        return []
    flipped = await session.execute(
        update(Event)
        .where(Event.id == event.id, Event.counted.is_(False))
        .values(counted=True)
        .execution_options(synchronize_session=False)
    )
    if not getattr(flipped, "rowcount", 0):
        return []
    user_id = await canonical_user(session, event.user_id)
    await _lock_users(session, [user_id])
    current = await _current(session, segments)
    definitions = [s.definition for s in current]
    name = event.name if event.type == ROUTED_TYPE else None
    if name is not None:
        context = {"event": event_context(event)}
        keys = [
            c.counter_key()
            for c in counted_criteria(definitions, name)
            if evaluate_all(c.where, context)
        ]
        if keys:
            await _bump_counters(session, user_id, keys, utc_day(event.timestamp))
    changed = traits_in(event)
    rows = await _memberships(session, user_id)
    due = []
    for segment in current:
        if not segment.evaluates(user_id):
            continue
        row = rows.get(segment.id)
        if (
            row is None
            or row.version != segment.version
            or affected_by(segment.definition, event_name=name, traits_changed=changed)
        ):
            due.append(segment)
    return await _evaluate_user(session, user_id=user_id, segments=due, rows=rows, now=now)


async def recheck_due(session: AsyncSession, *, now: datetime, limit: int = 500) -> int:
    """Evaluate again the memberships whose `recheck_at` has come (a counted day left a
    window), at most `limit`, writing an internal event for each flip; the caller
    commits. Returns how many memberships were evaluated (`limit`: call again)."""
    due = (
        await session.execute(
            select(SegmentMembership.segment_id, SegmentMembership.user_id)
            .where(SegmentMembership.recheck_at <= now)
            .order_by(SegmentMembership.recheck_at)
            .limit(limit)
        )
    ).all()
    if not due:
        return 0
    by_user: dict[str, set[str]] = defaultdict(set)
    for segment_id, user_id in due:
        by_user[user_id].add(segment_id)
    await _lock_users(session, by_user)
    segments = {s.id: s for s in await live_segments(session=session)}
    for user_id, segment_ids in sorted(by_user.items()):
        rows = await _memberships(session, user_id, segment_ids)
        todo = [segments[i] for i in sorted(segment_ids) if i in segments and i in rows]
        await _evaluate_user(session, user_id=user_id, segments=todo, rows=rows, now=now)
    return len(due)


async def _next_users(session: AsyncSession, after: str | None, limit: int) -> list[str]:
    """Existing users in id order after `after`: those with a profile or an event."""
    profiles = select(Profile.user_id.label("user_id"))
    events = select(Event.user_id.label("user_id")).where(Event.type != INTERNAL_TYPE)
    if after is not None:
        profiles = profiles.where(Profile.user_id > after)
        events = events.where(Event.user_id > after)
    users = union(profiles, events).subquery()
    statement = select(users.c.user_id).order_by(users.c.user_id).limit(limit)
    return list((await session.scalars(statement)).all())


async def _backfill(
    session: AsyncSession, users: list[str], segment: LiveSegment, now: datetime
) -> None:
    """Replace the users' counters for the segment's criteria, from the longest window's
    first day, with the stored events the relay took in or settled (module docstring)."""
    criteria = {c.counter_key(): c for c in segment.definition.events}
    if not criteria or not users:
        return
    starts = [window_start(c, utc_day(now)) for c in criteria.values()]
    start = None if any(s is None for s in starts) else min(s for s in starts if s is not None)
    linked = (
        await session.execute(
            select(Identity.anonymous_id, Identity.user_id).where(Identity.user_id.in_(users))
        )
    ).all()
    person = {u: u for u in users} | {anonymous: user for anonymous, user in linked}
    names = sorted({c.event for c in criteria.values()})
    statement = select(Event).where(
        Event.user_id.in_(list(person)),
        Event.type == ROUTED_TYPE,
        Event.name.in_(names),
        or_(Event.counted.is_(True), Event.status != EventStatus.pending.value),
    )
    if start is not None:
        statement = statement.where(Event.timestamp >= day_start(start))
    counts: dict[tuple[str, str, date], int] = defaultdict(int)
    for event in await session.scalars(statement):
        context = {"event": event_context(event)}
        for key, criterion in criteria.items():
            if criterion.event == event.name and evaluate_all(criterion.where, context):
                counts[(person[event.user_id], key, utc_day(event.timestamp))] += 1
    cleared = delete(EventCounter).where(
        EventCounter.user_id.in_(users), EventCounter.counter.in_(list(criteria))
    )
    if start is not None:
        cleared = cleared.where(EventCounter.day >= start)
    await session.execute(cleared)
    if counts:
        await session.execute(
            dialect_insert(session, EventCounter.__table__).values(
                [
                    {"user_id": user, "counter": key, "day": day, "count": n}
                    for (user, key, day), n in sorted(counts.items())
                ]
            )
        )


async def build_step(session: AsyncSession, *, now: datetime, limit: int = 500) -> BuildProgress:
    """Evaluate the next `limit` existing users for a segment that is building (the
    oldest change first); the caller commits. At the end of its users the segment is
    `ready`. Call again until it returns `segment_id=None`."""
    # The write comes first: it takes SQLite's write lock before anything is read, and
    # on PostgreSQL it makes two build steps of one segment take turns.
    candidate = (
        select(Segment.id)
        .where(Segment.status == "building")
        .order_by(Segment.updated_at, Segment.id)
        .limit(1)
        .scalar_subquery()
    )
    claimed = await session.execute(
        update(Segment)
        .where(Segment.id == candidate, Segment.status == "building")
        .values(status="building")
        .returning(Segment.id)
        .execution_options(synchronize_session=False)
    )
    segment_id = claimed.scalar_one_or_none()
    if segment_id is None:
        return BuildProgress(None, 0, True)
    row = await session.get(Segment, segment_id, populate_existing=True)
    assert row is not None
    segment = live(row)
    fetched = await _next_users(session, row.build_cursor, limit)
    # An anonymous id linked to a user is that user: counted and evaluated under them.
    linked = set(
        await session.scalars(
            select(Identity.anonymous_id).where(Identity.anonymous_id.in_(fetched))
        )
    )
    users = [u for u in fetched if u not in linked]
    await _lock_users(session, users)
    await _backfill(session, users, segment, now)
    # Evaluated as ready: the build has counted these users' past.
    ready = LiveSegment(
        segment.id,
        segment.name,
        segment.version,
        "ready",
        None,
        segment.definition,
        segment.created_at,
    )
    for user_id in users:
        rows = await _memberships(session, user_id, [segment.id])
        await _evaluate_user(session, user_id=user_id, segments=[ready], rows=rows, now=now)
    done = len(fetched) < limit
    row.build_cursor = None if done else fetched[-1]
    if done:
        row.status = "ready"
    await session.flush()
    return BuildProgress(segment.id, len(users), done, row.build_cursor)


# -- housekeeping --------------------------------------------------------------------------


async def prune_counters(session: AsyncSession, *, now: datetime) -> int:
    """Forget the per-day counters no segment reads any more: those of criteria no segment
    has (deleted or changed segments), and days before the longest window any segment
    counts them in (a criterion counted `ever` keeps all its days). Returns the rows
    deleted. Reads every segment's definition, never the counters as a whole."""
    today = utc_day(now)
    horizon: dict[str, date | None] = {}
    for row in await session.scalars(select(Segment)):
        try:
            criteria = definition_of(row).events
        except ValueError:
            return 0  # a segment that no longer reads: keep everything rather than guess
        for criterion in criteria:
            key = criterion.counter_key()
            start = window_start(criterion, today)
            if key not in horizon:
                horizon[key] = start
                continue
            current = horizon[key]
            horizon[key] = None if current is None or start is None else min(current, start)
    deleted = 0
    unused = delete(EventCounter).where(EventCounter.counter.not_in(list(horizon)))
    deleted += (await session.execute(unused)).rowcount or 0
    for key, start in horizon.items():
        if start is None:
            continue
        old = delete(EventCounter).where(EventCounter.counter == key, EventCounter.day < start)
        deleted += (await session.execute(old)).rowcount or 0
    return deleted
