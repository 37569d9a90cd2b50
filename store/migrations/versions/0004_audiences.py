"""audiences: identities, segments and their memberships, per-day event counters, date
traits; whether an event has been counted for segments

Revision ID: 0004
Revises: 0003
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a revision must not change when store/models.py does.
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(
            sa.Column("counted", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "identities",
        sa.Column("anonymous_id", sa.String(520), nullable=False),
        sa.Column("user_id", sa.String(520), nullable=False),
        sa.Column("message_id", sa.String(512), nullable=False),
        sa.Column("linked_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("anonymous_id", name="pk_identities"),
    )
    op.create_index("ix_identities_user_id", "identities", ["user_id"])
    op.create_table(
        "segments",
        sa.Column("id", sa.String(63), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("definition_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("build_cursor", sa.String(520), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_segments"),
    )
    op.create_table(
        "segment_memberships",
        sa.Column("segment_id", sa.String(63), nullable=False),
        sa.Column("user_id", sa.String(520), nullable=False),
        sa.Column("member", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("changes", sa.Integer(), nullable=False),
        sa.Column("changed_at", UTC_TIME, nullable=False),
        sa.Column("recheck_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name="fk_segment_memberships_segment_id_segments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("segment_id", "user_id", name="pk_segment_memberships"),
    )
    op.create_index(
        "ix_segment_memberships_members", "segment_memberships", ["segment_id", "member", "user_id"]
    )
    op.create_index("ix_segment_memberships_recheck_at", "segment_memberships", ["recheck_at"])
    op.create_index("ix_segment_memberships_user_id", "segment_memberships", ["user_id"])
    op.create_table(
        "event_counters",
        sa.Column("user_id", sa.String(520), nullable=False),
        sa.Column("counter", sa.String(64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "counter", "day", name="pk_event_counters"),
    )
    op.create_table(
        "date_traits",
        sa.Column("user_id", sa.String(520), nullable=False),
        sa.Column("trait", sa.String(200), nullable=False),
        sa.Column("month_day", sa.String(5), nullable=False),
        sa.Column("value", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "trait", name="pk_date_traits"),
    )
    op.create_index("ix_date_traits_trait_month_day", "date_traits", ["trait", "month_day"])
    op.create_index("ix_date_traits_trait_value", "date_traits", ["trait", "value"])


def downgrade() -> None:
    op.drop_table("date_traits")
    op.drop_table("event_counters")
    op.drop_table("segment_memberships")
    op.drop_table("segments")
    op.drop_index("ix_identities_user_id", table_name="identities")
    op.drop_table("identities")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("counted")
