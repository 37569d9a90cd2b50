"""activities: housekeeping a schedule asks for — forgetting sends no cap counts any more."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from core.config import Settings
from core.housekeeping import ACTIVITY_PRUNE_LEDGER, LedgerPruned, PruneLedgerRequest
from core.policy import ledger_horizon
from store.campaigns import cap_windows
from store.caps import prune_ledger


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

    def all(self) -> list[Any]:
        return [self.prune_send_ledger]
