"""store: campaigns, their immutable versions (draft until published), and the status each
campaign is in."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import and_, func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.definition import CampaignDefinition, CampaignStatus, Cap, format_validation_error
from store.db import dialect_insert
from store.models import Campaign, CampaignVersion, now

Status = CampaignStatus

TRANSITIONS: dict[CampaignStatus, frozenset[CampaignStatus]] = {
    Status.draft: frozenset({Status.active, Status.archived}),
    Status.active: frozenset({Status.paused, Status.archived}),
    Status.paused: frozenset({Status.active, Status.archived}),
    Status.archived: frozenset(),
}
"""Where each status may go. Archived is final: a running journey may still read its
version, so an archived campaign is never revived or rewritten."""

ALLOWED_TRANSITIONS = "draft→active, active→paused, paused→active, draft/active/paused→archived"


class CampaignStateError(ValueError):
    """The campaign's status does not allow what was asked; the message says what does."""


class CampaignConflict(CampaignStateError):
    """Another save wrote the same version number first: roll back and save again."""


class CampaignNotFound(LookupError):
    def __init__(self, campaign_id: str):
        self.campaign_id = campaign_id
        super().__init__(f"no campaign {campaign_id!r}")


class VersionUnavailable(LookupError):
    """A campaign version cannot be used: it is not in the store (`missing`), or it was
    stored in a form today's rules refuse. The one error for this cause; each room maps it
    once (the API to 404 or 409, activities to a final failure, the routing index to a
    campaign it skips)."""

    def __init__(self, campaign_id: str, version: int, problem: str, *, missing: bool = False):
        self.campaign_id = campaign_id
        self.version = version
        self.problem = problem
        self.missing = missing
        super().__init__(f"campaign {campaign_id!r} version {version} {problem}")


def definition_document(definition: CampaignDefinition) -> dict[str, Any]:
    """The stored form: JSON types and aliases (`else`), so it re-validates as written."""
    return definition.model_dump(mode="json", by_alias=True)


