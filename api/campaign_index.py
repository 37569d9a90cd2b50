"""api: the routing index of this API process — loaded from the store, kept current.

Campaign versions never change, so each is read and validated once per process: a reload
reads the keys of every version and the definitions of only those it has not seen. Changes
made through this process reload at once; changes made by another API process are noticed
by one cheap query at most every `campaign_refresh_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.conditions import Condition
from core.config import Settings
from core.definition import Attribution, CampaignDefinition, JourneyPlan
from core.routing import ActiveCampaign, CampaignIndex
from store import campaigns as store
from store.campaigns import VersionUnavailable
from store.models import CampaignVersion

log = logging.getLogger("nudge.routing")


@dataclass(frozen=True)
class GoalWatch:
    campaign_id: str
    conditions: list[Condition]
    attribution: Attribution


def goal_watches(definitions: Iterable[CampaignDefinition]) -> dict[str, list[GoalWatch]]:
    watches: dict[str, list[GoalWatch]] = {}
    for definition in definitions:
        for goal in definition.goals:
            watches.setdefault(goal.event, []).append(
                GoalWatch(definition.id, goal.conditions, definition.attribution)
            )
    return watches


class IndexNotLoaded(RuntimeError):
    """The routing index could not be read yet (the database is unreachable)."""


class CampaignIndexLoader:
    """Holds the current `CampaignIndex` and the definitions parsed so far."""

    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], settings: Settings):
        self.sessions = sessions
        self.settings = settings
        self._index: CampaignIndex | None = None
        self._changed_at: datetime | None = None
        self._checked_at = 0.0
        self._parsed: dict[tuple[str, int], tuple[CampaignDefinition, JourneyPlan] | None] = {}
        """Every version read so far, with its plan; None for one today's rules refuse
        (logged once)."""
        self._lock = asyncio.Lock()
        self.goals: dict[str, list[GoalWatch]] = {}
        """By event name: the campaigns (any status: a message sent before a pause still
        converts) whose current version has it as a goal, for attribution (a draft
        version's goals count once it is published)."""

    @property
    def index(self) -> CampaignIndex:
        if self._index is None:
            raise IndexNotLoaded("the routing index is not loaded")
        return self._index

    @property
    def loaded(self) -> bool:
        return self._index is not None

    async def reload(self) -> CampaignIndex:
        """Read the index from the store now."""
        async with self._lock:
            async with self.sessions() as session:
                # Read the mark first: a change committed while loading triggers another reload.
                changed_at = await store.latest_change(session=session)
                keys = await store.version_keys(session=session)
                unseen = [k.key for k in keys if k.key not in self._parsed]
                for row in await store.get_versions(session=session, keys=unseen):
                    self._parsed[(row.campaign_id, row.version)] = self._parse(row)
            active = []
            versions = []
            current: dict[str, CampaignDefinition] = {}
            for key in keys:
                parsed = self._parsed.get(key.key)
                if parsed is None:
                    continue
                definition, plan = parsed
                if key.current:
                    current[key.campaign_id] = definition
                versions.append((key.campaign_id, plan))
                if key.live:
                    active.append(ActiveCampaign(key.campaign_id, key.version, definition, plan))
            self._index = CampaignIndex.build(active=active, versions=versions)
            self.goals = goal_watches(current.values())
            self._changed_at = changed_at
            self._checked_at = time.monotonic()
            return self._index

    def _parse(self, row: CampaignVersion) -> tuple[CampaignDefinition, JourneyPlan] | None:
        try:
            definition = store.definition_of(row)
        except VersionUnavailable as exc:
            # A stored version today's rules refuse must not stop every campaign: it is
            # left out (no journey enters it, its journeys get no events) and said once.
            log.error("%s; it is left out of routing", exc)
            return None
        return definition, definition.plan()

    async def changed(self) -> None:
        """This process changed a campaign: reload now. A failure is logged, not raised —
        the change is committed, and the next refresh picks it up."""
        try:
            await self.reload()
        except Exception:
            self._checked_at = 0.0
            log.exception("reloading the routing index failed; the next relay pass retries")

    async def refresh(self) -> CampaignIndex:
        """Reload when another API process changed campaigns; checked at most every
        `campaign_refresh_seconds`, with one cheap query."""
        if self._index is None:
            return await self.reload()
        if time.monotonic() - self._checked_at < self.settings.campaign_refresh_seconds:
            return self._index
        async with self.sessions() as session:
            changed_at = await store.latest_change(session=session)
        self._checked_at = time.monotonic()
        if changed_at != self._changed_at:
            log.info("campaigns changed elsewhere; reloading the routing index")
            return await self.reload()
        return self._index
