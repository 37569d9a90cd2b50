"""measurement: engagement per delivery (delivered, opened, clicked, bounced, spam), the
journey's group (holdout or split variant), the stats aggregates and conversions

Revision ID: 0005
Revises: 0004
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a revision must not change when store/models.py does.
UTC_TIME = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

DELIVERY_TIMES = (
    "delivered_at",
    "opened_at",
    "human_opened_at",
    "clicked_at",
    "human_clicked_at",
    "bounced_at",
    "complained_at",
)


def upgrade() -> None:
    with op.batch_alter_table("journey_entries") as batch:
        batch.add_column(sa.Column("variant", sa.String(63), nullable=True))
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("variant", sa.String(63), nullable=True))
        for name in DELIVERY_TIMES:
            batch.add_column(sa.Column(name, UTC_TIME, nullable=True))
        batch.add_column(sa.Column("opens", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("clicks", sa.Integer(), nullable=False, server_default="0"))
    # What was sent before engagement was tracked counts as delivered when it was sent.
    op.execute("UPDATE deliveries SET delivered_at = sent_at WHERE status = 'sent'")
    op.create_index("ix_deliveries_campaign_id_id", "deliveries", ["campaign_id", "id"])
    op.create_index("ix_deliveries_provider_message_id", "deliveries", ["provider_message_id"])
    op.create_table(
        "campaign_counts",
        sa.Column("campaign_id", sa.String(63), nullable=False),
        sa.Column("campaign_version", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.String(63), nullable=False),
        sa.Column("variant", sa.String(63), nullable=False),
        sa.Column("metric", sa.String(63), nullable=False),
        sa.Column("hour", UTC_TIME, nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(
            "campaign_id",
            "campaign_version",
            "step_id",
            "variant",
            "metric",
            "hour",
            name="pk_campaign_counts",
        ),
    )
    # A funnel reads one campaign's all-time rows, or its hours in a range.
    op.create_index("ix_campaign_counts_campaign_hour", "campaign_counts", ["campaign_id", "hour"])
    op.create_table(
        "conversions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("delivery_id", BIG_ID, nullable=False),
        sa.Column("campaign_id", sa.String(63), nullable=False),
        sa.Column("campaign_version", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.String(63), nullable=False),
        sa.Column("variant", sa.String(63), nullable=True),
        sa.Column("user_id", sa.String(520), nullable=False),
        sa.Column("message_id", sa.String(512), nullable=False),
        sa.Column("goal", sa.String(200), nullable=False),
        sa.Column("revenue", sa.Float(), nullable=True),
        sa.Column("currency", sa.String(8), nullable=True),
        sa.Column("at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_conversions"),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name="fk_conversions_delivery_id_deliveries",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("delivery_id", name="uq_conversions_delivery_id"),
        sa.UniqueConstraint(
            "campaign_id", "message_id", name="uq_conversions_campaign_id_message_id"
        ),
    )
    op.create_index("ix_conversions_campaign_at", "conversions", ["campaign_id", "at"])
    backfill_counts()


# What existed before the aggregates, counted into them once, so a campaign's funnel does not
# start from zero on upgrade. (Conversions then were not attributed to messages: they show
# as journeys ended `converted`, not as the campaign's conversions.)
SUPPRESSION_CATEGORY = """CASE
    WHEN error LIKE 'unsubscribed%' THEN 'suppressed:unsubscribed'
    WHEN error LIKE 'suppressed on%' THEN 'suppressed:suppression_list'
    WHEN error LIKE 'cap:%' THEN 'suppressed:frequency_cap'
    WHEN error LIKE 'quiet hours%' OR error LIKE 'still deferred%' THEN 'suppressed:quiet_hours'
    ELSE 'suppressed:other' END"""


def backfill_counts() -> None:
    if op.get_bind().dialect.name == "postgresql":

        def hour(column: str) -> str:
            return f"date_trunc('hour', {column})"

        all_time = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"

    else:

        def hour(column: str) -> str:
            # As SQLAlchemy writes a SQLite DATETIME, so later bumps meet the same rows.
            return f"strftime('%Y-%m-%d %H:00:00.000000', {column})"

        all_time = "'1970-01-01 00:00:00.000000'"

    sources = [
        ("journey_entries", "''", "'entered'", "entered_at", "1 = 1"),
        ("journey_entries", "''", "'ended:' || status", "ended_at", "ended_at IS NOT NULL"),
        ("deliveries", "step_id", "'sent'", "sent_at", "status = 'sent'"),
        ("deliveries", "step_id", "'delivered'", "sent_at", "status = 'sent'"),
        ("deliveries", "step_id", "'failed'", "updated_at", "status = 'failed'"),
        ("deliveries", "step_id", SUPPRESSION_CATEGORY, "created_at", "status = 'suppressed'"),
    ]
    for table, step, metric, at, where in sources:
        op.execute(
            f"""INSERT INTO campaign_counts
                (campaign_id, campaign_version, step_id, variant, metric, hour, count, amount)
            SELECT campaign_id, campaign_version, {step}, '', {metric}, {hour(at)}, COUNT(*), 0
            FROM {table} WHERE {where} AND {at} IS NOT NULL
            GROUP BY 1, 2, 3, 5, 6"""
        )
    # And the all-time rows (hour 1970-01-01) a funnel without a time range reads.
    op.execute(
        f"""INSERT INTO campaign_counts
            (campaign_id, campaign_version, step_id, variant, metric, hour, count, amount)
        SELECT campaign_id, campaign_version, step_id, variant, metric, {all_time}, SUM(count), 0
        FROM campaign_counts GROUP BY 1, 2, 3, 4, 5"""
    )


def downgrade() -> None:
    op.drop_index("ix_conversions_campaign_at", table_name="conversions")
    op.drop_table("conversions")
    op.drop_index("ix_campaign_counts_campaign_hour", table_name="campaign_counts")
    op.drop_table("campaign_counts")
    op.drop_index("ix_deliveries_provider_message_id", table_name="deliveries")
    op.drop_index("ix_deliveries_campaign_id_id", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        for name in ("clicks", "opens", *reversed(DELIVERY_TIMES), "variant"):
            batch.drop_column(name)
    with op.batch_alter_table("journey_entries") as batch:
        batch.drop_column("variant")
