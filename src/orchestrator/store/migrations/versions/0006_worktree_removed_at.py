"""Worktree lifecycle: when a task's worktree was removed (NULL while it exists).

The janitor (``worktrees.py``) removes the worktree of a task that ended and records the
time here; a retry that brings the worktree back clears it. Only tasks that ended and
still have a worktree are looked at by the maintenance sweep, so the column keeps that
query small however many tasks have finished.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("worktree_removed_at", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("worktree_removed_at")
