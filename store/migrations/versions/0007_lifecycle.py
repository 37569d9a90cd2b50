"""lifecycle: a campaign version is published (made the one new journeys enter) by an
operator, not by saving it — `published_at` says when it last was, NULL for a draft

Revision ID: 0007
Revises: 0006
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of the model type: a revision must not change when store/models.py does.
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("campaign_versions") as batch:
        batch.add_column(sa.Column("published_at", UTC_TIME, nullable=True))
    # Until now saving made a version current at once: every version up to the current one
    # of a campaign that ever left draft has been live, from when it was saved. A draft
    # campaign's versions never were.
    op.execute(
        """
        UPDATE campaign_versions SET published_at = created_at
        WHERE EXISTS (
            SELECT 1 FROM campaigns
            WHERE campaigns.id = campaign_versions.campaign_id
              AND campaigns.status != 'draft'
              AND campaign_versions.version <= campaigns.current_version
        )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("campaign_versions") as batch:
        batch.drop_column("published_at")
