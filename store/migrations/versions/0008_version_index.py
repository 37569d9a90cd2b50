"""version index: the running journeys of one campaign version, in workflow id order — what
a migration pages through (store.journey_versions.running_on_version_page) without reading
every row of the campaign for each page

Revision ID: 0008
Revises: 0007
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_journey_entries_campaign_version_status_workflow",
        "journey_entries",
        ["campaign_id", "campaign_version", "status", "workflow_id"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_journey_entries_campaign_version_status_workflow", table_name="journey_entries"
    )
