"""Each task's spend over all time, ``task_spend``, kept by triggers (decision 0025).

The cost report's top tasks visit tasks costliest first: a task's spend in a period is
at most its spend over all time (costs are not negative), so once the tenth best
period spend found is above the all-time spend of every task not yet visited, the top
is known. Triggers on ``agent_runs``, beside those of 0011, keep the sums: an insert
adds the run, an update of a summed column or of ``task_id`` moves it, a delete takes
it out. Backfilled here from every run.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

WATCHED = "task_id, cost_usd, input_tokens, output_tokens"
ADD = (
    "ON CONFLICT (task_id) DO UPDATE SET "
    "cost_usd = task_spend.cost_usd + excluded.cost_usd, "
    "input_tokens = task_spend.input_tokens + excluded.input_tokens, "
    "output_tokens = task_spend.output_tokens + excluded.output_tokens, "
    "runs = task_spend.runs + excluded.runs"
)


def _move(row: str, sign: str) -> str:
    """Add (``sign`` '') or take out (``sign`` '-') the run ``row`` (NEW or OLD)."""
    return (
        "INSERT INTO task_spend (task_id, cost_usd, input_tokens, output_tokens, runs) "  # noqa: S608
        f"VALUES ({row}.task_id, {sign}{row}.cost_usd, {sign}{row}.input_tokens, "
        f"{sign}{row}.output_tokens, {sign}1) {ADD};"
    )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "task_spend",
        sa.Column("task_id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("runs", sa.Integer, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("task_id", name="pk_task_spend"),
    )
    op.create_index("ix_task_spend_cost_usd_task_id", "task_spend", ["cost_usd", "task_id"])
    op.execute(
        "INSERT INTO task_spend (task_id, cost_usd, input_tokens, output_tokens, runs) "
        "SELECT task_id, sum(cost_usd), sum(input_tokens), sum(output_tokens), count(*) "
        "FROM agent_runs GROUP BY task_id"
    )
    if dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION task_spend_follow_run() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            "BEGIN\n"
            "  IF TG_OP IN ('UPDATE', 'DELETE') THEN\n"
            f"    {_move('OLD', '-')}\n"
            "  END IF;\n"
            "  IF TG_OP IN ('INSERT', 'UPDATE') THEN\n"
            f"    {_move('NEW', '')}\n"
            "  END IF;\n"
            "  RETURN NULL;\n"
            "END $$"
        )
        op.execute(
            "CREATE TRIGGER task_spend_follow_run "
            f"AFTER INSERT OR DELETE OR UPDATE OF {WATCHED} ON agent_runs "
            "FOR EACH ROW EXECUTE FUNCTION task_spend_follow_run()"
        )
        return
    op.execute(
        "CREATE TRIGGER task_spend_run_inserted AFTER INSERT ON agent_runs "
        f"BEGIN {_move('NEW', '')} END"
    )
    op.execute(
        f"CREATE TRIGGER task_spend_run_updated AFTER UPDATE OF {WATCHED} ON agent_runs "
        f"BEGIN {_move('OLD', '-')} {_move('NEW', '')} END"
    )
    op.execute(
        "CREATE TRIGGER task_spend_run_deleted AFTER DELETE ON agent_runs "
        f"BEGIN {_move('OLD', '-')} END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER task_spend_follow_run ON agent_runs")
        op.execute("DROP FUNCTION task_spend_follow_run()")
    else:
        for name in ("inserted", "updated", "deleted"):
            op.execute(f"DROP TRIGGER task_spend_run_{name}")
    op.drop_table("task_spend")
