"""api: the relay — drains the events outbox in id order per user, two background tasks
per API process (two lanes), handing each event to the router.

Ingestion writes an event to the outbox and answers; the relay routes it afterwards, woken
right after the write and every `relay_interval_seconds` otherwise. Every API process runs
a relay on the same outbox, so each relay first claims what it routes (`claim_events`): an
event is routed by one relay, and a user's events by one relay at a time, oldest first.

Two lanes, each claiming under an id of its own: the lane takes the `track` events no
active campaign starts on but a journey may react to (a goal, an exit, a `wait_for`), the
main lane all the others, oldest first. So a user's `Order Completed` does not wait behind
thousands of other users' entry events; it does wait behind the user's own earlier events,
whichever lane holds them (order per user holds across lanes as across relays).

Events are settled — `routed`, `ignored` or `failed` — as soon as their routing is done, in
transactions shared by the events done meanwhile (`Settler`, a group commit): a user's next
event is routed only once the previous one is settled, and a relay that dies repeats at most
the events in flight, routed but not yet committed as settled (their journeys drop the
repeated signal by message id). Order per user: once an event of a user fails, that user's
later events wait behind it; other users go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.service import RPCError, RPCStatusCode

from api.attribution import attribute_goal
from api.router import EventRouter, Outcome
from api.segment_index import SegmentIndexLoader
from core.config import Settings
from core.routing import CampaignIndex
from store.events import (
    LANE_TYPE,
    EventStatus,
    claim_events,
    extend_claims,
    record_attempt_failure,
    release_claims,
    scan_lane,
    settle_event,
    settle_events,
)
from store.models import Event
from temporal.client import is_outage, is_transient

log = logging.getLogger("nudge.relay")

MAX_ATTEMPTS = 5
"""Routing errors that retrying cannot be expected to fix (a bug, a payload Temporal
refuses) are retried this many times, one relay pass apart, then the event is given up:
marked `failed` with the error kept in `last_error`, and logged at ERROR. The count is kept
in the event's row (`failures`), so it is the same whichever relay tries. Outages
(Temporal or the database unreachable, back-pressure) never count: those events wait for
as long as it takes."""
GAVE_UP = "gave up after {n} attempts: "
"""How `last_error` starts for an event the relay gave up on."""
REFUSED = "gave up at once, Temporal refuses it as invalid: "
"""How `last_error` starts for an event Temporal refused with INVALID_ARGUMENT."""

STOP_WAIT_SECONDS = 5.0
"""How long stopping waits for a settle under way (see `Settler.stop`)."""

LEASE = timedelta(seconds=30)
"""How long a claim holds without renewal. A relay renews its claims every third of it
while it routes them, so only a relay that died (or stalled that long) loses them; then
another relay takes its events over after at most this long. Leases are compared with each
API host's clock: hosts must agree on the time to well within it (NTP does)."""

LANE_RECHECK_SECONDS = 0.1
"""How soon the lane looks again while its events wait behind their users' earlier events
(routed by the main lane meanwhile): one cheap read, until they are through."""

FINAL_CODES = frozenset({RPCStatusCode.INVALID_ARGUMENT})
"""RPC codes that say the request itself is wrong — a workflow id over Temporal's length
limit, say: what validation at ingestion should have refused. Sending it again gets the
same answer, so the event is given up on the first one."""


def retry_later(exc: BaseException) -> bool:
    """Errors that will pass by themselves: Temporal or the database out of reach."""
    return is_transient(exc) or isinstance(exc, OperationalError | InterfaceError)


def is_final(exc: BaseException) -> bool:
    """Errors no retry can fix: give up on the event at once."""
    return isinstance(exc, RPCError) and exc.status in FINAL_CODES


