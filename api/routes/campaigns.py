"""api: campaigns — save definitions (JSON or YAML) as versions, publish them, compare
them, read them, change status.

Saving never changes live traffic once a campaign has left draft: a changed definition is a
draft version until it is published (`/publish`, or `?activate=true` on the save).

Every change here tells this process's routing index to reload before answering, so
the next event sees it; other API processes notice within `campaign_refresh_seconds`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from api.deps import AdminDep, CampaignIndexDep, SessionDep
from api.schemas import (
    MAX_VERSION,
    CampaignDetail,
    CampaignDiff,
    CampaignId,
    CampaignPublic,
    CampaignPublished,
    CampaignSaved,
    CampaignsPublic,
    CampaignVersionPublic,
    CampaignVersionSummary,
    Message,
    ProblemsResponse,
    PublishRequest,
    VersionNumber,
)
from api.stats import campaign_funnel
from core.definition import (
    CampaignDefinition,
    CampaignStatus,
    DefinitionError,
    parse_campaign,
)
from core.events import MAX_JSON_DEPTH, loads, safe_text
from core.stats import CampaignFunnel
from core.versions import compare_definitions
from store import campaigns as store
from store.campaigns import CampaignNotFound, CampaignStateError, VersionUnavailable
from store.models import Campaign, CampaignVersion

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"], dependencies=[AdminDep])

MAX_DEFINITION_BYTES = 1024 * 1024
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def definition_body(what: str) -> dict[str, Any]:
    """OpenAPI for a definition posted as JSON or YAML (read by hand, like the routes do)."""
    return {
        "requestBody": {
            "required": True,
            "description": f"A {what} definition, as JSON or as YAML "
            "(`Content-Type: application/yaml`).",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    }


SAVE_DOC = definition_body("campaign")
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "missing or wrong admin token"},
    404: {"model": Message, "description": "no such campaign"},
    409: {"model": Message, "description": "the campaign's status does not allow it"},
}
SAVE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"model": Message, "description": "the path's id and the definition's id differ"},
    422: {"model": ProblemsResponse, "description": "the definition cannot run: each problem"},
}


async def read_definition(request: Request) -> CampaignDefinition:
    """The body as a campaign definition (`read_document`)."""
    return await read_document(request, parse_campaign)


Parsed = TypeVar("Parsed")


async def read_document(request: Request, parse: Callable[[Any], Parsed]) -> Parsed:
    """The body as a definition (JSON, or YAML by its content type) read by `parse`; 422
    `{"detail": {"problems": [...]}}` naming each path when it is wrong."""
    body = await request.body()
    if len(body) > MAX_DEFINITION_BYTES:
        raise HTTPException(413, f"a definition is at most {MAX_DEFINITION_BYTES // 1024} KB")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type in YAML_TYPES:
            return parse(body)
        try:
            data = loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DefinitionError(
                [f"not valid JSON: {exc} (send YAML with Content-Type: application/yaml)"]
            ) from exc
        except RecursionError:
            raise DefinitionError(
                [f"the definition nests deeper than {MAX_JSON_DEPTH} levels"]
            ) from None
        return parse(data)
    except DefinitionError as exc:
        # A problem can quote what was sent; the answer must still encode as JSON.
        raise HTTPException(422, {"problems": [safe_text(p) for p in exc.problems]}) from exc


def not_found(exc: CampaignNotFound) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))


def conflict(exc: CampaignStateError) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, str(exc))


ACTIVATE = Query(
    description="also publish the saved version (the one the definition matches, when "
    "nothing changed) and activate the campaign, in the same transaction: new journeys "
    "enter this definition from the answer on"
)


Shown = TypeVar("Shown", bound=CampaignVersionSummary)


def version_public(model: type[Shown], campaign: Campaign, row: CampaignVersion) -> Shown:
    """A stored version as the API shows it, with its state in `campaign`."""
    fields = {name: getattr(row, name) for name in model.model_fields if name != "state"}
    return model(**fields, state=store.version_state(campaign, row))


def unavailable(exc: VersionUnavailable) -> HTTPException:
    """No such version: 404; one that no longer validates cannot be published: 409."""
    code = status.HTTP_404_NOT_FOUND if exc.missing else status.HTTP_409_CONFLICT
    return HTTPException(code, str(exc))


async def save(
    *,
    session: SessionDep,
    index: CampaignIndexDep,
    definition: CampaignDefinition,
    response: Response,
    activate: bool = False,
) -> CampaignSaved:
    try:
        campaign, version, new_version = await store.save_campaign(
            session=session, definition=definition
        )
        if activate:
            published = await store.publish_version(
                session=session, campaign_id=campaign.id, version=version.version
            )
            version = published.version
            campaign = await store.set_status(
                session=session, campaign_id=campaign.id, status=CampaignStatus.active
            )
    except VersionUnavailable as exc:
        raise unavailable(exc) from exc
    except CampaignStateError as exc:
        raise conflict(exc) from exc
    await session.commit()
    if new_version:
        response.status_code = status.HTTP_201_CREATED
    if new_version or activate:
        # A new version can bring reactions (wait_for, goals, exits) even when not active.
        await index.changed()
    return CampaignSaved(
        campaign=CampaignPublic.model_validate(campaign),
        version=version_public(CampaignVersionPublic, campaign, version),
        new_version=new_version,
    )


@router.post(
    "",
    response_model=CampaignSaved,
    status_code=status.HTTP_200_OK,
    responses={201: {"model": CampaignSaved, "description": "a new version"}, **SAVE_ERRORS},
    openapi_extra=SAVE_DOC,
    summary="Create a campaign, or add a version when its definition changed",
)
async def create_campaign(
    request: Request,
    response: Response,
    session: SessionDep,
    index: CampaignIndexDep,
    activate: Annotated[bool, ACTIVATE] = False,
) -> CampaignSaved:
    """A new campaign is a draft at version 1. A changed definition of a campaign still in
    draft becomes its current version at once; once the campaign has been activated, it is
    a draft version that new journeys do not enter until it is published
    (`POST /v1/campaigns/{id}/publish`, or `?activate=true` here)."""
    definition = await read_definition(request)
    return await save(
        session=session, index=index, definition=definition, response=response, activate=activate
    )


@router.put(
    "/{campaign_id}",
    response_model=CampaignSaved,
    responses={201: {"model": CampaignSaved, "description": "a new version"}, **SAVE_ERRORS},
    openapi_extra=SAVE_DOC,
    summary="Save a campaign under its id (same as POST; the ids must agree)",
)
async def put_campaign(
    campaign_id: CampaignId,
    request: Request,
    response: Response,
    session: SessionDep,
    index: CampaignIndexDep,
    activate: Annotated[bool, ACTIVATE] = False,
) -> CampaignSaved:
    definition = await read_definition(request)
    if definition.id != campaign_id:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"the path names campaign {campaign_id!r} but the definition's id is "
            f"{definition.id!r}; they must be the same",
        )
    return await save(
        session=session, index=index, definition=definition, response=response, activate=activate
    )


@router.get("", response_model=CampaignsPublic, summary="List campaigns")
async def list_campaigns(
    session: SessionDep, status: CampaignStatus | None = None
) -> CampaignsPublic:
    campaigns = await store.list_campaigns(session=session, status=status)
    return CampaignsPublic(
        data=[CampaignPublic.model_validate(c) for c in campaigns], count=len(campaigns)
    )


@router.get(
    "/{campaign_id}",
    response_model=CampaignDetail,
    responses=ERRORS,
    summary="A campaign: status, current definition, versions (live, draft or retired)",
)
async def get_campaign(campaign_id: CampaignId, session: SessionDep) -> CampaignDetail:
    campaign = await store.get_campaign(session=session, campaign_id=campaign_id)
    if campaign is None:
        raise not_found(CampaignNotFound(campaign_id))
    versions = await store.list_versions(session=session, campaign_id=campaign_id)
    current = next(v for v in versions if v.version == campaign.current_version)
    return CampaignDetail(
        **CampaignPublic.model_validate(campaign).model_dump(),
        definition=current.definition,
        latest_version=versions[-1].version,
        versions=[version_public(CampaignVersionSummary, campaign, v) for v in versions],
    )


@router.get(
    "/{campaign_id}/stats",
    response_model=CampaignFunnel,
    responses=ERRORS,
    summary="A campaign's funnel: entered, sent, delivered, opened, clicked, converted",
)
async def get_stats(
    campaign_id: CampaignId,
    session: SessionDep,
    since: Annotated[
        datetime | None, Query(description="from this instant (rounded down to its hour)")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="before this instant (rounded up to its hour)")
    ] = None,
) -> CampaignFunnel:
    """From the stats aggregates, kept current as things happen: per campaign, version,
    step and group (the holdout, everyone messaged, each `split` variant, with its lift
    over the holdout and the control), and how journeys ended."""
    if await store.get_campaign(session=session, campaign_id=campaign_id) is None:
        raise not_found(CampaignNotFound(campaign_id))
    since, until = (_aware(since, "since"), _aware(until, "until"))
    if since is not None and until is not None and since >= until:
        raise HTTPException(400, "since must be before until")
    return await campaign_funnel(session, campaign_id=campaign_id, since=since, until=until)


def _aware(at: datetime | None, name: str) -> datetime | None:
    """Query instants without a zone are UTC."""
    if at is None:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@router.get(
    "/{campaign_id}/versions/{version}",
    response_model=CampaignVersionPublic,
    responses=ERRORS,
    summary="One version of a campaign, as it was saved",
)
async def get_version(
    campaign_id: CampaignId, version: VersionNumber, session: SessionDep
) -> CampaignVersionPublic:
    campaign = await store.get_campaign(session=session, campaign_id=campaign_id)
    if campaign is None:
        raise not_found(CampaignNotFound(campaign_id))
    found = await store.get_version(session=session, campaign_id=campaign_id, version=version)
    if found is None:
        raise HTTPException(404, f"campaign {campaign_id!r} has no version {version}")
    return version_public(CampaignVersionPublic, campaign, found)


@router.post(
    "/{campaign_id}/publish",
    response_model=CampaignPublished,
    responses={
        **ERRORS,
        400: {"model": Message, "description": "the query and the body name different versions"},
        404: {"model": Message, "description": "no such campaign, or no such version"},
        409: {
            "model": Message,
            "description": "the campaign is archived, or the version no longer validates",
        },
    },
    summary="Make a version the one new journeys enter (default: the latest; older: a rollback)",
)
async def publish(
    campaign_id: CampaignId,
    session: SessionDep,
    index: CampaignIndexDep,
    version: Annotated[
        int | None,
        Query(ge=1, le=MAX_VERSION, description="the version to publish; default: the latest"),
    ] = None,
    body: PublishRequest | None = None,
) -> CampaignPublished:
    """Journeys already running keep the version they started on. Publishing the live
    version again changes nothing (`changed: false`)."""
    if body is not None and body.version is not None:
        if version is not None and version != body.version:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                f"the query names version {version} but the body version {body.version}; "
                "name it once",
            )
        version = body.version
    try:
        done = await store.publish_version(
            session=session, campaign_id=campaign_id, version=version
        )
    except CampaignNotFound as exc:
        raise not_found(exc) from exc
    except VersionUnavailable as exc:
        raise unavailable(exc) from exc
    except CampaignStateError as exc:
        raise conflict(exc) from exc
    published = CampaignPublished(
        campaign=CampaignPublic.model_validate(done.campaign),
        version=version_public(CampaignVersionSummary, done.campaign, done.version),
        previous_version=done.previous,
        changed=done.changed,
    )
    await session.commit()
    if done.changed:
        await index.changed()
    return published


@router.get(
    "/{campaign_id}/diff",
    response_model=CampaignDiff,
    responses={**ERRORS, 404: {"model": Message, "description": "no such campaign or version"}},
    summary="What changed between two versions: a unified diff as YAML, and the steps changed",
)
async def diff(
    campaign_id: CampaignId,
    session: SessionDep,
    from_version: Annotated[
        int | None,
        Query(alias="from", ge=1, le=MAX_VERSION, description="default: the current version"),
    ] = None,
    to_version: Annotated[
        int | None,
        Query(alias="to", ge=1, le=MAX_VERSION, description="default: the latest version"),
    ] = None,
) -> CampaignDiff:
    campaign = await store.get_campaign(session=session, campaign_id=campaign_id)
    if campaign is None:
        raise not_found(CampaignNotFound(campaign_id))
    old_number = campaign.current_version if from_version is None else from_version
    if to_version is None:
        to_version = await store.latest_version(session=session, campaign_id=campaign_id)
    sides = []
    for number in (old_number, to_version):
        row = await store.get_version(session=session, campaign_id=campaign_id, version=number)
        if row is None:
            raise HTTPException(404, f"campaign {campaign_id!r} has no version {number}")
        sides.append(_document(row))
    changes = compare_definitions(
        sides[0],
        sides[1],
        old_label=f"{campaign_id} v{old_number}",
        new_label=f"{campaign_id} v{to_version}",
    )
    return CampaignDiff(
        campaign_id=campaign_id,
        from_version=old_number,
        to_version=to_version,
        **changes.model_dump(),
    )


def _document(row: CampaignVersion) -> dict[str, Any]:
    """A version in today's field order; as stored when today's rules refuse it (its diff
    is still worth reading)."""
    try:
        return store.definition_document(store.definition_of(row))
    except VersionUnavailable:
        return row.definition


async def move(
    *, session: SessionDep, index: CampaignIndexDep, campaign_id: str, target: CampaignStatus
) -> CampaignPublic:
    try:
        campaign = await store.set_status(session=session, campaign_id=campaign_id, status=target)
    except CampaignNotFound as exc:
        raise not_found(exc) from exc
    except CampaignStateError as exc:
        raise conflict(exc) from exc
    await session.commit()
    await index.changed()
    return CampaignPublic.model_validate(campaign)


TRANSITIONS: tuple[tuple[str, CampaignStatus, str], ...] = (
    (
        "activate",
        CampaignStatus.active,
        "Start entering users into journeys on the current version",
    ),
    ("pause", CampaignStatus.paused, "Stop entering users; running journeys go on"),
    ("archive", CampaignStatus.archived, "Retire a campaign for good; running journeys go on"),
)
"""Each status change an operator asks for: its path, the status it moves to, its summary."""


def _transition(target: CampaignStatus) -> Any:
    async def endpoint(
        campaign_id: CampaignId, session: SessionDep, index: CampaignIndexDep
    ) -> CampaignPublic:
        return await move(session=session, index=index, campaign_id=campaign_id, target=target)

    return endpoint


for _action, _target, _summary in TRANSITIONS:
    router.post(
        f"/{{campaign_id}}/{_action}",
        response_model=CampaignPublic,
        responses=ERRORS,
        summary=_summary,
        name=_action,
    )(_transition(_target))
