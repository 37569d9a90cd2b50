"""api: request and response schemas, by role (what the API shows, not how the store keeps it)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.definition import SLUG, CampaignStatus
from core.events import MAX_PROBLEMS, Timestamp, UserId, check_json
from core.versions import DefinitionChanges

MAX_VERSION = 2**31 - 1
"""Campaign version numbers are an INTEGER column (32 bits on PostgreSQL): a bigger number
names no version, and the database would refuse to even look it up."""
MAX_ROW_ID = 2**63 - 1
"""Row ids are BIGINT (64 bits)."""

CampaignId = Annotated[
    str, Path(pattern=SLUG, description="a campaign's id: a slug, at most 63 characters")
]
"""An id no campaign can have is refused (422) before it reaches the database, which may
not even be able to compare it (PostgreSQL and NUL)."""
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION)]


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class TrackingAccepted(BaseModel):
    """Segment's answer: the events are stored (durably) and will be routed."""

    success: bool = True


class RejectedItem(BaseModel):
    """A message of a batch that was refused, and why; it is also in /v1/rejected-events."""

    model_config = ConfigDict(populate_by_name=True)

    index: int = Field(description="its position in `batch`, from 0")
    message_id: str | None = Field(alias="messageId", description="as sent, if any")
    reason: str = Field(description="each problem, naming its field: `userId: ...`")


class BatchAccepted(TrackingAccepted):
    """A batch's answer: the good messages are stored whatever the bad ones were (Segment's
    SDKs drop a batch answered 4xx, and retry forever one answered 5xx)."""

    accepted: int = Field(description="messages stored (a repeated messageId counts, as a no-op)")
    rejected: list[RejectedItem] = Field(
        description=f"the first {MAX_PROBLEMS} messages refused; len(batch) - accepted were"
    )


class Problems(BaseModel):
    problems: list[str] = Field(description="one line per problem, each naming its path")


class ProblemsResponse(BaseModel):
    """400 (tracking) or 422 (campaigns): what is wrong, path by path."""

    detail: Problems


class Message(BaseModel):
    detail: str


class CampaignPublic(_Public):
    id: str
    name: str
    status: CampaignStatus
    current_version: int
    created_at: datetime
    updated_at: datetime


class CampaignsPublic(BaseModel):
    data: list[CampaignPublic]
    count: int


VersionState = Literal["live", "draft", "retired"]


class CampaignVersionSummary(_Public):
    version: int
    definition_hash: str
    created_at: datetime
    published_at: datetime | None = Field(
        description="when it last became the version new journeys enter; null: never published"
    )
    state: VersionState = Field(
        description="`live`: published and current (new journeys enter it while the campaign "
        "is active); `draft`: never published (publish it to make it live); `retired`: "
        "published before, not current now (journeys that started on it still run on it)"
    )


class CampaignVersionPublic(CampaignVersionSummary):
    campaign_id: str
    definition: dict[str, Any]


class CampaignDetail(CampaignPublic):
    """A campaign with its current definition and the versions it has had."""

    definition: dict[str, Any] = Field(description="the current version's definition")
    latest_version: int = Field(
        description="the newest version; above `current_version` when a draft waits"
    )
    versions: list[CampaignVersionSummary]


class CampaignSaved(BaseModel):
    """What `POST`/`PUT` a campaign did: a new version (201) or nothing changed (200). The
    version's `state` says whether new journeys enter it (`live`) or it waits as a `draft`
    until published."""

    campaign: CampaignPublic
    version: CampaignVersionPublic
    new_version: bool


class CampaignPublished(BaseModel):
    """What publishing did: the campaign (its `current_version` is the published one), the
    version, and the version new journeys entered before."""

    campaign: CampaignPublic
    version: CampaignVersionSummary
    previous_version: int
    changed: bool = Field(description="false: that version was already live; nothing changed")


class PublishRequest(BaseModel):
    """The optional body of `POST /v1/campaigns/{id}/publish`."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(
        default=None, ge=1, le=MAX_VERSION, description="the version to publish; default latest"
    )


class CampaignDiff(DefinitionChanges):
    """Two versions of a campaign compared: `from_version` is the older side of `text`."""

    campaign_id: str
    from_version: int
    to_version: int


class Readiness(BaseModel):
    database: str
    temporal: str


class SandboxMessagePublic(_Public):
    id: int
    delivery_id: int
    user_id: str
    subject: str | None
    body: str
    data: dict[str, Any] | None
    created_at: datetime


class SandboxMessages(BaseModel):
    data: list[SandboxMessagePublic]
    count: int


class PreviewEvent(BaseModel):
    """An event as a template sees it (`event`, `last_event`) in a preview."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict)
    timestamp: Timestamp | None = Field(default=None, description="default: now")


class PreviewRequest(BaseModel):
    """Render one send step for a user, real or made up, without sending anything.

    Held to the rules of what is stored (`core.events.json_problems`), though nothing is:
    it stands for an event and traits that were, and the user id is looked up."""

    model_config = ConfigDict(extra="forbid")

    step_id: str = Field(min_length=1, max_length=100)
    version: int | None = Field(
        default=None, ge=1, le=MAX_VERSION, description="default: the current version"
    )
    user_id: UserId | None = Field(default=None, description="load this user's stored traits")
    traits: dict[str, Any] = Field(
        default_factory=dict, description="override (or stand in for) the stored traits"
    )
    event: PreviewEvent | None = Field(
        default=None, description="the entry event; default: the campaign's entry event, empty"
    )
    last_event: PreviewEvent | None = Field(default=None, description="default: `event`")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        check_json(data, cls.__name__)
        return data


class PreviewPublic(BaseModel):
    """A send step's message as the user would get it; `segments` and `encoding` for SMS."""

    campaign_id: str
    version: int
    step_id: str
    channel: str
    template: str
    subject: str | None
    body: str
    html: str | None
    data: dict[str, Any]
    segments: int | None = None
    encoding: str | None = None


class RejectedEventPublic(_Public):
    """A message refused at ingestion, as it was sent (`item`: JSON, non-ASCII escaped, cut
    at 16 KB)."""

    id: int
    received_at: datetime
    endpoint: str = Field(description="the call that refused it: batch, track, identify, …")
    position: int | None = Field(description="its index in the batch; null for a single call")
    message_id: str | None
    user_id: str | None
    reason: str
    item: str


class RejectedEvents(BaseModel):
    data: list[RejectedEventPublic]
    count: int
    next_before: int | None = Field(
        description="pass as `before` for the next (older) page; null on the last page"
    )
