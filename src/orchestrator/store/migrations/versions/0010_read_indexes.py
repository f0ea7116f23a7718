"""Indexes for the pages and lists read with 10,000 tasks (issue 9, decision 0025).

* ``tasks (work_item)``: ``GET /tasks/{ref}`` finds a task by its work item alone; the
  unique ``(repository, work_item)`` index cannot serve that, so SQLite scanned the table.
* ``jobs (status, id)``: a page of ``/queue`` reads each status's jobs in id order from
  the index and stops after a page, instead of sorting every waiting job.
* ``agent_runs (task_id, started_at, cost_usd, input_tokens, output_tokens)`` in place of
  ``agent_runs (task_id)``: what a task's spend sums is in the index (the cost report's
  top tasks, a task list's cost), so neither database reads the table for it.
* ``agent_runs (started_at)``: the runs of a stretch of time (a period's edges).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SPEND_COLUMNS = ["task_id", "started_at", "cost_usd", "input_tokens", "output_tokens"]


def upgrade() -> None:
    op.create_index("ix_tasks_work_item", "tasks", ["work_item"])
    op.create_index("ix_jobs_status_id", "jobs", ["status", "id"])
    op.create_index("ix_agent_runs_task_spend", "agent_runs", SPEND_COLUMNS)
    # The covering index starts with task_id: it serves every lookup the old one did.
    op.drop_index("ix_agent_runs_task_id", table_name="agent_runs")
    op.create_index("ix_agent_runs_started_at", "agent_runs", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_agent_runs_started_at", table_name="agent_runs")
    op.create_index("ix_agent_runs_task_id", "agent_runs", ["task_id"])
    op.drop_index("ix_agent_runs_task_spend", table_name="agent_runs")
    op.drop_index("ix_jobs_status_id", table_name="jobs")
    op.drop_index("ix_tasks_work_item", table_name="tasks")
