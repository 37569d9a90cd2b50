"""api: ingestion's back-pressure — the outbox's backlog counted once in a while per API
process, and the 429 that refuses a request that would add to it while it is at the limit.

A request's own cost is a clock reading. The count (`SELECT count(*)` over the pending rows,
on `ix_events_status_id`, stopped at twice the limit) runs at most once per `ttl_seconds`
per process, by the request that finds the last one stale; meanwhile the others go on with
the last one (only a process's very first count is waited for). Each process sees the
backlog at most about `ttl_seconds` late, so several processes together may write up to
that long past the limit: a soft limit, which is all back-pressure needs."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from sqlalchemy import func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.ingestion import TrackingError
from core.backlog import Refusal, Sample, drain_rate, refusal
from store.events import EventStatus
from store.models import Event

TTL_SECONDS = 1.0
"""How long one count of the backlog stands for every request of this process."""
RATE_WINDOW_SECONDS = 30.0
"""The drain rate behind `Retry-After` is measured over the counts of the last this long."""
COUNT_CAP = 2
"""The count stops at this many times the limit: a buried outbox costs no more to count
than one at twice the limit, and is refused all the same."""


class Backlog:
    """The pending events of the outbox as this process last counted them, and the decision
    to refuse (`core.backlog.refusal`) made from that count and the drain rate seen."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        limit: int | None,
        ttl_seconds: float = TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.sessions = sessions
        self.limit = limit or None
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.counted = 0
        """How many times this process counted the backlog."""
        self._samples: deque[Sample] = deque()
        self._counting = asyncio.Lock()

    async def admit(self) -> None:
        """Let a request that writes events go on, or raise the 429 that refuses it (before
        anything is written). Without a limit, nothing is counted."""
        refused = await self.refusal()
        if refused is None:
            return
        wait = str(refused.retry_after)
        # Retry-After is what Segment's libraries read; analytics.js before 2026 read
        # X-RateLimit-Reset (in seconds) instead.
        raise TrackingError(
            429, [refused.message], {"Retry-After": wait, "X-RateLimit-Reset": wait}
        )

    async def refusal(self) -> Refusal | None:
        """What to answer a request that would write events now: None to go on."""
        if self.limit is None:
            return None
        latest = await self._latest()
        if latest.pending < self.limit:
            return None  # the common case, which needs no rate
        return refusal(
            pending=latest.pending,
            limit=self.limit,
            rate=drain_rate(self._samples),
            at_least=latest.pending >= self.limit * COUNT_CAP,
        )

    async def _latest(self) -> Sample:
        """The newest count, counting again when it is older than `ttl_seconds`."""
        if self._fresh():
            return self._samples[-1]
        if self._counting.locked() and self._samples:
            return self._samples[-1]  # another request is counting: no one else waits
        async with self._counting:
            if not self._fresh():  # the request that held the lock may have counted
                self._add(await self._count())
            return self._samples[-1]

    def _fresh(self) -> bool:
        return bool(self._samples) and self.clock() - self._samples[-1].at < self.ttl_seconds

    def _add(self, pending: int) -> None:
        at = self.clock()
        self._samples.append(Sample(at=at, pending=pending))
        while self._samples[0].at < at - RATE_WINDOW_SECONDS:
            self._samples.popleft()

    async def _count(self) -> int:
        assert self.limit is not None
        pending = (
            select(literal(1))
            .select_from(Event)
            .where(Event.status == EventStatus.pending.value)
            .limit(self.limit * COUNT_CAP)
            .subquery()
        )
        async with self.sessions() as session:
            count: int = (
                await session.execute(select(func.count()).select_from(pending))
            ).scalar_one()
        self.counted += 1
        return count
