"""api: segments — save saved audiences (JSON or YAML), read them with their member
count, page through their members.

A change here tells this process's segment index to reload before answering, so the
next event relayed sees it; other API processes notice within `campaign_refresh_seconds`.
A new or changed segment is `building` until the clock's build steps have evaluated the
users who were there before it (store.segments.build_step); then it is `ready`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AdminDep, SegmentIndexDep, SessionDep
from api.routes.campaigns import definition_body, read_document
from api.schemas import Message, ProblemsResponse
from core.segments import SLUG, SegmentDefinition, parse_segment
from store import segments as store
from store.models import Segment

router = APIRouter(prefix="/v1/segments", tags=["segments"], dependencies=[AdminDep])

SegmentId = Annotated[
    str, Path(pattern=SLUG, description="a segment's id: a slug, at most 63 characters")
]
"""An id no segment can have is refused (422) before it reaches the database."""
MAX_PAGE = 1000

SAVE_DOC = definition_body("segment")
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "missing or wrong admin token"},
    404: {"model": Message, "description": "no such segment"},
}


class SegmentPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    version: int
    status: str = Field(description="building (existing users are being evaluated) or ready")
    created_at: datetime
    updated_at: datetime


class SegmentDetail(SegmentPublic):
    definition: dict[str, Any]
    member_count: int


class SegmentSaved(BaseModel):
    segment: SegmentPublic
    new_version: bool = Field(description="whether the definition changed (or is new)")


class SegmentsPublic(BaseModel):
    data: list[SegmentPublic]
    count: int


class SegmentMembers(BaseModel):
    data: list[str] = Field(description="members' user ids, in id order")
    next_after: str | None = Field(description="pass as `after` for the next page; None: done")


async def read_segment(request: Request) -> SegmentDefinition:
    """The body as a segment; 422 `{"detail": {"problems": [...]}}` naming each path."""
    return await read_document(request, parse_segment)


def not_found(segment_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no segment {segment_id!r}")


@router.post(
    "",
    response_model=SegmentSaved,
    responses={
        201: {"model": SegmentSaved, "description": "a new segment or version"},
        422: {"model": ProblemsResponse, "description": "the definition is wrong: each problem"},
        **ERRORS,
    },
    openapi_extra=SAVE_DOC,
    summary="Create a segment, or a new version when its definition changed",
)
async def apply_segment(
    request: Request, response: Response, session: SessionDep, index: SegmentIndexDep
) -> SegmentSaved:
    definition = await read_segment(request)
    segment, written = await store.apply_segment(session=session, definition=definition)
    public = SegmentPublic.model_validate(segment)
    await session.commit()
    if written:
        response.status_code = status.HTTP_201_CREATED
        if index is not None:
            await index.changed()
    return SegmentSaved(segment=public, new_version=written)


@router.get("", response_model=SegmentsPublic, responses=ERRORS, summary="List segments")
async def list_segments(session: SessionDep) -> SegmentsPublic:
    rows = await store.list_segments(session=session)
    return SegmentsPublic(data=[SegmentPublic.model_validate(r) for r in rows], count=len(rows))


async def _found(session: SessionDep, segment_id: str) -> Segment:
    segment = await store.get_segment(session=session, segment_id=segment_id)
    if segment is None:
        raise not_found(segment_id)
    return segment


@router.get(
    "/{segment_id}",
    response_model=SegmentDetail,
    responses=ERRORS,
    summary="A segment: definition, version, status, member count",
)
async def get_segment(segment_id: SegmentId, session: SessionDep) -> SegmentDetail:
    segment = await _found(session, segment_id)
    return SegmentDetail(
        **SegmentPublic.model_validate(segment).model_dump(),
        definition=segment.definition,
        member_count=await store.count_members(session=session, segment_id=segment.id),
    )


@router.get(
    "/{segment_id}/members",
    response_model=SegmentMembers,
    responses=ERRORS,
    summary="A segment's members, in user id order, a page at a time",
)
async def list_members(
    segment_id: SegmentId,
    session: SessionDep,
    after: Annotated[
        str | None, Query(max_length=520, description="the last user id of the page before")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> SegmentMembers:
    segment = await _found(session, segment_id)
    if after is not None and "\x00" in after:
        raise HTTPException(422, "after: a user id holds no NUL character")
    members = await store.list_members(
        session=session, segment_id=segment.id, after=after, limit=limit
    )
    return SegmentMembers(data=members, next_after=members[-1] if len(members) == limit else None)


@router.delete(
    "/{segment_id}",
    response_model=Message,
    responses=ERRORS,
    summary="Delete a segment and its memberships",
)
async def delete_segment(
    segment_id: SegmentId, session: SessionDep, index: SegmentIndexDep
) -> Message:
    if not await store.delete_segment(session=session, segment_id=segment_id):
        raise not_found(segment_id)
    await session.commit()
    if index is not None:
        await index.changed()
    return Message(detail=f"segment {segment_id!r} deleted")
