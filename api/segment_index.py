"""api: this process's segments, kept current like the campaign index, and taking each
relayed event into segment membership (store.segments.update_for_event).

With no segment defined, an event costs nothing here: the list is empty and nothing is
read. Changes made through this process reload at once; changes made by another API
process are noticed by one cheap query at most every `campaign_refresh_seconds` (and the
update itself reads each segment's version and status inside its transaction, so a
definition changed meanwhile is read then).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.config import Settings
from store import segments as store
from store.models import Event
from store.segments import LiveSegment, Transition

log = logging.getLogger("nudge.segments")


def utcnow() -> datetime:
    return datetime.now(UTC)


class SegmentIndexLoader:
    """Holds the defined segments, parsed, and takes events into their membership."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self._segments: list[LiveSegment] | None = None
        self._mark: tuple[int, datetime | None] | None = None
        self._checked_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def segments(self) -> list[LiveSegment]:
        return self._segments or []

    async def reload(self) -> list[LiveSegment]:
        async with self._lock:
            async with self.sessions() as session:
                mark = await store.segments_mark(session=session)
                loaded = await store.live_segments(session=session)
            self._segments = loaded
            self._mark = mark
            self._checked_at = time.monotonic()
            return loaded

    async def changed(self) -> None:
        """This process changed a segment: reload now (a failure waits for the next
        refresh: the change is committed)."""
        try:
            await self.reload()
        except Exception:
            self._checked_at = 0.0
            log.exception("reloading the segments failed; the next relay pass retries")

    async def refresh(self) -> list[LiveSegment]:
        """Reload when another process changed segments; checked at most every
        `campaign_refresh_seconds`, with one cheap query."""
        if self._segments is None:
            return await self.reload()
        if time.monotonic() - self._checked_at < self.settings.campaign_refresh_seconds:
            return self._segments
        async with self.sessions() as session:
            mark = await store.segments_mark(session=session)
        self._checked_at = time.monotonic()
        if mark != self._mark:
            return await self.reload()
        return self._segments

    async def take_in(self, event: Event) -> list[Transition]:
        """Update the event's user's counters and memberships, in one transaction; the
        flips it returns were written to the outbox as internal events."""
        if not self._segments:
            return []
        async with self.sessions() as session:
            transitions = await store.update_for_event(
                session, event=event, segments=self._segments, now=self.clock()
            )
            await session.commit()
        return transitions
