"""api: move waiting journeys to a newer version — `POST /v1/campaigns/{id}/migrations`, a
dry run or the migration itself, answered with what happened to each step's journeys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from api.deps import AdminDep, SessionDep, TemporalDep
from api.schemas import MAX_VERSION, CampaignId, Message, ProblemsResponse
from core.journey import mapping_problems
from store.campaigns import get_campaign, get_version, load_definition, version_state
from store.journey_versions import move_to_version, running_on_version
from temporal.migrate import MigrationReport, migrate_journeys

router = APIRouter(prefix="/v1/campaigns", tags=["migrations"], dependencies=[AdminDep])


class MigrationCreate(BaseModel):
    """Which journeys move (those waiting in `from_version`), where to, and how their steps
    map. A waiting step absent from `steps` lands on the new version's step of the same id
    and type, if there is one; otherwise its journeys stay."""

    from_version: int = Field(ge=1, le=MAX_VERSION)
    to_version: int = Field(
        ge=1, le=MAX_VERSION, description="newer than from_version; published, but for a dry run"
    )
    steps: dict[str, str] = Field(
        default_factory=dict,
        max_length=500,
        description="old step id → new step id",
        examples=[{"wait": "pause"}],
    )
    dry_run: bool = Field(
        False, description="only report how many journeys sit at each step and where they land"
    )
    by: str | None = Field(None, max_length=200, description="who asks, for each journey's history")
    reason: str | None = Field(None, max_length=500)


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "missing or wrong admin token"},
    404: {"model": Message, "description": "no such campaign, or no such version of it"},
    409: {
        "model": Message,
        "description": "the new version is a draft (publish it first), or no longer validates",
    },
    422: {"model": ProblemsResponse, "description": "the versions or the mapping: each problem"},
    503: {"model": Message, "description": "Temporal is unreachable"},
}


@router.post(
    "/{campaign_id}/migrations",
    response_model=MigrationReport,
    responses=ERRORS,
    summary="Migrate journeys waiting in one version to a newer one (or a dry run of it)",
)
async def migrate_campaign(
    campaign_id: CampaignId, body: MigrationCreate, session: SessionDep, client: TemporalDep
) -> MigrationReport:
    """Journeys waiting at a `wait` or `wait_for` step of `from_version` move to the step
    the mapping names in `to_version`, keeping the time they have waited; journeys mid-send
    (or at a branch or split) stay, each with its reason. Each journey applies the move
    itself (the `migrate` update) at a safe point; the answer counts journeys per step."""
    campaign = await get_campaign(session=session, campaign_id=campaign_id)
    if campaign is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no campaign {campaign_id!r}")
    # VersionUnavailable: 404 when missing, 409 when it no longer validates (api.app).
    old = await load_definition(session=session, campaign_id=campaign_id, version=body.from_version)
    new = await load_definition(session=session, campaign_id=campaign_id, version=body.to_version)
    problems = mapping_problems(
        body.steps,
        old=old.plan(),
        new=new.plan(),
        from_version=body.from_version,
        to_version=body.to_version,
    )
    if body.to_version <= body.from_version:
        problems.insert(
            0,
            f"to_version: {body.to_version} is not newer than from_version {body.from_version}",
        )
    if problems:
        raise HTTPException(422, {"problems": problems})
    target = await get_version(session=session, campaign_id=campaign_id, version=body.to_version)
    assert target is not None  # loaded above
    if not body.dry_run and version_state(campaign, target) == "draft":
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"campaign {campaign_id!r} version {body.to_version} is a draft: publish it first "
            f"(nudge campaigns publish {campaign_id} --version {body.to_version}); "
            "a dry run works on a draft",
        )
    workflow_ids = await running_on_version(
        session=session, campaign_id=campaign_id, version=body.from_version
    )
    # Nothing held open while the journeys are asked: a migration of many takes a while.
    await session.rollback()
    report = await migrate_journeys(
        client,
        workflow_ids=workflow_ids,
        campaign_id=campaign_id,
        from_version=body.from_version,
        to_version=body.to_version,
        plan=new.plan(),
        steps=body.steps,
        dry_run=body.dry_run,
        by=body.by,
        reason=body.reason,
    )
    if report.moved_ids:
        await move_to_version(
            session=session,
            campaign_id=campaign_id,
            workflow_ids=report.moved_ids,
            from_version=body.from_version,
            to_version=body.to_version,
        )
        await session.commit()
    return report
