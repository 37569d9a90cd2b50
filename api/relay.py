"""api: the relay — drains the events outbox in id order, one background task per API
process, handing each event to the router.

Ingestion writes an event to the outbox and answers; the relay routes it afterwards, woken
right after the write and every `relay_interval_seconds` otherwise. Order per user: once an
event of a user fails, that user's later events wait behind it; other users go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.service import RPCError

from api.router import EventRouter, Outcome
from core.config import Settings
from store.events import mark_events, pending_events, record_attempt_failure
from store.models import Event
from temporal.client import is_outage, is_transient

log = logging.getLogger("nudge.relay")

MAX_ATTEMPTS = 5
"""Routing errors that retrying cannot be expected to fix (a bug, a payload Temporal
refuses) are retried this many times, one relay pass apart, then the event is given up:
marked `failed` with the error kept in `last_error`, and logged at ERROR. Outages
(Temporal or the database unreachable, back-pressure) never count: those events wait for
as long as it takes."""
GAVE_UP = "gave up after {n} attempts: "
"""How `last_error` starts for an event the relay gave up on."""


def retry_later(exc: BaseException) -> bool:
    """Errors that will pass by themselves: Temporal or the database out of reach."""
    return is_transient(exc) or isinstance(exc, OperationalError | InterfaceError)


def describe(exc: BaseException) -> str:
    """An error as `last_error` keeps it: its type, its RPC status when it has one."""
    if isinstance(exc, RPCError):
        return f"RPCError {exc.status.name}: {exc}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class PassResult:
    """What one relay pass over (at most) `batch_size` pending events did."""

    routed: list[int] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    gave_up: list[int] = field(default_factory=list)
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
    ):
        self.router = router
        self.sessions = sessions
        self.settings = settings
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures: dict[int, int] = {}
        """Non-transient failures per event id, in this process (a restart retries anew)."""
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
        """Pass over the outbox until it is empty or what is left must wait."""
        results: list[PassResult] = []
        while True:
            await self.router.campaigns.refresh()
            async with self.sessions() as session:
                events = await pending_events(session=session, limit=self.batch_size)
            if not events:
                return results
            result = await self.relay(events)
            results.append(result)
            # Held events would come back first in the next batch: wait for the next tick.
            if result.held or result.failures or len(events) < self.batch_size:
                return results

    async def relay(self, events: list[Event]) -> PassResult:
        """Route one batch: users side by side, each user's events one after another."""
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

        await asyncio.gather(*(one_user(q) for q in by_user.values()))
        async with self.sessions() as session:
            await mark_events(session=session, event_ids=result.routed, status="routed")
            await mark_events(session=session, event_ids=result.ignored, status="ignored")
            await mark_events(session=session, event_ids=result.gave_up, status="failed")
            for event_id, error in result.failures:
                await record_attempt_failure(session=session, event_id=event_id, error=error)
            await session.commit()
        for event_id in (*result.routed, *result.ignored, *result.gave_up):
            self._failures.pop(event_id, None)
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
        return result

    async def _one(self, event: Event, result: PassResult) -> bool:
        """Route one event into `result`; False when it stays pending (and so must its
        user's later events)."""
        if result.outage and self.router.needs_temporal(event):
            result.held += 1
            return False
        try:
            outcome = await self.router.route(event)
        except Exception as exc:
            error = describe(exc)
            if retry_later(exc):
                if is_outage(exc) and not result.outage:
                    result.outage = True
                    result.outage_error = error
                result.failures.append((event.id, error))
                result.held += 1
                return False
            count = self._failures.get(event.id, 0) + 1
            self._failures[event.id] = count
            if count < self.max_attempts:
                log.warning(
                    "routing event %s failed (attempt %d of %d): %s",
                    event.message_id,
                    count,
                    self.max_attempts,
                    error,
                )
                result.failures.append((event.id, error))
                result.held += 1
                return False
            log.error(
                "GAVE UP routing event %s (id %d, user %r, %r) after %d attempts; it is "
                "marked failed and the user's later events go on: %s",
                event.message_id,
                event.id,
                event.user_id,
                event.name,
                count,
                error,
                exc_info=exc,
            )
            result.failures.append((event.id, GAVE_UP.format(n=count) + error))
            result.gave_up.append(event.id)
            return True
        (result.routed if outcome is Outcome.routed else result.ignored).append(event.id)
        return True