def definition_hash(definition: CampaignDefinition) -> str:
    """sha256 of the canonical JSON: equal definitions hash equal, whatever the key order."""
    canonical = json.dumps(definition_document(definition), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def definition_of(version: CampaignVersion) -> CampaignDefinition:
    """A stored version as a definition, or `VersionUnavailable` saying why not."""
    try:
        return CampaignDefinition.model_validate(version.definition)
    except ValidationError as exc:
        problems = "; ".join(format_validation_error(exc))
        raise VersionUnavailable(
            version.campaign_id,
            version.version,
            f"no longer validates ({problems}): save the campaign again as a new version",
        ) from exc


async def load_definition(
    *, session: AsyncSession, campaign_id: str, version: int
) -> CampaignDefinition:
    """The one way to read a version a journey runs on; `VersionUnavailable` when it is
    missing or no longer validates."""
    row = await get_version(session=session, campaign_id=campaign_id, version=version)
    if row is None:
        raise VersionUnavailable(campaign_id, version, "is not in the store", missing=True)
    return definition_of(row)


class DefinitionCache:
    """Parsed campaign versions, read and validated once per process: a stored version never
    changes (`save_campaign` only adds versions), so what a journey runs on is safe to keep.
    The least recently used are dropped past `size`; a version that cannot be used is never
    kept (it raises each time)."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict[tuple[str, int], CampaignDefinition] = OrderedDict()

    async def get(
        self, session: AsyncSession, campaign_id: str, version: int
    ) -> CampaignDefinition:
        key = (campaign_id, version)
        definition = self._items.get(key)
        if definition is not None:
            self._items.move_to_end(key)
            return definition
        definition = await load_definition(
            session=session, campaign_id=campaign_id, version=version
        )
        self._items[key] = definition
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return definition


async def save_campaign(
    *, session: AsyncSession, definition: CampaignDefinition
) -> tuple[Campaign, CampaignVersion, bool]:
    """Store a definition: a new campaign starts as draft at version 1; a changed one gets
    the next version. The bool says whether a version was written.

    While the campaign is a draft (never activated, nothing runs on it) the new version is
    current at once. Once it has left draft, the new version is a draft version: stored,
    readable, simulatable, but new journeys keep entering the current version until
    `publish_version` — so saving never changes live traffic.

    Saving a definition equal to the latest version or to the current one writes nothing,
    so a deploy script can save every campaign on each run without piling up versions.
    """
    digest = definition_hash(definition)
    if await _insert_campaign(session, definition):
        first = _new_version(definition, 1, digest)
        session.add(first)
        await session.flush()
        campaign = await _locked(session, definition.id)
        return campaign, first, True

    campaign = await _locked(session, definition.id)
    if campaign.status == Status.archived:
        raise CampaignStateError(
            f"campaign {campaign.id!r} is archived and takes no new versions; "
            "save the definition under a new id"
        )
    latest = await _latest_version(session, campaign.id)
    for number in dict.fromkeys((latest, campaign.current_version)):
        same = await get_version(session=session, campaign_id=campaign.id, version=number)
        if same is not None and same.definition_hash == digest:
            return campaign, same, False

    number = latest + 1
    version = _new_version(definition, number, digest)
    session.add(version)
    if campaign.status == Status.draft:
        campaign.current_version = number
        campaign.name = definition.name
    else:
        campaign.updated_at = now()  # a new draft's reactions reach every routing index
    try:
        await session.flush()
    except IntegrityError as exc:
        # The session is now unusable until rolled back: name nothing loaded from it.
        raise CampaignConflict(
            f"campaign {definition.id!r}: version {number} was written by another "
            "save at the same time; roll back and save again"
        ) from exc
    return campaign, version, True


@dataclass(frozen=True)
class Published:
    """What `publish_version` did."""

    campaign: Campaign
    version: CampaignVersion
    previous: int
    """The version that was current before."""
    changed: bool
    """False: that version was live already; nothing was written."""


async def publish_version(
    *, session: AsyncSession, campaign_id: str, version: int | None = None
) -> Published:
    """Make a version (default: the latest) the one new journeys enter: a draft goes live,
    an older version comes back (a rollback). Publishing the live version again is a no-op.

    `CampaignNotFound`; `VersionUnavailable` (missing: no such version; otherwise it no
    longer validates, and routing would skip it); `CampaignStateError` when archived.
    Running journeys keep the version they started on.
    """
    campaign = await _locked_for_write(session, campaign_id)
    if campaign.status == Status.archived:
        raise CampaignStateError(
            f"campaign {campaign_id!r} is archived: none of its versions can be published; "
            "save the definition under a new id"
        )
    latest = await _latest_version(session, campaign_id)
    number = latest if version is None else version
    row = await get_version(session=session, campaign_id=campaign_id, version=number)
    if row is None:
        raise VersionUnavailable(
            campaign_id, number, f"does not exist (versions: 1 to {latest})", missing=True
        )
    definition = definition_of(row)
    previous = campaign.current_version
    if previous == number and row.published_at is not None:
        return Published(campaign, row, previous, changed=False)
    at = now()
    campaign.current_version = number
    campaign.name = definition.name
    campaign.updated_at = at
    row.published_at = at
    await session.flush()
    return Published(campaign, row, previous, changed=True)


VersionState = Literal["live", "draft", "retired"]


def version_state(campaign: Campaign, version: CampaignVersion) -> VersionState:
    """`live`: published and current — new journeys enter it while the campaign is active;
    `draft`: never published; `retired`: published before, not current now."""
    if version.published_at is None:
        return "draft"
    return "live" if version.version == campaign.current_version else "retired"


async def latest_version(*, session: AsyncSession, campaign_id: str) -> int:
    """The highest version number stored (0: no campaign)."""
    return await _latest_version(session, campaign_id)


async def _insert_campaign(session: AsyncSession, definition: CampaignDefinition) -> bool:
    """Insert the campaign row unless it exists; True when this call created it.

    Inserting first (ON CONFLICT DO NOTHING) also takes the write lock on SQLite, so the
    read-compare-write that follows cannot interleave with a concurrent save.
    """
    statement = (
        dialect_insert(session, Campaign.__table__)
        .values(
            id=definition.id,
            name=definition.name,
            status=Status.draft.value,
            current_version=1,
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(Campaign.__table__.c.id)
    )
    return (await session.execute(statement)).first() is not None


async def _locked(session: AsyncSession, campaign_id: str) -> Campaign:
    """The campaign, re-read and locked (FOR UPDATE on PostgreSQL) until the caller commits."""
    campaign = await session.get(
        Campaign, campaign_id, with_for_update=True, populate_existing=True
    )
    if campaign is None:
        raise CampaignNotFound(campaign_id)
    return campaign


async def _locked_for_write(session: AsyncSession, campaign_id: str) -> Campaign:
    """The campaign, with the write lock taken first: an UPDATE that changes nothing locks
    the row on PostgreSQL and takes SQLite's write lock, so no save or status change can
    interleave between what the caller reads and what it writes."""
    statement = (
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(updated_at=Campaign.updated_at)
        .execution_options(synchronize_session=False)
    )
    if (await session.execute(statement)).rowcount == 0:  # type: ignore[attr-defined]
        raise CampaignNotFound(campaign_id)
    return await _locked(session, campaign_id)


async def _latest_version(session: AsyncSession, campaign_id: str) -> int:
    statement = select(func.max(CampaignVersion.version)).where(
        CampaignVersion.campaign_id == campaign_id
    )
    return (await session.scalar(statement)) or 0


def _new_version(definition: CampaignDefinition, number: int, digest: str) -> CampaignVersion:
    return CampaignVersion(
        campaign_id=definition.id,
        version=number,
        definition=definition_document(definition),
        definition_hash=digest,
    )


async def get_campaign(*, session: AsyncSession, campaign_id: str) -> Campaign | None:
    return await session.get(Campaign, campaign_id)


async def get_version(
    *, session: AsyncSession, campaign_id: str, version: int
) -> CampaignVersion | None:
    return await session.get(CampaignVersion, (campaign_id, version))


async def list_versions(*, session: AsyncSession, campaign_id: str) -> list[CampaignVersion]:
    """Oldest first."""
    statement = (
        select(CampaignVersion)
        .where(CampaignVersion.campaign_id == campaign_id)
        .order_by(CampaignVersion.version)
    )
    return list((await session.scalars(statement)).all())


async def list_campaigns(
    *, session: AsyncSession, status: CampaignStatus | None = None
) -> list[Campaign]:
    """By id, optionally only those in one status."""
    statement = select(Campaign).order_by(Campaign.id)
    if status is not None:
        statement = statement.where(Campaign.status == CampaignStatus(status).value)
    return list((await session.scalars(statement)).all())


async def set_status(
    *, session: AsyncSession, campaign_id: str, status: CampaignStatus
) -> Campaign:
    """Move a campaign along draft → active ⇄ paused → archived; the same status is a no-op.

    The update is conditional on the status it leaves, so two operators racing (pause
    against archive) cannot both win from a status that allowed only one of them.
    """
    target = CampaignStatus(status)
    sources = [s.value for s, targets in TRANSITIONS.items() if target in targets]
    statement = (
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status.in_(sources))
        .values(status=target.value)
        .execution_options(synchronize_session=False)
    )
    moved = (await session.execute(statement)).rowcount > 0  # type: ignore[attr-defined]
    campaign = await session.get(Campaign, campaign_id, populate_existing=True)
    if campaign is None:
        raise CampaignNotFound(campaign_id)
    if not moved and campaign.status != target.value:
        raise CampaignStateError(
            f"campaign {campaign_id!r} is {campaign.status} and cannot become {target.value}; "
            f"allowed: {ALLOWED_TRANSITIONS}"
        )
    if moved and target == Status.active:
        # A draft campaign's first activation is its current version's first publication.
        await session.execute(
            update(CampaignVersion)
            .where(
                CampaignVersion.campaign_id == campaign_id,
                CampaignVersion.version == campaign.current_version,
                CampaignVersion.published_at.is_(None),
            )
            .values(published_at=now())
            .execution_options(synchronize_session=False)
        )
    return campaign


@dataclass(frozen=True)
class VersionKey:
    campaign_id: str
    version: int
    live: bool
    """The current version of an active campaign: new journeys enter it."""
    current: bool = False
    """The campaign's current version, whatever its status (a draft version is not)."""

    @property
    def key(self) -> tuple[str, int]:
        return (self.campaign_id, self.version)


async def version_keys(*, session: AsyncSession) -> list[VersionKey]:
    """Every stored version, without its definition, by campaign and number: one query,
    so the routing index reads definitions only for versions it has not parsed yet
    (versions never change)."""
    live = and_(
        Campaign.status == Status.active.value, Campaign.current_version == CampaignVersion.version
    )
    current = Campaign.current_version == CampaignVersion.version
    statement = (
        select(CampaignVersion.campaign_id, CampaignVersion.version, live, current)
        .join(Campaign, Campaign.id == CampaignVersion.campaign_id)
        .order_by(CampaignVersion.campaign_id, CampaignVersion.version)
    )
    return [
        VersionKey(campaign_id, version, bool(is_live), bool(is_current))
        for campaign_id, version, is_live, is_current in (await session.execute(statement)).all()
    ]


async def get_versions(
    *, session: AsyncSession, keys: Sequence[tuple[str, int]]
) -> list[CampaignVersion]:
    """The versions named by (campaign id, number), in as few queries as the keys allow."""
    found: list[CampaignVersion] = []
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        chunk = list(keys[start : start + _KEYS_PER_QUERY])
        statement = select(CampaignVersion).where(
            tuple_(CampaignVersion.campaign_id, CampaignVersion.version).in_(chunk)
        )
        found.extend(await session.scalars(statement))
    return found


_KEYS_PER_QUERY = 400
"""Two bound parameters a key: well under SQLite's and asyncpg's limits."""


async def cap_windows(*, session: AsyncSession) -> dict[str, list[timedelta]]:
    """The windows of every campaign's own caps, over all its versions (a journey on an old
    version still counts its sends by that version's caps)."""
    read = TypeAdapter(list[Cap])
    windows: dict[str, list[timedelta]] = {}
    # Only the `caps` of each definition: templates (HTML, kilobytes each) stay in the store.
    statement = select(CampaignVersion.campaign_id, CampaignVersion.definition["caps"])
    for campaign_id, caps_document in await session.execute(statement):
        try:
            caps = read.validate_python(caps_document or [])
        except ValidationError:
            continue  # a version that no longer validates sends nothing: no cap to keep
        windows.setdefault(campaign_id, []).extend(cap.window for cap in caps)
    return windows


async def latest_change(*, session: AsyncSession) -> datetime | None:
    """When any campaign last changed (status, name, version): a cheap 'reload?' check."""
    return await session.scalar(select(func.max(Campaign.updated_at)))


async def active_definitions(
    *, session: AsyncSession, entry_key: str
) -> list[tuple[str, int, CampaignDefinition]]:
    """(campaign id, version, definition) of every active campaign whose current version's
    entry is of one kind (`schedule`, `trigger`, … the entry's key), in id order. A version
    today's rules refuse is left out, as routing leaves it out."""
    statement = (
        select(CampaignVersion)
        .join(
            Campaign,
            (Campaign.id == CampaignVersion.campaign_id)
            & (Campaign.current_version == CampaignVersion.version),
        )
        .where(Campaign.status == CampaignStatus.active.value)
        .order_by(CampaignVersion.campaign_id)
    )
    found = []
    for row in await session.scalars(statement):
        entry = row.definition.get("entry") if isinstance(row.definition, dict) else None
        if not isinstance(entry, dict) or entry_key not in entry:
            continue
        try:
            found.append((row.campaign_id, row.version, definition_of(row)))
        except VersionUnavailable:
            continue
    return found


async def step_ids(*, session: AsyncSession, campaign_id: str) -> set[str]:
    """The ids of the steps of every stored version of a campaign (a journey runs on any)."""
    statement = select(CampaignVersion.definition["steps"]).where(
        CampaignVersion.campaign_id == campaign_id
    )
    found: set[str] = set()
    for (steps,) in await session.execute(statement):
        for step in steps or []:
            if isinstance(step, dict) and isinstance(step.get("id"), str):
                found.add(step["id"])
    return found
