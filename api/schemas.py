"""api: request and response schemas, by role (what the API shows, not how the store keeps it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.definition import CampaignStatus


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class TrackingAccepted(BaseModel):
    """Segment's answer: the events are stored (durably) and will be routed."""

    success: bool = True


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


class CampaignVersionSummary(_Public):
    version: int
    definition_hash: str
    created_at: datetime


class CampaignVersionPublic(CampaignVersionSummary):
    campaign_id: str
    definition: dict[str, Any]


class CampaignDetail(CampaignPublic):
    """A campaign with its current definition and the versions it has had."""

    definition: dict[str, Any]
    versions: list[CampaignVersionSummary]


class CampaignSaved(BaseModel):
    """What `POST`/`PUT` a campaign did: a new version (201) or nothing changed (200)."""

    campaign: CampaignPublic
    version: CampaignVersionPublic
    new_version: bool


class Readiness(BaseModel):
    database: str
    temporal: str


class CampaignStats(BaseModel):
    """A campaign's funnel: journeys entered and how they ended, and its deliveries."""

    campaign_id: str
    entered: int
    journeys: dict[str, int] = Field(
        description="by status: running, completed, converted, exited, failed"
    )
    deliveries: dict[str, int] = Field(description="by status: pending, sent, failed")
    conversion_rate: float | None = Field(
        description="converted / entered; null before anyone entered"
    )


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
    timestamp: datetime | None = Field(default=None, description="default: now")


class PreviewRequest(BaseModel):
    """Render one send step for a user, real or made up, without sending anything."""

    model_config = ConfigDict(extra="forbid")

    step_id: str = Field(min_length=1, max_length=100)
    version: int | None = Field(default=None, ge=1, description="default: the current version")
    user_id: str | None = Field(
        default=None, max_length=512, description="load this user's stored traits"
    )
    traits: dict[str, Any] = Field(
        default_factory=dict, description="override (or stand in for) the stored traits"
    )
    event: PreviewEvent | None = Field(
        default=None, description="the entry event; default: the campaign's entry event, empty"
    )
    last_event: PreviewEvent | None = Field(default=None, description="default: `event`")


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
