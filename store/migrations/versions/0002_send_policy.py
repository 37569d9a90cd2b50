"""send policy: subscriptions, hard-bounce suppressions and the send ledger for caps

Revision ID: 0002
Revises: 0001
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a revision must not change when store/models.py does.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("user_id", sa.String(520), nullable=False),
        sa.Column("channel", sa.String(50), nullable=False),
        sa.Column("subscription_group", sa.String(63), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint(
            "user_id", "channel", "subscription_group", name="pk_subscriptions"
        ),
    )
    op.create_table(
        "suppressions",
        sa.Column("user_id", sa.String(520), nullable=False),
        sa.Column("channel", sa.String(50), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "channel", name="pk_suppressions"),
    )
    op.create_table(
        "send_ledger",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(520), nullable=False),
        sa.Column("channel", sa.String(50), nullable=False),
        sa.Column("campaign_id", sa.String(63), nullable=False),
        sa.Column("subscription_group", sa.String(63), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_send_ledger"),
        sa.UniqueConstraint("idempotency_key", name="uq_send_ledger_idempotency_key"),
    )
    op.create_index("ix_send_ledger_user_at", "send_ledger", ["user_id", "at"])


def downgrade() -> None:
    for table in ("send_ledger", "suppressions", "subscriptions"):
        op.drop_table(table)
