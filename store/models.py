"""store: the tables. Changing one means a new Alembic revision in store/migrations."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BigInteger ids that are still SQLite's autoincrementing rowid.
BigId = BigInteger().with_variant(Integer, "sqlite")


# Named constraints: SQLite can only alter a table by rebuilding it (Alembic's batch mode),
# and a rebuild can only drop or keep a constraint it can name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="draft")
    """draft, active, paused or archived (core.definition.CampaignStatus)."""
    current_version: Mapped[int] = mapped_column(Integer)
    """The version new journeys enter (once published: a version saved to a campaign that
    has left draft waits as a draft until `store.campaigns.publish_version`)."""
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now, onupdate=now)


class CampaignVersion(Base):
    """Immutable but for `published_at`: a running journey's templates are read from the
    version it started on."""

    __tablename__ = "campaign_versions"

    campaign_id: Mapped[str] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    definition_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=now)
    published_at: Mapped[datetime | None] = mapped_column()
    """When this version last became the campaign's current version by publishing (or by
    activating a draft campaign); None: a draft, never published."""


class Profile(Base):
    __tablename__ = "profiles"

    user_id: Mapped[str] = mapped_column(String(520), primary_key=True)
    traits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now, onupdate=now)


class Event(Base):
    """The outbox: written before the API answers; routed to Temporal after."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_status_id", "status", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(512), unique=True)
    type: Mapped[str] = mapped_column(String(16))
    """Segment's type: track, identify, page, screen, group or alias (only track is routed)."""
    name: Mapped[str | None] = mapped_column(String(200))
    user_id: Mapped[str] = mapped_column(String(520), index=True)
    timestamp: Mapped[datetime] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=now)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    """pending, routed, ignored (no campaign cares about it) or failed (given up; see
    `last_error`): store.events.EventStatus."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Routing attempts that failed, outages included."""
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Failed attempts that count towards giving up (not outages): kept in the row, so
    every relay process sees the same count."""
    last_error: Mapped[str | None] = mapped_column(Text)
    routed_at: Mapped[datetime | None] = mapped_column()
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    """The relay process routing this event now (None: nobody)."""
    claimed_until: Mapped[datetime | None] = mapped_column()
    """When the claim lapses: a relay that died mid-event leaves it to another after this."""
    counted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Whether segment membership has taken this event in (counters, traits): set in the
    transaction that does it, so a relay that dies and repeats the event counts it once."""