def describe(exc: BaseException) -> str:
    """An error as `last_error` keeps it: its type, its RPC status when it has one."""
    if isinstance(exc, RPCError):
        return f"RPCError {exc.status.name}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def new_relay_id() -> str:
    """Names one relay in `claimed_by` (64 characters at most): host, process, and a
    random part, since two relays may share a process (tests) and pids are reused."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


def lane_names(index: CampaignIndex) -> frozenset[str]:
    """The `track` event names of the lane: some journey may react to them, and no active
    campaign starts a journey on them."""
    return frozenset(name for name in index.reactions if (LANE_TYPE, name) not in index.entries)


def lane_id(relay_id: str) -> str:
    """The id the lane claims under (`claimed_by`, 64 characters at most)."""
    return f"{relay_id[:58]}/lane"


Settling = tuple[str, int, EventStatus, str | None]
"""(relay id, event id, status, error) of one event to settle."""


class Settler:
    """Settles events in groups: a group commit. A writer task writes what is waiting in
    one transaction and, while it writes, the next events queue up for the next one; each
    caller learns whether its own event was still its relay's to settle.

    The writer runs only while something waits, and apart from the callers, so a caller
    cancelled mid-write (its pass failed) leaves the write to finish for the others. A
    write that fails fails every caller in it."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self.sessions = sessions
        self._queue: list[tuple[Settling, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.transactions = 0
        """How many transactions settled events (for tests and the bench)."""

    async def settle(
        self, relay_id: str, event_id: int, status: EventStatus, error: str | None = None
    ) -> bool:
        settled: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(((relay_id, event_id, status, error), settled))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="nudge-relay-settle")
        return await settled

    async def stop(self) -> None:
        """Let the write under way finish, for a few seconds at most: one stuck behind
        another connection's lock (SQLite's busy wait) is cancelled, and the events it would
        have settled are routed again later (their journeys drop the repeat)."""
        if self._writer is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._writer, timeout=STOP_WAIT_SECONDS)
            self._writer = None

    async def _write_all(self) -> None:
        while self._queue:
            group, self._queue = self._queue, []
            try:
                await self._write(group)
            except Exception as exc:
                for _, waiting in group:
                    if not waiting.done():
                        waiting.set_exception(exc)
            except BaseException:
                for _, waiting in [*group, *self._queue]:
                    waiting.cancel()
                self._queue = []
                raise

    async def _write(self, group: list[tuple[Settling, asyncio.Future[bool]]]) -> None:
        plain: dict[tuple[str, EventStatus], set[int]] = defaultdict(set)
        done: set[int] = set()
        async with self.sessions() as session:
            for (relay_id, event_id, status, error), _ in group:
                if error is None:
                    plain[(relay_id, status)].add(event_id)
                elif await settle_event(
                    session=session,
                    event_id=event_id,
                    relay_id=relay_id,
                    status=status,
                    error=error,
                ):
                    done.add(event_id)
            for (relay_id, status), event_ids in plain.items():
                done |= await settle_events(
                    session=session, event_ids=event_ids, relay_id=relay_id, status=status
                )
            await session.commit()
        self.transactions += 1
        for (_, event_id, _, _), waiting in group:
            if not waiting.done():
                waiting.set_result(event_id in done)


@dataclass
class PassResult:
    """What one relay pass over (at most) `batch_size` claimed events did."""

    routed: list[int] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    gave_up: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    """Events whose claim lapsed while they were routed: another relay took them over and
    settles them (and the user's later events)."""
    held: int = 0
    """Events left pending: behind a failed event of the same user, or Temporal down."""
    outage: bool = False
    outage_error: str | None = None


