"""initial: campaigns and their versions, profiles, the event outbox, entries, deliveries

Revision ID: 0001
Revises:
Created: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a revision must not change when store/models.py does.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(63), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_campaigns"),
    )
    op.create_table(
        "campaign_versions",
        sa.Column("campaign_id", sa.String(63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("definition_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name="fk_campaign_versions_campaign_id_campaigns",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("campaign_id", "version", name="pk_campaign_versions"),
    )
    op.create_table(
        "profiles",
        sa.Column("user_id", sa.String(520), nullable=False),
        sa.Column("traits", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_profiles"),
    )
    op.create_table(
        "events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(512), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("user_id", sa.String(520), nullable=False),
        sa.Column("timestamp", UTC_TIME, nullable=False),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("routed_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.UniqueConstraint("message_id", name="uq_events_message_id"),
    )
    op.create_index("ix_events_status_id", "events", ["status", "id"])
    op.create_index("ix_events_user_id", "events", ["user_id"])
    op.create_table(
        "journey_entries",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.String(63), nullable=False),
        sa.Column("campaign_version", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(520), nullable=False),
        sa.Column("workflow_id", sa.String(700), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("entry_message_id", sa.String(512), nullable=False),
        sa.Column("entered_at", UTC_TIME, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_reason", sa.Text(), nullable=True),
        sa.Column("ended_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_journey_entries"),
        sa.UniqueConstraint(
            "campaign_id",
            "entry_message_id",
            name="uq_journey_entries_campaign_id_entry_message_id",
        ),
        sa.UniqueConstraint("run_id", name="uq_journey_entries_run_id"),
    )
    op.create_index(
        "ix_journey_entries_campaign_user", "journey_entries", ["campaign_id", "user_id"]
    )
    op.create_table(
        "deliveries",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("workflow_id", sa.String(700), nullable=False),
        sa.Column("campaign_id", sa.String(63), nullable=False),
        sa.Column("campaign_version", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.String(63), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(50), nullable=False),
        sa.Column("user_id", sa.String(520), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("provider_message_id", sa.String(512), nullable=True),
        sa.Column("provider_response", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.Column("sent_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["campaign_id", "campaign_version"],
            ["campaign_versions.campaign_id", "campaign_versions.version"],
            name="fk_deliveries_campaign_id_campaign_versions",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.UniqueConstraint("idempotency_key", name="uq_deliveries_idempotency_key"),
    )
    op.create_index("ix_deliveries_campaign_status", "deliveries", ["campaign_id", "status"])
    op.create_index("ix_deliveries_user_id", "deliveries", ["user_id"])
    op.create_table(
        "sandbox_messages",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("delivery_id", BIG_ID, nullable=False),
        sa.Column("user_id", sa.String(520), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name="fk_sandbox_messages_delivery_id_deliveries",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sandbox_messages"),
        sa.UniqueConstraint("delivery_id", name="uq_sandbox_messages_delivery_id"),
    )
    op.create_index("ix_sandbox_messages_user_id", "sandbox_messages", ["user_id"])


def downgrade() -> None:
    # Indexes go with their tables; children before the tables they point at.
    for table in (
        "sandbox_messages",
        "deliveries",
        "journey_entries",
        "events",
        "profiles",
        "campaign_versions",
        "campaigns",
    ):
        op.drop_table(table)
