"""A job's limits stored with the job: its timeout and its run budget, as when it started.

The engine resolved them from the configuration when it launched the job; an engine
that adopts the job after a restart watched it with whatever the configuration said
then (the global ``agent_timeout_s`` when the agent no longer resolved, and no run
budget at all). Now the launching engine writes them here and the adopting engine uses
them. NULL for jobs launched before this migration (their limits are resolved again, as
before).

It comes after 0008 (the webhook inbox), which landed first: the chain is
0006 -> 0008 -> 0007, one head.

Revision ID: 0007
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("timeout_s", sa.Float, nullable=True))
        batch.add_column(sa.Column("budget_usd", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("budget_usd")
        batch.drop_column("timeout_s")
