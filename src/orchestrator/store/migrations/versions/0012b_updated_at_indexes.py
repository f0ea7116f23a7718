"""Indexes on ``tasks.updated_at`` and ``jobs.updated_at``: the reconciler's change window.

The reconciler reads the tasks written since its last sweep, and the tasks one of whose
jobs was (decision 0028); without these indexes each sweep would scan both tables, and
its cost would grow with history again.

Its id is ``0012b``: 0012 (``task_spend``) landed first under the number this was given.

Revision ID: 0012b
Revises: 0012
"""

from alembic import op

revision = "0012b"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_updated_at", "tasks", ["updated_at"])
    op.create_index("ix_jobs_updated_at", "jobs", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_updated_at", table_name="jobs")
    op.drop_index("ix_tasks_updated_at", table_name="tasks")