class RejectedEvent(Base):
    """An ingestion item refused with a 4xx, kept for an operator to list with its reason."""

    __tablename__ = "rejected_events"
    __table_args__ = (Index("ix_rejected_events_received_at", "received_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(default=now)
    endpoint: Mapped[str] = mapped_column(String(32))
    """The route that refused it: batch, track, identify, …"""
    position: Mapped[int | None] = mapped_column(Integer)
    """Its index in the batch (None for a single-event route)."""
    message_id: Mapped[str | None] = mapped_column(String(512))
    user_id: Mapped[str | None] = mapped_column(String(520))
    reason: Mapped[str] = mapped_column(Text)
    item: Mapped[str] = mapped_column(Text)
    """The item as received, JSON with every non-ASCII character escaped (so lone
    surrogates and NUL survive on every backend), cut at a bounded length."""


class JourneyEntry(Base):
    """One row per journey started: re-entry rules, the 'entered' count and the router's
    membership index (which journeys run for a user: store.entries.running_journeys) read it."""

    __tablename__ = "journey_entries"
    __table_args__ = (
        UniqueConstraint("campaign_id", "entry_message_id"),
        UniqueConstraint("run_id"),
        Index("ix_journey_entries_campaign_user_status", "campaign_id", "user_id", "status"),
        # A migration pages through one version's running journeys by workflow id.
        Index(
            "ix_journey_entries_campaign_version_status_workflow",
            "campaign_id",
            "campaign_version",
            "status",
            "workflow_id",
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(String(63))
    campaign_version: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[str] = mapped_column(String(520))
    workflow_id: Mapped[str] = mapped_column(String(700))
    run_id: Mapped[str | None] = mapped_column(String(64))
    """Temporal's (first) run id: a start that joined a running journey adds no row. None
    while the fan-out is starting the journey (written before the start, so the router
    already sees it: store.entries.reserve_entries)."""
    entry_message_id: Mapped[str] = mapped_column(String(512))
    entered_at: Mapped[datetime] = mapped_column(default=now)
    status: Mapped[str] = mapped_column(String(16), default="running")
    """running, or how the journey ended (core.journey.JourneyStatus)."""
    exit_reason: Mapped[str | None] = mapped_column(Text)
    ended_at: Mapped[datetime | None] = mapped_column()
    variant: Mapped[str | None] = mapped_column(String(63))
    """`holdout` for a journey in the campaign's holdout, else the `split` variant it took
    (the last one), else None."""


class Delivery(Base):
    """One row per send, keyed by its idempotency key: the gate against sending twice."""

    __tablename__ = "deliveries"
    __table_args__ = (
        ForeignKeyConstraint(
            ["campaign_id", "campaign_version"],
            ["campaign_versions.campaign_id", "campaign_versions.version"],
        ),
        Index("ix_deliveries_campaign_status", "campaign_id", "status"),
        Index("ix_deliveries_campaign_id_id", "campaign_id", "id"),
        Index("ix_deliveries_provider_message_id", "provider_message_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(700))
    campaign_id: Mapped[str] = mapped_column(String(63))
    campaign_version: Mapped[int] = mapped_column(Integer)
    step_id: Mapped[str] = mapped_column(String(63))
    visit: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(50))
    user_id: Mapped[str] = mapped_column(String(520), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    """pending, sent, failed or suppressed (core.journey.DeliveryStatus); `error` holds why."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    provider_message_id: Mapped[str | None] = mapped_column(String(512))
    provider_response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now, onupdate=now)
    sent_at: Mapped[datetime | None] = mapped_column()
    variant: Mapped[str | None] = mapped_column(String(63))
    """The journey's group when it sent: `holdout`, a `split` variant, or None."""
    delivered_at: Mapped[datetime | None] = mapped_column()
    """When the provider reported it delivered (or accepted it, for providers that report
    nothing more)."""
    opened_at: Mapped[datetime | None] = mapped_column()
    """The first open, by anyone (a mail privacy proxy included)."""
    human_opened_at: Mapped[datetime | None] = mapped_column()
    clicked_at: Mapped[datetime | None] = mapped_column()
    human_clicked_at: Mapped[datetime | None] = mapped_column()
    bounced_at: Mapped[datetime | None] = mapped_column()
    """When the provider reported it bounced or dropped after accepting it."""
    complained_at: Mapped[datetime | None] = mapped_column()
    """When the recipient marked it as spam."""
    opens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    clicks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class CampaignCount(Base):
    """The stats aggregates: how often `metric` happened for a campaign version, step and
    group within one UTC hour. Kept current in the transaction that records what happened,
    so a funnel is a read of a few rows, never a scan of deliveries."""

    __tablename__ = "campaign_counts"
    __table_args__ = (Index("ix_campaign_counts_campaign_hour", "campaign_id", "hour"),)

    campaign_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    campaign_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    step_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    """'' for what belongs to the journey rather than a step (entered, ended)."""
    variant: Mapped[str] = mapped_column(String(63), primary_key=True)
    """'' outside any group; `holdout`; or a `split` variant."""
    metric: Mapped[str] = mapped_column(String(63), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    amount: Mapped[float] = mapped_column(Float, default=0.0)
    """A sum that goes with the count: revenue, for conversions."""


class Conversion(Base):
    """A goal reached within a campaign's attribution window after one of its messages:
    at most one per message, and each goal event counts once per campaign."""

    __tablename__ = "conversions"
    __table_args__ = (
        UniqueConstraint("campaign_id", "message_id"),
        Index("ix_conversions_campaign_at", "campaign_id", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), unique=True
    )
    campaign_id: Mapped[str] = mapped_column(String(63))
    campaign_version: Mapped[int] = mapped_column(Integer)
    step_id: Mapped[str] = mapped_column(String(63))
    variant: Mapped[str | None] = mapped_column(String(63))
    user_id: Mapped[str] = mapped_column(String(520))
    message_id: Mapped[str] = mapped_column(String(512))
    """The goal event's messageId."""
    goal: Mapped[str] = mapped_column(String(200))
    revenue: Mapped[float | None] = mapped_column(Float)
    currency: Mapped[str | None] = mapped_column(String(8))
    at: Mapped[datetime] = mapped_column()
    """When the goal event happened."""


class SandboxMessage(Base):
    """What the sandbox channel 'sent': kept so `nudge messages` (and tests) can read it."""

    __tablename__ = "sandbox_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), unique=True
    )
    user_id: Mapped[str] = mapped_column(String(520), index=True)
    subject: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=now)


class Subscription(Base):
    """A user's choice for one channel and subscription group; no row means subscribed.

    The group `*` stands for every group on the channel (an SMS STOP opts out of them all).
    """

    __tablename__ = "subscriptions"

    user_id: Mapped[str] = mapped_column(String(520), primary_key=True)
    channel: Mapped[str] = mapped_column(String(50), primary_key=True)
    subscription_group: Mapped[str] = mapped_column(String(63), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    """subscribed or unsubscribed (store.subscriptions.SubscriptionStatus)."""
    source: Mapped[str] = mapped_column(String(16))
    """Who changed it last: link, sms_stop, sms_start or api."""
    updated_at: Mapped[datetime] = mapped_column(default=now)


class Suppression(Base):
    """A user's address on a channel that must never be sent to again (a hard bounce):
    stronger than an unsubscribe, it stops transactional messages too."""

    __tablename__ = "suppressions"

    user_id: Mapped[str] = mapped_column(String(520), primary_key=True)
    channel: Mapped[str] = mapped_column(String(50), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=now)


class SendReservation(Base):
    """The send ledger: one row per non-transactional send the policy let through, counted
    by frequency caps. Written before the send, keyed by the send's idempotency key."""

    __tablename__ = "send_ledger"
    __table_args__ = (Index("ix_send_ledger_user_at", "user_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(String(520))
    channel: Mapped[str] = mapped_column(String(50))
    campaign_id: Mapped[str] = mapped_column(String(63))
    subscription_group: Mapped[str] = mapped_column(String(63))
    priority: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column()


class Identity(Base):
    """An anonymous id linked to the user it turned out to be (identify or alias): one
    person for routing, profiles, segments and caps."""

    __tablename__ = "identities"

    anonymous_id: Mapped[str] = mapped_column(String(520), primary_key=True)
    """As events name the visitor: `anon:<anonymousId>` (or an earlier userId, by alias)."""
    user_id: Mapped[str] = mapped_column(String(520), index=True)
    """The canonical user id the person is known by."""
    message_id: Mapped[str] = mapped_column(String(512))
    """The identify or alias that linked them."""
    linked_at: Mapped[datetime] = mapped_column(default=now)


class Segment(Base):
    """A saved audience (core.segments.SegmentDefinition); each change is a new version."""

    __tablename__ = "segments"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer, default=1)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    definition_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="building")
    """building (existing users are being evaluated after a change) or ready."""
    build_cursor: Mapped[str | None] = mapped_column(String(520))
    """While building: the last user id evaluated (users are taken in id order)."""
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now, onupdate=now)


class SegmentMembership(Base):
    """Whether a user is in a segment, as last evaluated; kept for non-members too, so a
    user evaluated once is not evaluated again until something they do (or time) can
    change the answer."""

    __tablename__ = "segment_memberships"
    __table_args__ = (
        Index("ix_segment_memberships_members", "segment_id", "member", "user_id"),
        Index("ix_segment_memberships_recheck_at", "recheck_at"),
        Index("ix_segment_memberships_user_id", "user_id"),
    )

    segment_id: Mapped[str] = mapped_column(
        ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(String(520), primary_key=True)
    member: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer)
    """The segment version this was evaluated against."""
    changes: Mapped[int] = mapped_column(Integer, default=0)
    """How often membership changed (entered or exited): numbers the transitions."""
    changed_at: Mapped[datetime] = mapped_column(default=now)
    recheck_at: Mapped[datetime | None] = mapped_column()
    """When the answer changes by itself as time passes (a counted event leaves a window),
    or None: only the user's own events or traits can change it."""


class EventCounter(Base):
    """How many events matching one segment criterion (an event name and property
    conditions, `counter` is their hash) a user did on one UTC day."""

    __tablename__ = "event_counters"

    user_id: Mapped[str] = mapped_column(String(520), primary_key=True)
    counter: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class DateTrait(Base):
    """A profile trait that holds a date, indexed by month and day, so the date entries'
    sweep reads only the users whose anniversary is near."""

    __tablename__ = "date_traits"
    __table_args__ = (
        Index("ix_date_traits_trait_month_day", "trait", "month_day"),
        Index("ix_date_traits_trait_value", "trait", "value"),
    )

    user_id: Mapped[str] = mapped_column(String(520), primary_key=True)
    trait: Mapped[str] = mapped_column(String(200), primary_key=True)
    month_day: Mapped[str] = mapped_column(String(5))
    """MM-DD"""
    value: Mapped[date] = mapped_column(Date)
