"""Outbox claims: who is delivering a message (boot id) and since when.

A message is claimed by a compare-and-swap ``pending -> sending`` stamped with the
deliverer's boot id; a claim whose owner died (or that outlived the claim timeout) is
taken over, and the telegram channel then checks ``task_cards`` before sending again.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("claimed_at", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("claimed_at")
        batch.drop_column("claimed_by")
