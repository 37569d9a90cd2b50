"""membership: journey entries serve as the index of who is in which journey — a row can be
written before its journey starts (run id not known yet), and the router's question
"which of these campaigns has a running journey for any of these ids" reads the index alone

Revision ID: 0006
Revises: 0005
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The fan-out writes a journey's row before starting it (store.entries.reserve_entries)
    # and its run id once started.
    with op.batch_alter_table("journey_entries") as batch:
        batch.alter_column("run_id", existing_type=sa.String(64), nullable=True)
    # Status joins the (campaign, user) index: a user with many ended journeys of a campaign
    # costs the router no row reads, and re-entry checks still use its first two columns.
    op.drop_index("ix_journey_entries_campaign_user", table_name="journey_entries")
    op.create_index(
        "ix_journey_entries_campaign_user_status",
        "journey_entries",
        ["campaign_id", "user_id", "status"],
    )


def downgrade() -> None:
    op.drop_index("ix_journey_entries_campaign_user_status", table_name="journey_entries")
    op.create_index(
        "ix_journey_entries_campaign_user", "journey_entries", ["campaign_id", "user_id"]
    )
    # A row still waiting for its run id cannot be kept without one.
    op.execute("DELETE FROM journey_entries WHERE run_id IS NULL")
    with op.batch_alter_table("journey_entries") as batch:
        batch.alter_column("run_id", existing_type=sa.String(64), nullable=False)
