"""activities: housekeeping a schedule asks for — forgetting sends no cap counts any more,
and refused messages past their retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from core.config import Settings
from core.housekeeping import (
    ACTIVITY_PRUNE_COUNTERS,
    ACTIVITY_PRUNE_LEDGER,
    ACTIVITY_PRUNE_REJECTED,
    CountersPruned,
    LedgerPruned,
    PruneCountersRequest,
    PruneLedgerRequest,
    PruneRejectedRequest,
    RejectedPruned,
)
from core.policy import ledger_horizon
from store.campaigns import cap_windows
from store.caps import prune_ledger
from store.rejected import prune_rejections
from store.segments import prune_counters


class Housekeeping:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], settings: Settings):
        self._sessions = sessions
        self._settings = settings

    @activity.defn(name=ACTIVITY_PRUNE_LEDGER)
    async def prune_send_ledger(self, request: PruneLedgerRequest) -> LedgerPruned:
        """Delete the send ledger's rows older than the longest window any cap counts them
        in (core.policy.ledger_horizon), so the ledger stays as large as the caps need."""
        async with self._sessions() as session:
            windows = await cap_windows(session=session)
        everyone, longer = ledger_horizon(rules=self._settings.caps, campaign_windows=windows)
        keep = {campaign_id: request.now - window for campaign_id, window in longer.items()}
        async with self._sessions() as session, session.begin():
            deleted = await prune_ledger(session=session, before=request.now - everyone, keep=keep)
        activity.logger.info("send ledger: %d sends older than any cap forgotten", deleted)
        return LedgerPruned(deleted=deleted, kept_since=request.now - everyone, kept_longer=keep)

    @activity.defn(name=ACTIVITY_PRUNE_REJECTED)
    async def prune_rejected_events(self, request: PruneRejectedRequest) -> RejectedPruned:
        """Delete refused ingestion messages older than NUDGE_REJECTED_EVENTS_DAYS: a sender
        that keeps sending bad messages must not grow the log without end."""
        before = request.now - timedelta(days=self._settings.rejected_events_days)
        async with self._sessions() as session, session.begin():
            deleted = await prune_rejections(session=session, before=before)
        activity.logger.info("rejected events: %d older than %s forgotten", deleted, before)
        return RejectedPruned(deleted=deleted, kept_since=before)

    @activity.defn(name=ACTIVITY_PRUNE_COUNTERS)
    async def prune_event_counters(self, request: PruneCountersRequest) -> CountersPruned:
        """Delete segment event counters no segment reads: days before every window that
        counts them, and criteria no segment has any more (store.segments.prune_counters)."""
        async with self._sessions() as session, session.begin():
            deleted = await prune_counters(session, now=request.now)
        activity.logger.info("segment counters: %d rows no segment reads forgotten", deleted)
        return CountersPruned(deleted=deleted)

    def all(self) -> list[Any]:
        return [self.prune_send_ledger, self.prune_rejected_events, self.prune_event_counters]
