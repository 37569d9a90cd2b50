"""hardening: relay claims and a failure count in the events row; the rejected-events log;
phone traits stored as E.164

Revision ID: 0003
Revises: 0002
Created: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a revision must not change when store/models.py does.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("claimed_until", UTC_TIME, nullable=True))
        batch.add_column(sa.Column("failures", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "rejected_events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.Column("message_id", sa.String(512), nullable=True),
        sa.Column("user_id", sa.String(520), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("item", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejected_events"),
    )
    op.create_index("ix_rejected_events_received_at", "rejected_events", ["received_at"])
    _phones_to_e164()


def _e164(value: str) -> str | None:
    """Frozen copy of core.sms.e164 as of this revision."""
    compact = value.strip()
    for c in " -.()/\u00a0\u2009\u2010\u2011\u2012\u2013":
        compact = compact.replace(c, "")
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    digits = compact[1:]
    if compact.startswith("+") and digits.isascii() and digits.isdigit():
        if 8 <= len(digits) <= 15 and not digits.startswith("0"):
            return compact
    return None


def _phones_to_e164() -> None:
    """SMS STOP looks phones up as E.164: bring the ones stored before this up to it."""
    profiles = sa.table("profiles", sa.column("user_id", sa.String), sa.column("traits", sa.JSON))
    connection = op.get_bind()
    for user_id, traits in connection.execute(sa.select(profiles.c.user_id, profiles.c.traits)):
        phone = (traits or {}).get("phone")
        normal = _e164(phone) if isinstance(phone, str) else None
        if normal is not None and normal != phone:
            connection.execute(
                profiles.update()
                .where(profiles.c.user_id == user_id)
                .values(traits={**traits, "phone": normal})
            )


def downgrade() -> None:
    op.drop_index("ix_rejected_events_received_at", table_name="rejected_events")
    op.drop_table("rejected_events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("failures")
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_by")
