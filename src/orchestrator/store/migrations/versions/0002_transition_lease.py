"""Crash-safe transitions: instances (heartbeats), transition_lease, effects journal.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pid_start", sa.BigInteger, nullable=True))
    op.create_table(
        "instances",
        sa.Column("boot_id", sa.String(64), nullable=False),
        sa.Column("instance", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("pid_start", sa.BigInteger, nullable=True),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("stopped_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("boot_id", name="pk_instances"),
    )
    op.create_table(
        "transition_lease",
        sa.Column("task_id", sa.Integer, nullable=False),
        sa.Column("lease_epoch", sa.Integer, nullable=False),
        sa.Column("transition", sa.String(100), nullable=True),
        sa.Column("actor", sa.String(100), nullable=True),
        sa.Column("owner_instance", sa.String(200), nullable=True),
        sa.Column("owner_host", sa.String(255), nullable=True),
        sa.Column("owner_pid", sa.Integer, nullable=True),
        sa.Column("owner_boot_id", sa.String(64), nullable=True),
        sa.Column("acquired_at", sa.Float, nullable=True),
        sa.Column("released_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("task_id", name="pk_transition_lease"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_transition_lease_task_id_tasks", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "effects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.Integer, nullable=False),
        sa.Column("transition", sa.String(100), nullable=False),
        sa.Column("effect", sa.String(100), nullable=False),
        sa.Column("lease_epoch", sa.Integer, nullable=False),
        sa.Column("idempotency_key", sa.String(300), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("completed_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_effects"),
        sa.UniqueConstraint("idempotency_key", name="uq_effects_idempotency_key"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_effects_task_id_tasks", ondelete="CASCADE"
        ),
    )
    op.create_index(
        "ix_effects_task_id_transition_effect", "effects", ["task_id", "transition", "effect"]
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pid_start")
    op.drop_table("effects")
    op.drop_table("transition_lease")
    op.drop_table("instances")
