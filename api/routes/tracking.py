"""api: Segment's HTTP Tracking API — track, identify, page, screen, group, alias and batch,
written to the outbox.

Accepted means written: the events are committed to the `events` table before the 200
answer, and the relay routes them afterwards. A repeated messageId is a no-op. A refused
message is written too, to `rejected_events`: a single call answers 400 naming its fields; a
batch answers 200 with the good messages stored and the refused ones listed, as Segment does.
While the outbox's backlog is at its limit, a request carrying events is answered 429 before
anything of it is written (`api.backlog`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from api import ingestion
from api.deps import RelayDep, ServicesDep
from api.ingestion import Incoming, Parsed, TrackingError, trait_changed_events
from api.schemas import BatchAccepted, ProblemsResponse, RejectedItem, TrackingAccepted
from core.events import MAX_PROBLEMS, Alias, Batch, Group, Identify, Page, Screen, Track
from store.events import NewEvent, record_events
from store.identities import canonical_user, link
from store.models import Event
from store.profiles import TraitChanges, merge_traits
from store.rejected import record_rejections

router = APIRouter(prefix="/v1", tags=["tracking"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ProblemsResponse,
        "description": "bad body (a single call: also a bad message): which field, which limit",
    },
    401: {"model": ProblemsResponse, "description": "missing or wrong write key"},
    429: {
        "model": ProblemsResponse,
        "description": "too many events wait to be routed (NUDGE_INGEST_BACKLOG_LIMIT): "
        "nothing was stored; send the request again after `Retry-After` seconds",
    },
}


def _body(model: type[Any]) -> dict[str, Any]:
    """Document the body in OpenAPI; it is read by hand (gzip, size limits, Segment's 400)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


async def accept(services: ServicesDep, request: Request, kind: str) -> Parsed:
    """Authenticate and parse one tracking request (not yet stored)."""
    settings = services.settings
    received_at = datetime.now(UTC)
    header_key = ingestion.basic_username(request)
    if header_key is not None:
        ingestion.check_write_key(header_key, settings.write_key)
    try:
        data = ingestion.parse_json(await ingestion.read_body(request))
    except TrackingError:
        if header_key is None:
            # Without a key, an unreadable body gets no feedback beyond "who are you".
            raise ingestion.unauthorized(
                "missing write key: send it as the HTTP Basic username"
            ) from None
        raise
    if header_key is None:
        ingestion.check_write_key(data.get("writeKey"), settings.write_key)
    if kind == "batch":
        return ingestion.parse_batch(data, received_at)
    return ingestion.parse_single(kind, data, received_at)


async def store(services: ServicesDep, kind: str, parsed: Parsed) -> None:
    """Write the events, link the ids they say are one person, merge the traits they carry
    into the person's profile, write a `Trait Changed` event per watched trait that changed
    and keep the refused messages, in one transaction.

    Events stay under the id they came with (a user's events are routed in order by that
    id); the router resolves the person. Traits and links of a message already stored (a
    retried request) are not applied again, so a replayed old identify cannot overwrite
    newer traits, nor write its `Trait Changed` twice.
    """
    incoming = parsed.accepted
    async with services.sessions() as session:
        if incoming:
            stored = await record_events(session=session, events=[i.event for i in incoming])
            watched = _traits_watched(services)
            changed: list[NewEvent] = []
            for item, (event, is_new) in zip(incoming, stored, strict=True):
                if is_new:
                    changed += await _apply_person(session, item, event, watched)
            if changed:
                await record_events(session=session, events=changed)
        await record_rejections(
            session=session, rejections=[r.rejection(kind) for r in parsed.rejected]
        )
        await session.commit()


def _traits_watched(services: ServicesDep) -> frozenset[str] | None:
    """The traits whose change some active campaign starts on; None (every trait) while
    the routing index is not loaded: an unwanted `Trait Changed` is only ignored by the
    relay, a missing one is lost."""
    campaigns = services.campaigns
    return campaigns.index.traits_watched if campaigns.loaded else None


async def _apply_person(
    session: AsyncSession, item: Incoming, event: Event, watched: frozenset[str] | None
) -> list[NewEvent]:
    """One new message's effect on the person: its links, then its traits merged into the
    person's profile; the `Trait Changed` events that follow (one per trait, from its value
    before this message to its value after)."""
    changes: TraitChanges = {}
    for anonymous_id, user_id in item.links:
        linked = await link(
            session, anonymous_id=anonymous_id, user_id=user_id, message_id=event.message_id
        )
        _add_changes(changes, linked.changes)
    if not (item.traits or changes):
        return []
    owner = await canonical_user(session, event.user_id)
    if item.traits:
        merged: TraitChanges = {}
        await merge_traits(session=session, user_id=owner, traits=item.traits, changes=merged)
        _add_changes(changes, merged)
    return trait_changed_events(
        message_id=event.message_id,
        timestamp=event.timestamp,
        user_id=owner,
        changes=changes,
        watched=watched,
    )


def _add_changes(into: TraitChanges, more: TraitChanges) -> None:
    """A trait changed twice by one message changed from the first old to the last new."""
    for trait, (old, new) in more.items():
        into[trait] = (into[trait][0], new) if trait in into else (old, new)


def answer(kind: str, parsed: Parsed) -> Any:
    """A single call's bad message is a 400 naming its fields; a batch is a 200 that says
    what was stored and lists the first messages refused."""
    if kind != "batch":
        if parsed.rejected:
            return problems_response(TrackingError(400, parsed.rejected[0].problems))
        return TrackingAccepted()
    return BatchAccepted(
        accepted=len(parsed.accepted),
        rejected=[
            RejectedItem(index=r.position, message_id=r.message_id, reason=r.reason)
            for r in parsed.rejected[:MAX_PROBLEMS]
            if r.position is not None
        ],
    )


def problems_response(exc: TrackingError) -> JSONResponse:
    return JSONResponse(
        {"detail": {"problems": exc.problems}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def handle(services: ServicesDep, relay: RelayDep, request: Request, kind: str) -> Any:
    try:
        parsed = await accept(services, request, kind)
        if parsed.accepted and services.backlog is not None:
            await services.backlog.admit()
    except TrackingError as exc:
        return problems_response(exc)
    await store(services, kind, parsed)
    if parsed.accepted:
        relay.wake()
    return answer(kind, parsed)


ENDPOINTS: tuple[tuple[str, str, type[Any], str], ...] = (
    ("track", "t", Track, "Record what a user did (Segment track)"),
    ("identify", "i", Identify, "Set a user's traits (Segment identify)"),
    ("page", "p", Page, "Record a page view (Segment page; stored, not routed)"),
    ("screen", "s", Screen, "Record a mobile screen view (Segment screen; stored, not routed)"),
    ("group", "g", Group, "Associate a user with a group (Segment group; stored, not routed)"),
    ("alias", "a", Alias, "Link two ids of one person (Segment alias; stored, not routed)"),
    ("batch", "b", Batch, "Several messages at once (Segment batch; up to 500 KB)"),
)
"""Each Segment call: its path, Segment's one-letter short path, body model, summary."""


def _endpoint(kind: str) -> Any:
    async def endpoint(services: ServicesDep, relay: RelayDep, request: Request) -> Any:
        return await handle(services, relay, request, kind)

    endpoint.__name__ = kind
    return endpoint


for _kind, _short, _model, _summary in ENDPOINTS:
    _handler = _endpoint(_kind)
    router.post(
        f"/{_kind}",
        response_model=BatchAccepted if _kind == "batch" else TrackingAccepted,
        responses=ERRORS,
        openapi_extra=_body(_model),
        summary=_summary,
    )(_handler)
    router.post(f"/{_short}", include_in_schema=False, name=f"{_kind}_short")(_handler)


SCHEMAS = tuple(model for _, _, model, _ in ENDPOINTS)
"""Models the hand-read bodies refer to; app.py adds them to the OpenAPI components."""
