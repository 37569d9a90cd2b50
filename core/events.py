"""core: user events in the Segment HTTP Tracking API shape, and the event a journey receives."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_EVENT_BYTES = 32 * 1024
"""Segment's limit for one message, serialized."""
MAX_BATCH_BYTES = 500 * 1024
"""Segment's limit for one batch request."""


class SegmentMessage(BaseModel):
    """Fields every Segment message shares. Unknown fields are kept (SDKs send extras)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    user_id: str | None = Field(default=None, alias="userId", max_length=512)
    anonymous_id: str | None = Field(default=None, alias="anonymousId", max_length=512)
    message_id: str | None = Field(default=None, alias="messageId", min_length=1, max_length=512)
    timestamp: datetime | None = None
    sent_at: datetime | None = Field(default=None, alias="sentAt")
    context: dict[str, Any] = Field(default_factory=dict)
    integrations: dict[str, Any] = Field(default_factory=dict)
    write_key: str | None = Field(default=None, alias="writeKey")

    @model_validator(mode="before")
    @classmethod
    def _coerce_ids(cls, data: Any) -> Any:
        # Segment accepts numeric ids; keep them as strings so keys are stable.
        if isinstance(data, dict):
            for key in ("userId", "anonymousId", "user_id", "anonymous_id"):
                if isinstance(data.get(key), int | float) and not isinstance(data.get(key), bool):
                    data = {**data, key: str(data[key])}
        return data

    @model_validator(mode="after")
    def _needs_identity(self) -> SegmentMessage:
        if not self.user_id and not self.anonymous_id:
            raise ValueError("userId or anonymousId is required")
        return self

    @property
    def user_key(self) -> str:
        """Who the journey is for: the userId, else `anon:<anonymousId>`."""
        return self.user_id or f"anon:{self.anonymous_id}"


class Track(SegmentMessage):
    type: Literal["track"] = "track"
    event: str = Field(min_length=1, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict)


class Identify(SegmentMessage):
    type: Literal["identify"] = "identify"
    traits: dict[str, Any] = Field(default_factory=dict)


class Page(SegmentMessage):
    type: Literal["page"] = "page"
    name: str | None = Field(default=None, max_length=200)
    category: str | None = Field(default=None, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict)


class Screen(SegmentMessage):
    """A mobile screen view: stored, not routed (like page)."""

    type: Literal["screen"] = "screen"
    name: str | None = Field(default=None, max_length=200)
    properties: dict[str, Any] = Field(default_factory=dict)


class Group(SegmentMessage):
    """The user joined a group (account, company). Group traits describe the group, not the
    user, so they are stored with the event and not merged into the profile."""

    type: Literal["group"] = "group"
    group_id: str = Field(alias="groupId", min_length=1, max_length=512)
    traits: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _coerce_group_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("groupId"), int | float):
            data = {**data, "groupId": str(data["groupId"])}
        return data


class Alias(SegmentMessage):
    """Two ids are the same user. Stored for now; profiles are not merged yet."""

    type: Literal["alias"] = "alias"
    previous_id: str = Field(alias="previousId", min_length=1, max_length=512)


BatchItem = Annotated[Track | Identify | Page | Screen | Group | Alias, Field(discriminator="type")]


class Batch(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    batch: list[BatchItem] = Field(min_length=1, max_length=2500)
    context: dict[str, Any] = Field(default_factory=dict)
    integrations: dict[str, Any] = Field(default_factory=dict)
    write_key: str | None = Field(default=None, alias="writeKey")
    sent_at: datetime | None = Field(default=None, alias="sentAt")


class JourneyEvent(BaseModel):
    """What a journey learns of an event: enough for conditions and templates, no more.

    Sent as the `event` signal and carried in the journey's state; Segment's 32 KB cap
    bounds its size.
    """

    model_config = ConfigDict(frozen=True)

    message_id: str
    name: str
    timestamp: datetime
    properties: dict[str, Any] = Field(default_factory=dict)

    def as_context(self) -> dict[str, Any]:
        """The `event` root of a condition or template context."""
        return {
            "name": self.name,
            "message_id": self.message_id,
            "timestamp": self.timestamp.isoformat(),
            "properties": self.properties,
        }


def utcnow() -> datetime:
    return datetime.now(UTC)
