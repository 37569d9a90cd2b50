"""api: a campaign's funnel, from the stats aggregates and its versions' step graphs — what
`GET /v1/campaigns/{id}/stats` answers and the dashboard shows."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from core.definition import SplitStep
from core.stats import CampaignFunnel, build_funnel
from store import campaigns as campaign_store
from store.campaigns import VersionUnavailable
from store.stats import count_rows


async def campaign_funnel(
    session: AsyncSession,
    *,
    campaign_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> CampaignFunnel:
    """The funnel of a campaign that exists (the caller checks), within [since, until)."""
    step_types: dict[str, str] = {}
    splits: dict[str, list[str]] = {}
    for version in await campaign_store.list_versions(session=session, campaign_id=campaign_id):
        try:
            definition = campaign_store.definition_of(version)
        except VersionUnavailable:
            continue  # a version today's rules refuse: its steps keep their ids, untyped
        for step in definition.steps:
            step_types.setdefault(step.id, step.type)
            if isinstance(step, SplitStep):
                names = splits.setdefault(step.id, [])
                names.extend(v.name for v in step.variants if v.name not in names)
    rows = await count_rows(session, campaign_id=campaign_id, since=since, until=until)
    return build_funnel(
        campaign_id=campaign_id,
        rows=rows,
        step_types=step_types,
        splits=splits,
        since=since,
        until=until,
    )
