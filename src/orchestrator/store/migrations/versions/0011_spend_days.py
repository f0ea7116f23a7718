"""The cost report's daily rollup (decision 0025): ``spend_days``, kept by triggers.

One row per UTC day of a run's start and (repository, agent, model, stage): the runs'
cost, tokens and number. A trigger on ``agent_runs`` adds a run when it is inserted,
takes its old values out and puts its new ones in when a summed column changes (the
exit records the cost; a test or a repair may move ``started_at``), and takes it out
when it is deleted; the repository and stage are the run's task's and job's, which
never change. Being triggers, every write of a run moves the rollup in the same
transaction, whoever writes it. Backfilled here from every run.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

KEY = "day, repository, agent, model, stage"
SUMS = "cost_usd, input_tokens, output_tokens, runs"
# Summed columns and the ones naming the key: a change of any moves the run.
WATCHED = "started_at, agent, model, cost_usd, input_tokens, output_tokens, task_id, job_id"
ADD = (
    "ON CONFLICT (day, repository, agent, model, stage) DO UPDATE SET "
    "cost_usd = spend_days.cost_usd + excluded.cost_usd, "
    "input_tokens = spend_days.input_tokens + excluded.input_tokens, "
    "output_tokens = spend_days.output_tokens + excluded.output_tokens, "
    "runs = spend_days.runs + excluded.runs"
)


def _day(started_at: str, dialect: str) -> str:
    # As store/costs.py buckets: PostgreSQL's integer cast rounds, SQLite's truncates.
    if dialect == "postgresql":
        return f"CAST(floor({started_at} / 86400) AS BIGINT)"
    return f"CAST({started_at} / 86400 AS INTEGER)"


def _move(row: str, sign: str, dialect: str) -> str:
    """Add (``sign`` '') or take out (``sign`` '-') the run ``row`` (NEW or OLD)."""
    # Every part is a constant of this module: no value reaches the text.
    return (
        f"INSERT INTO spend_days ({KEY}, {SUMS}) "  # noqa: S608
        f"SELECT {_day(f'{row}.started_at', dialect)}, tasks.repository, {row}.agent, "
        f"{row}.model, jobs.stage, {sign}{row}.cost_usd, {sign}{row}.input_tokens, "
        f"{sign}{row}.output_tokens, {sign}1 "
        f"FROM tasks JOIN jobs ON jobs.id = {row}.job_id WHERE tasks.id = {row}.task_id "
        f"{ADD};"
    )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "spend_days",
        sa.Column("day", sa.BigInteger, nullable=False),
        sa.Column("repository", sa.String(1024), nullable=False),
        sa.Column("agent", sa.String(100), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("runs", sa.Integer, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint(
            "day", "repository", "agent", "model", "stage", name="pk_spend_days"
        ),
    )
    op.execute(
        f"INSERT INTO spend_days ({KEY}, {SUMS}) "  # noqa: S608 (this module's constants)
        f"SELECT {_day('agent_runs.started_at', dialect)} AS d, tasks.repository, "
        "agent_runs.agent, agent_runs.model, jobs.stage, sum(agent_runs.cost_usd), "
        "sum(agent_runs.input_tokens), sum(agent_runs.output_tokens), count(*) "
        "FROM agent_runs JOIN tasks ON tasks.id = agent_runs.task_id "
        "JOIN jobs ON jobs.id = agent_runs.job_id "
        "GROUP BY d, tasks.repository, agent_runs.agent, agent_runs.model, jobs.stage"
    )
    if dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION spend_days_follow_run() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            "BEGIN\n"
            "  IF TG_OP IN ('UPDATE', 'DELETE') THEN\n"
            f"    {_move('OLD', '-', dialect)}\n"
            "  END IF;\n"
            "  IF TG_OP IN ('INSERT', 'UPDATE') THEN\n"
            f"    {_move('NEW', '', dialect)}\n"
            "  END IF;\n"
            "  RETURN NULL;\n"
            "END $$"
        )
        op.execute(
            "CREATE TRIGGER spend_days_follow_run "
            f"AFTER INSERT OR DELETE OR UPDATE OF {WATCHED} ON agent_runs "
            "FOR EACH ROW EXECUTE FUNCTION spend_days_follow_run()"
        )
        return
    # SQLite: one trigger per kind of write; "WHERE" before "ON CONFLICT" is there.
    op.execute(
        "CREATE TRIGGER spend_days_run_inserted AFTER INSERT ON agent_runs "
        f"BEGIN {_move('NEW', '', dialect)} END"
    )
    op.execute(
        f"CREATE TRIGGER spend_days_run_updated AFTER UPDATE OF {WATCHED} ON agent_runs "
        f"BEGIN {_move('OLD', '-', dialect)} {_move('NEW', '', dialect)} END"
    )
    op.execute(
        "CREATE TRIGGER spend_days_run_deleted AFTER DELETE ON agent_runs "
        f"BEGIN {_move('OLD', '-', dialect)} END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER spend_days_follow_run ON agent_runs")
        op.execute("DROP FUNCTION spend_days_follow_run()")
    else:
        for name in ("inserted", "updated", "deleted"):
            op.execute(f"DROP TRIGGER spend_days_run_{name}")
    op.drop_table("spend_days")
