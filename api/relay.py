"""api: the relay — drains the events outbox in id order, one background task per API
process, handing each event to the router.

Ingestion writes an event to the outbox and answers; the relay routes it afterwards, woken
right after the write and every `relay_interval_seconds` otherwise. Every API process runs
a relay on the same outbox, so each relay first claims what it routes (`claim_events`): an
event is routed by one relay, and a user's events by one relay at a time, oldest first.
Each event is settled — `routed`, `ignored` or `failed` — in its own short transaction as
soon as its routing is done, so a relay that dies repeats at most the events in flight
(their journeys drop the repeated signal by message id). Order per user: once an event of a
user fails, that user's later events wait behind it; other users go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
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
from store.events import (
    EventStatus,
    claim_events,
    extend_claims,
    record_attempt_failure,
    release_claims,
    settle_event,
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

LEASE = timedelta(seconds=30)
"""How long a claim holds without renewal. A relay renews its claims every third of it
while it routes them, so only a relay that died (or stalled that long) loses them; then
another relay takes its events over after at most this long. Leases are compared with each
API host's clock: hosts must agree on the time to well within it (NTP does)."""

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
    """Drains the outbox in id order: one background task per API process.

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
        concurrency: int = 16,
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
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.lease = lease
        self.relay_id = relay_id or new_relay_id()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._outage = False

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="nudge-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        last_error = None
        while True:
            self._wakeup.clear()
            try:
                await self.drain()
                last_error = None
            except Exception as exc:
                # The database being down fails every pass: say so once, not every tick.
                if describe(exc) != last_error:
                    log.exception("relay pass failed; retrying every %ss", self._interval)
                last_error = describe(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._interval)

    @property
    def _interval(self) -> float:
        return self.settings.relay_interval_seconds

    async def drain(self) -> list[PassResult]:
        """Pass over the outbox until a claim comes back empty or what is left must wait.

        Claiming again after a short batch is what picks up a user's events that arrived
        while this relay held the user's earlier ones (another relay left them alone).
        """
        results: list[PassResult] = []
        while True:
            await self.router.campaigns.refresh()
            if self.segments is not None:
                await self.segments.refresh()
            async with self.sessions() as session:
                events = await claim_events(
                    session=session,
                    relay_id=self.relay_id,
                    lease=self.lease,
                    limit=self.batch_size,
                )
                await session.commit()
            if not events:
                return results
            result = await self.relay(events)
            results.append(result)
            # Held events would come back first in the next batch: wait for the next tick.
            if result.held or result.failures:
                return results

    async def relay(self, events: list[Event]) -> PassResult:
        """Route one claimed batch: users side by side, each user's events one after
        another. The claims are renewed meanwhile and given back at the end."""
        result = PassResult()
        by_user: dict[str, list[Event]] = defaultdict(list)
        for event in events:
            by_user[event.user_id].append(event)
        gate = asyncio.Semaphore(self.concurrency)

        async def one_user(queue: list[Event]) -> None:
            async with gate:
                for i, event in enumerate(queue):
                    if not await self._one(event, result):
                        result.held += len(queue) - i - 1
                        return

        renewing = asyncio.create_task(self._renew_claims(), name="nudge-relay-lease")
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
            await self._release_claims()
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

    async def _one(self, event: Event, result: PassResult) -> bool:
        """Route one event and settle it at once; False when it stays pending (and so
        must its user's later events).

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
                    return await self._failed(event, exc, result)
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
                return await self._failed(event, exc, result)
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
            return await self._failed(event, exc, result)
        status = EventStatus.routed if outcome is Outcome.routed else EventStatus.ignored
        if not await self._settle(event, status):
            result.lost.append(event.id)
            return False
        (result.routed if status is EventStatus.routed else result.ignored).append(event.id)
        return True

    async def _failed(self, event: Event, exc: Exception, result: PassResult) -> bool:
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
        if not await self._settle(event, EventStatus.failed, error=error):
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

    async def _settle(self, event: Event, status: EventStatus, error: str | None = None) -> bool:
        """Settle one event in its own transaction; False when this relay's claim lapsed
        and another relay took the event over (it settles the event then)."""
        async with self.sessions() as session:
            settled = await settle_event(
                session=session,
                event_id=event.id,
                relay_id=self.relay_id,
                status=status,
                error=error,
            )
            await session.commit()
        if not settled:
            log.warning(
                "the claim on event %s (id %d) lapsed while it was routed; the relay that "
                "took it over settles it",
                event.message_id,
                event.id,
            )
        return settled

    async def _renew_claims(self) -> None:
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                async with self.sessions() as session:
                    await extend_claims(session=session, relay_id=self.relay_id, lease=self.lease)
                    await session.commit()
            except Exception as exc:
                log.warning("renewing this relay's claims failed; retrying: %s", describe(exc))

    async def _release_claims(self) -> None:
        """Give back the claims on what this pass leaves pending, so that another relay
        need not wait for the lease; if that fails, the lease lapses by itself."""
        try:
            async with self.sessions() as session:
                await release_claims(session=session, relay_id=self.relay_id)
                await session.commit()
        except Exception as exc:
            log.warning("releasing this relay's claims failed: %s", describe(exc))
