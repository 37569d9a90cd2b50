"""api: move waiting journeys to a newer version — `POST /v1/campaigns/{id}/migrations`: the
migration, or its dry run, as a Temporal workflow (`campaign_migration`, a page of journeys
at a time) answered with its report when it ends within a few seconds, else with its
progress; `GET …/migrations/{operation_id}` reads it — also once it failed or was stopped:
how far it got, and why it stopped."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.service import RPCError

from api.deps import AdminDep, SessionDep, SettingsDep, TemporalDep
from api.routes.operations import OperationPublic, read_operation, start_operation
from api.schemas import MAX_VERSION, CampaignId, Message, ProblemsResponse
from core.journey import mapping_problems
from core.operations import (
    REQUEST_ID,
    WORKFLOW_MIGRATION,
    WORKFLOW_MIGRATION_DRY_RUN,
    JourneysPerPage,
    MigrationInput,
    MigrationProgress,
    MigrationReport,
    OperationRequestId,
    migration_id,
)
from store.campaigns import get_campaign, get_version, load_definition, version_state

RPC_TIMEOUT = timedelta(seconds=15)
WAIT_SECONDS = 5.0
"""How long `POST …/migrations` waits for the migration to end before answering 202."""
DRY_RUN = "dry-"
"""Begins a dry run's operation id (the request id follows): a dry run and the migration
after it with the same `request_id` are two operations, two workflows, never one."""

router = APIRouter(prefix="/v1/campaigns", tags=["migrations"], dependencies=[AdminDep])


class MigrationCreate(BaseModel):
    """Which journeys move (those waiting in `from_version`), where to, and how their steps
    map. A waiting step absent from `steps` lands on the new version's step of the same id
    and type, if there is one; otherwise its journeys stay."""

    # A misspelt `dry_run` would otherwise move the journeys it meant to count.
    model_config = ConfigDict(extra="forbid")

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
        False,
        description="only report how many journeys sit at each step and where they land: "
        "the same paged operation, moving and recording nothing (its operation id: `dry-` "
        "and the request id)",
    )
    by: str | None = Field(None, max_length=200, description="who asks, for each journey's history")
    reason: str | None = Field(None, max_length=500)
    request_id: OperationRequestId = None
    page_size: JourneysPerPage = 100
    wait_seconds: float = Field(
        default=WAIT_SECONDS,
        ge=0,
        le=30,
        description="how long a migration (or its dry run) may take to end before the answer "
        "is 202 with its progress (0: at once)",
    )


class MigrationOperation(OperationPublic):
    """A migration (or its dry run) still going, or read back: its workflow's status and
    the report so far (`progress.report`; final once `status` is `completed`).
    `GET /v1/campaigns/{id}/migrations/{operation_id}` reads it again; a dry run's
    operation id begins with `dry-`. Once it stopped, the page it was in, if any, is not
    counted (the journeys that page moved are recorded on each journey and in the
    membership index)."""

    campaign_id: str
    progress: MigrationProgress


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "missing or wrong admin token"},
    404: {"model": Message, "description": "no such campaign, or no such version of it"},
    409: {
        "model": Message,
        "description": "the new version is a draft (publish it first), or no longer validates",
    },
    422: {"model": ProblemsResponse, "description": "the versions or the mapping: each problem"},
    502: {"model": Message, "description": "Temporal refused the call, or the migration failed"},
    503: {"model": Message, "description": "Temporal is unreachable"},
    504: {"model": Message, "description": "no worker answered in time"},
}


@router.post(
    "/{campaign_id}/migrations",
    response_model=MigrationReport,
    responses={
        **ERRORS,
        202: {
            "model": MigrationOperation,
            "description": "the migration goes on (or `wait_seconds` was 0): its operation "
            "and progress so far",
        },
    },
    summary="Migrate journeys waiting in one version to a newer one (or a dry run of it)",
)
async def migrate_campaign(
    campaign_id: CampaignId,
    body: MigrationCreate,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> Any:
    """Journeys waiting at a `wait` or `wait_for` step of `from_version` move to the step
    the mapping names in `to_version`, keeping the time they have waited; journeys mid-send
    (or at a branch or split) stay, each with its reason. Each journey applies the move
    itself (the `migrate` update) at a safe point; the answer counts journeys per step.

    The migration runs as a workflow (`campaign_migration`) paging the journeys of
    `from_version` and recording each page's moves as it goes: 200 with its report when it
    ends within `wait_seconds` (5), else 202 with its `operation_id` and progress (read it
    again with `GET …/migrations/{operation_id}`). A dry run is the same workflow asking
    each journey where it would land, moving and recording none, answered the same way;
    its `operation_id` is `dry-` and the request id. The same `request_id` again finds the
    same migration (or the same dry run)."""
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
    if not body.dry_run and (body.request_id or "").startswith(DRY_RUN):
        problems.append(
            f"request_id: {body.request_id!r} begins with {DRY_RUN!r}, as the operation of a "
            "dry run does: name the migration otherwise (it may share its dry run's request id)"
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
    # Nothing held open while the migration (or its dry run) runs.
    await session.rollback()
    return await _start(client, settings.task_queue, campaign_id, body)


async def _start(
    client: Client, task_queue: str, campaign_id: str, body: MigrationCreate
) -> MigrationReport | JSONResponse:
    """Start the migration's workflow, or its dry run's (or find the one of the same
    request id), and wait a few seconds for its report."""
    operation_id = body.request_id or uuid.uuid4().hex[:16]
    if body.dry_run:
        operation_id = DRY_RUN + operation_id
    workflow_id = migration_id(campaign_id, operation_id)
    handle = await start_operation(
        client,
        WORKFLOW_MIGRATION_DRY_RUN if body.dry_run else WORKFLOW_MIGRATION,
        MigrationInput(
            campaign_id=campaign_id,
            from_version=body.from_version,
            to_version=body.to_version,
            steps=body.steps,
            by=body.by,
            reason=body.reason,
            request_id=operation_id,
            page_size=body.page_size,
            dry_run=body.dry_run,
        ),
        workflow_id=workflow_id,
        task_queue=task_queue,
        summary=f"{'dry run: ' if body.dry_run else ''}migrate {campaign_id} "
        f"v{body.from_version} → v{body.to_version}",
    )
    typed = client.get_workflow_handle(workflow_id, result_type=MigrationProgress)
    if body.wait_seconds > 0:
        try:
            progress: MigrationProgress = await asyncio.wait_for(
                typed.result(), timeout=body.wait_seconds
            )
        except (TimeoutError, RPCError, RPCTimeoutOrCancelledError):
            pass  # started, not ended yet (or Temporal stopped answering since): it goes on
        except WorkflowFailureError as exc:
            raise _failed(exc, dry_run=body.dry_run) from exc
        else:
            return progress.report
    operation = await _operation(
        client,
        handle,
        campaign_id,
        operation_id,
        peek=True,
        versions=(body.from_version, body.to_version),
    )
    # Its own shape (documented as the 202 answer), not the route's report.
    return JSONResponse(operation.model_dump(mode="json"), status.HTTP_202_ACCEPTED)


@router.get(
    "/{campaign_id}/migrations/{operation_id}",
    response_model=MigrationOperation,
    responses={
        401: ERRORS[401],
        404: {"model": Message, "description": "no such migration"},
        502: ERRORS[502],
        503: ERRORS[503],
        504: ERRORS[504],
    },
    summary="A migration's (or a dry run's) status and its report so far",
)
async def get_migration(
    campaign_id: CampaignId, operation_id: str, client: TemporalDep
) -> MigrationOperation:
    request_id = operation_id.removeprefix(DRY_RUN)
    if re.fullmatch(REQUEST_ID, request_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no migration {operation_id!r}")
    handle = client.get_workflow_handle(migration_id(campaign_id, operation_id))
    return await _operation(client, handle, campaign_id, operation_id)


async def _operation(
    client: Client,
    handle: WorkflowHandle[Any, Any],
    campaign_id: str,
    operation_id: str,
    *,
    peek: bool = False,
    versions: tuple[int, int] = (0, 0),
) -> MigrationOperation:
    """The migration's status and progress (`read_operation`). `versions`: for an empty
    report, when known."""
    empty = MigrationProgress(
        report=MigrationReport(
            campaign_id=campaign_id,
            from_version=versions[0],
            to_version=versions[1],
            dry_run=operation_id.startswith(DRY_RUN),
            operation_id=operation_id,
        )
    )
    read = await read_operation(
        client,
        handle,
        MigrationProgress,
        empty,
        missing=f"no migration {operation_id!r} of campaign {campaign_id!r}",
        peek=peek,
    )
    return MigrationOperation(
        operation_id=operation_id, campaign_id=campaign_id, workflow_id=handle.id, **read.answer()
    )


def _failed(exc: WorkflowFailureError, *, dry_run: bool) -> HTTPException:
    """A migration (or its dry run) that failed (its target version gone, …): 502 with the
    cause's words."""
    cause = getattr(exc.cause, "cause", None) or exc.cause or exc
    what = "dry run of the migration" if dry_run else "migration"
    return HTTPException(status.HTTP_502_BAD_GATEWAY, f"the {what} failed: {cause}")