class Relay:
    """Drains the outbox, users side by side and each user's events in order: two
    background tasks per API process, one per lane.

    Woken right after an ingestion request commits, and every `relay_interval_seconds`
    otherwise (to retry what was held back). Order per user: once an event of a user
    fails, that user's later events — whatever they are — wait in the outbox behind it;
    other users go on. When Temporal is out of reach, a pass stops calling it at the first
    sign (one failed attempt is counted, on that event), still settles the events no
    campaign cares about, and ingestion goes on answering 200 meanwhile.
    """

    def __init__(
        self,
        *,
        router: EventRouter,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        batch_size: int = 500,
        concurrency: int | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        lease: timedelta = LEASE,
        relay_id: str | None = None,
        segments: SegmentIndexLoader | None = None,
    ):
        self.router = router
        self.segments = segments
        self.sessions = sessions
        self.settings = settings
        self.batch_size = batch_size
        self.concurrency = concurrency or settings.relay_concurrency
        self.max_attempts = max_attempts
        self.lease = lease
        self.relay_id = relay_id or new_relay_id()
        self.lane_id = lane_id(self.relay_id)
        self.settler = Settler(sessions)
        self._wakeups = {False: asyncio.Event(), True: asyncio.Event()}
        """By lane: the main lane's (False) and the lane's (True)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._outage = False
        self._lane_mark = 0
        self._lane_waiting: set[int] = set()
        """The lane's events that wait behind earlier events of their users: looked at
        again soon, and at every lane pass."""
        self._lane_full_at = 0.0

    def wake(self) -> None:
        for wakeup in self._wakeups.values():
            wakeup.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.run(lane=False), name="nudge-relay"),
            asyncio.create_task(self.run(lane=True), name="nudge-relay-lane"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.settler.stop()

    async def run(self, *, lane: bool = False) -> None:
        last_error = None
        wakeup = self._wakeups[lane]
        while True:
            wakeup.clear()
            try:
                await self.drain_lane(lane=lane)
                last_error = None
            except Exception as exc:
                # The database being down fails every pass: say so once, not every tick.
                if describe(exc) != last_error:
                    log.exception("relay pass failed; retrying every %ss", self._interval)
                last_error = describe(exc)
            interval = self._interval
            if lane and self._lane_waiting:
                interval = min(interval, LANE_RECHECK_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=interval)

    @property
    def _interval(self) -> float:
        return self.settings.relay_interval_seconds

    def lane_names(self) -> frozenset[str]:
        campaigns = self.router.campaigns
        return lane_names(campaigns.index) if campaigns.loaded else frozenset()

    async def drain(self) -> list[PassResult]:
        """Both lanes, the main one first, until what is left must wait: what the
        background tasks do side by side, one after the other."""
        return [*await self.drain_lane(lane=False), *await self.drain_lane(lane=True)]

    async def drain_lane(self, *, lane: bool) -> list[PassResult]:
        """Pass over one lane until a claim comes back empty or what is left must wait.

        Claiming again after a short batch is what picks up a user's events that arrived
        while this relay held the user's earlier ones (another relay left them alone).
        """
        relay_id = self.lane_id if lane else self.relay_id
        results: list[PassResult] = []
        while True:
            await self.router.campaigns.refresh()
            if self.segments is not None:
                await self.segments.refresh()
            names = self.lane_names()
            async with self.sessions() as session:
                from_id, ready = 0, []
                if lane:
                    ready = await self._scan_lane(session, names)
                    if not ready:
                        return results
                    from_id = min(ready)
                events = await claim_events(
                    session=session,
                    relay_id=relay_id,
                    lease=self.lease,
                    limit=self.batch_size,
                    lane_names=names,
                    lane=lane,
                    from_id=from_id,
                )
                await session.commit()
            if lane:
                # One taken meanwhile by another relay is looked at again, like one waiting.
                self._lane_waiting |= {*ready} - {event.id for event in events}
            if not events:
                return results
            result = await self.relay(events, relay_id=relay_id)
            results.append(result)
            if not lane and names:
                # The lane's events that waited behind this pass's may go now.
                self._wakeups[True].set()
            # Held events would come back first in the next batch: wait for the next tick.
            if result.held or result.failures:
                return results

    async def _scan_lane(self, session: AsyncSession, names: frozenset[str]) -> list[int]:
        """The lane's events a claim would take now. Between full reads (one a relay
        interval: a claim lapsed, an event another process's lane left), only the events
        written since the last read and those that waited are read."""
        full = time.monotonic() >= self._lane_full_at
        scan = await scan_lane(
            session=session,
            relay_id=self.lane_id,
            lane_names=names,
            after_id=0 if full else self._lane_mark,
            among=self._lane_waiting,
        )
        if full:
            self._lane_full_at = time.monotonic() + self._interval
        self._lane_mark = scan.mark
        self._lane_waiting = set(scan.waiting)
        return scan.ready

    async def relay(self, events: list[Event], *, relay_id: str | None = None) -> PassResult:
        """Route one claimed batch: users side by side, each user's events one after
        another. The claims are renewed meanwhile and given back at the end."""
        relay_id = relay_id or self.relay_id
        result = PassResult()
        by_user: dict[str, list[Event]] = defaultdict(list)
        for event in events:
            by_user[event.user_id].append(event)
        gate = asyncio.Semaphore(self.concurrency)

        async def one_user(queue: list[Event]) -> None:
            for i, event in enumerate(queue):
                if not await self._one(event, result, relay_id, gate):
                    result.held += len(queue) - i - 1
                    return

        renewing = asyncio.create_task(self._renew_claims(relay_id), name="nudge-relay-lease")
        try:
            async with asyncio.TaskGroup() as group:
                for queue in by_user.values():
                    group.create_task(one_user(queue))
        except ExceptionGroup as failed:
            # The first cause (the database gone, typically) says it best.
            raise failed.exceptions[0] from None
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await self._release_claims(relay_id)
        self._log_pass(result)
        return result

    def _log_pass(self, result: PassResult) -> None:
        if result.outage and not self._outage:
            log.warning("Temporal is unreachable; events stay pending: %s", result.outage_error)
        elif self._outage and not result.outage and result.routed:
            log.info("Temporal is reachable again; pending events are being routed")
        self._outage = result.outage or (self._outage and not result.routed)
        if result.routed or result.ignored or result.gave_up:
            log.debug(
                "relayed: %d routed, %d ignored, %d held",
                len(result.routed),
                len(result.ignored),
                result.held,
            )

    async def _one(
        self, event: Event, result: PassResult, relay_id: str, gate: asyncio.Semaphore
    ) -> bool:
        """Route one event (holding a place at the `gate`) and settle it at once (having
        left the gate to the next user: the settle waits for its group's commit); False
        when it stays pending (and so must its user's later events)."""
        async with gate:
            routed = await self._route(event, result, relay_id)
        if isinstance(routed, bool):
            return routed
        if not await self._settle(event, routed, relay_id):
            result.lost.append(event.id)
            return False
        (result.routed if routed is EventStatus.routed else result.ignored).append(event.id)
        return True

    async def _route(self, event: Event, result: PassResult, relay_id: str) -> EventStatus | bool:
        """Take one event in and route it: the label to settle it with, or, when routing
        failed, whether its user's later events go on (`_failed`).

        Segment membership takes the event in first, whether or not Temporal is reachable
        (it needs only the database, and is done once however often the event comes by);
        when it cannot — the database is out of reach — the event waits like any other.
        The internal events it writes for users entering or leaving a segment are routed
        on a later pass, which the wake-up asks for."""
        if self.segments is not None:
            try:
                if await self.segments.take_in(event):
                    self.wake()
            except Exception as exc:
                if retry_later(exc):
                    return await self._failed(event, exc, result, relay_id)
                # A bug in membership must not cost the event its journeys: it is routed,
                # uncounted (its `counted` flag stays false), and said loudly.
                log.exception(
                    "segment membership could not take in event %s (id %d); routed without it",
                    event.message_id,
                    event.id,
                )
        try:
            await attribute_goal(self.sessions, self.router.campaigns.goals, event)
        except Exception as exc:
            if retry_later(exc):
                return await self._failed(event, exc, result, relay_id)
            # As for segments: the event still reaches its journeys.
            log.exception(
                "conversion attribution failed for event %s (id %d); routed without it",
                event.message_id,
                event.id,
            )
        if result.outage and self.router.needs_temporal(event):
            result.held += 1
            return False
        try:
            outcome = await self.router.route(event)
        except Exception as exc:
            return await self._failed(event, exc, result, relay_id)
        return EventStatus.routed if outcome is Outcome.routed else EventStatus.ignored

    async def _failed(
        self, event: Event, exc: Exception, result: PassResult, relay_id: str
    ) -> bool:
        """Count a failed attempt in the event's row; give up when retrying cannot help or
        has not helped `max_attempts` times. False when the event stays pending."""
        error = describe(exc)
        if retry_later(exc):
            if is_outage(exc) and not result.outage:
                result.outage = True
                result.outage_error = error
            await self._count_failure(event, error, counts=False)
            result.failures.append((event.id, error))
            result.held += 1
            return False
        failures = await self._count_failure(event, error, counts=True)
        if is_final(exc):
            error = REFUSED + error
        elif failures < self.max_attempts:
            log.warning(
                "routing event %s failed (attempt %d of %d): %s",
                event.message_id,
                failures,
                self.max_attempts,
                error,
            )
            result.failures.append((event.id, error))
            result.held += 1
            return False
        else:
            error = GAVE_UP.format(n=failures) + error
        log.error(
            "GAVE UP routing event %s (id %d, user %r, %r); it is marked failed and the "
            "user's later events go on: %s",
            event.message_id,
            event.id,
            event.user_id,
            event.name,
            error,
            exc_info=exc,
        )
        result.failures.append((event.id, error))
        if not await self._settle(event, EventStatus.failed, relay_id, error=error):
            result.lost.append(event.id)
            return False
        result.gave_up.append(event.id)
        return True

    async def _count_failure(self, event: Event, error: str, *, counts: bool) -> int:
        async with self.sessions() as session:
            failures = await record_attempt_failure(
                session=session, event_id=event.id, error=error, counts=counts
            )
            await session.commit()
        return failures

    async def _settle(
        self, event: Event, status: EventStatus, relay_id: str, error: str | None = None
    ) -> bool:
        """Settle one event, in the next group of settles; False when this relay's claim
        lapsed and another relay took the event over (it settles the event then)."""
        settled = await self.settler.settle(relay_id, event.id, status, error)
        if not settled:
            log.warning(
                "the claim on event %s (id %d) lapsed while it was routed; the relay that "
                "took it over settles it",
                event.message_id,
                event.id,
            )
        return settled

    async def _renew_claims(self, relay_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                async with self.sessions() as session:
                    await extend_claims(session=session, relay_id=relay_id, lease=self.lease)
                    await session.commit()
            except Exception as exc:
                log.warning("renewing this relay's claims failed; retrying: %s", describe(exc))

    async def _release_claims(self, relay_id: str) -> None:
        """Give back the claims on what this pass leaves pending, so that another relay
        need not wait for the lease; if that fails, the lease lapses by itself."""
        try:
            async with self.sessions() as session:
                await release_claims(session=session, relay_id=relay_id)
                await session.commit()
        except Exception as exc:
            log.warning("releasing this relay's claims failed: %s", describe(exc))
