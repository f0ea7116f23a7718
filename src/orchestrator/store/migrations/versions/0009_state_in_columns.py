"""State in columns (decision 0023): what was inferred from the event log or matched in
error text is a column, backfilled here from that log and that text, so an upgraded
database behaves as it did.

* ``jobs.failure_kind``: how a failed job failed (``kernel/failures.py``). Backfilled for
  every failed job from, in order: a ``job.lost_race`` event; a ``task.failed`` event of
  the job with ``cause = environment``; the job's ``gate.verdict`` event; the error
  texts the code wrote before this revision (:func:`legacy_failure_kind`, frozen here:
  this is the last place that reads them); a waiting job failed without having started
  (a cancel or a person's rollback); the recorded exit code; else ``unknown``.
* ``tasks.origin`` and ``tasks.origin_key``: the origin on the task's first
  ``task.created`` event, and its key (``kernel/origins.py``).
* ``tasks.pending_rollback``: the ``deploy.unhealthy`` event a task is still rolling
  back: its newest event of the kinds that start or end a rollback, when it is that one.

Revision ID: 0009
Revises: 0007
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from orchestrator.kernel.events import EventKind
from orchestrator.kernel.failures import FailureKind
from orchestrator.kernel.origins import origin_key

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None

_events = sa.table(
    "events",
    sa.column("id", sa.Integer),
    sa.column("task_id", sa.Integer),
    sa.column("job_id", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("data", sa.JSON),
)
_tasks = sa.table(
    "tasks",
    sa.column("id", sa.Integer),
    sa.column("stage", sa.String),
    sa.column("origin", sa.JSON),
    sa.column("origin_key", sa.String),
    sa.column("pending_rollback", sa.Integer),
)
_jobs = sa.table(
    "jobs",
    sa.column("id", sa.Integer),
    sa.column("task_id", sa.Integer),
    sa.column("status", sa.String),
    sa.column("error", sa.Text),
    sa.column("started_at", sa.Float),
    sa.column("failure_kind", sa.String),
)
_runs = sa.table(
    "agent_runs",
    sa.column("id", sa.Integer),
    sa.column("job_id", sa.Integer),
    sa.column("exit_code", sa.Integer),
)

# The event kinds this revision reads (stored values: EventKind never renames one).
_CREATED = EventKind.TASK_CREATED
_UNHEALTHY = EventKind.DEPLOY_UNHEALTHY
_ROLLBACK_ENDS = (EventKind.ROLLBACK, EventKind.CANCELLED, EventKind.STAGE_CHANGED)
_LOST_RACE = EventKind.JOB_LOST_RACE
_FAILED = EventKind.FAILED
_VERDICT = EventKind.GATE_VERDICT

# The error texts of revisions before this one: (how the text starts, the kind).
_LEGACY_PREFIXES: tuple[tuple[str, FailureKind], ...] = (
    ("finalize failed: ", FailureKind.FINALIZE_ERROR),
    ("timed out after ", FailureKind.TIMEOUT),
    ("reaper tier 3: ", FailureKind.REAPED),
    ("cost budget $", FailureKind.TASK_BUDGET),
    ("cannot start ", FailureKind.LAUNCH_FAILED),
    ("task moved to ", FailureKind.LOST_RACE),
    ("the job was lost with the previous orchestrator process", FailureKind.LOST),
    ("the job's engine died before it ended", FailureKind.LOST),
    ("the job ended without recording an exit code", FailureKind.KILLED),
    ("engine shutdown", FailureKind.KILLED),
)
# (a text the error contains, the kind).
_LEGACY_PARTS: tuple[tuple[str, FailureKind], ...] = (
    ("; job is stale", FailureKind.LOST_RACE),
    (" went over its run budget of $", FailureKind.BUDGET),
    (", more than commit_max_", FailureKind.COMMIT_REFUSED),
    (" exited with code ", FailureKind.NONZERO_EXIT),
)


def legacy_failure_kind(
    error: str | None,
    *,
    lost_race: bool = False,
    environment: bool = False,
    verdict: str | None = None,
    started: bool = True,
    exit_code: int | None = None,
) -> FailureKind:
    """How a job that failed before this revision failed, from what it left behind.

    ``lost_race``: it has a ``job.lost_race`` event; ``environment``: its task failed
    with ``cause = environment`` on it; ``verdict``: its gates' outcome (``fail``,
    ``defer``), if they judged it; ``started``: it ever ran; ``exit_code``: its run's.
    """
    if lost_race:
        return FailureKind.LOST_RACE
    if environment:
        return FailureKind.ENVIRONMENT
    if verdict == "defer":
        return FailureKind.GATE_DEFERRED
    if verdict == "fail":
        return FailureKind.GATE_FAILED
    text = error or ""
    for prefix, kind in _LEGACY_PREFIXES:
        if text.startswith(prefix):
            return kind
    for part, kind in _LEGACY_PARTS:
        if part in text:
            return kind
    if not started:
        return FailureKind.CANCELLED
    if exit_code is not None and exit_code not in (0, -1):
        return FailureKind.NONZERO_EXIT
    if exit_code == 0 and text:
        return FailureKind.AGENT_ERROR
    return FailureKind.UNKNOWN


def _backfill_failure_kinds(conn: sa.Connection) -> None:
    failed = conn.execute(
        sa.select(_jobs.c.id, _jobs.c.error, _jobs.c.started_at).where(_jobs.c.status == "failed")
    ).all()
    if not failed:
        return
    lost = {
        int(row.job_id)
        for row in conn.execute(
            sa.select(_events.c.job_id).where(
                _events.c.kind == _LOST_RACE, _events.c.job_id.is_not(None)
            )
        )
    }
    environment: set[int] = set()
    verdicts: dict[int, str] = {}
    for row in conn.execute(
        sa.select(_events.c.job_id, _events.c.kind, _events.c.data)
        .where(_events.c.kind.in_((_FAILED, _VERDICT)), _events.c.job_id.is_not(None))
        .order_by(_events.c.id)
    ):
        data: Any = row.data if isinstance(row.data, dict) else {}
        if row.kind == _FAILED and data.get("cause") == "environment":
            environment.add(int(row.job_id))
        elif row.kind == _VERDICT and isinstance(data.get("outcome"), str):
            verdicts[int(row.job_id)] = data["outcome"]  # the newest wins
    exits: dict[int, int | None] = {}
    for run in conn.execute(
        sa.select(_runs.c.job_id, _runs.c.exit_code).order_by(_runs.c.id)
    ):  # the newest run of a job wins
        exits[int(run.job_id)] = None if run.exit_code is None else int(run.exit_code)
    for job in failed:
        job_id = int(job.id)
        kind = legacy_failure_kind(
            job.error,
            lost_race=job_id in lost,
            environment=job_id in environment,
            verdict=verdicts.get(job_id),
            started=job.started_at is not None,
            exit_code=exits.get(job_id),
        )
        conn.execute(_jobs.update().where(_jobs.c.id == job_id).values(failure_kind=str(kind)))


def _backfill_origins(conn: sa.Connection) -> None:
    seen: set[int] = set()
    for row in conn.execute(
        sa.select(_events.c.task_id, _events.c.data)
        .where(_events.c.kind == _CREATED, _events.c.task_id.is_not(None))
        .order_by(_events.c.id)
    ):
        task_id = int(row.task_id)
        if task_id in seen:
            continue  # the first task.created event is the one write-back read
        seen.add(task_id)
        data = row.data if isinstance(row.data, dict) else {}
        origin = data.get("origin")
        if isinstance(origin, dict):
            conn.execute(
                _tasks.update()
                .where(_tasks.c.id == task_id)
                .values(origin=origin, origin_key=origin_key(origin))
            )


def _backfill_pending_rollbacks(conn: sa.Connection) -> None:
    newest = (
        sa.select(sa.func.max(_events.c.id).label("id"))
        .where(_events.c.kind.in_((_UNHEALTHY, *_ROLLBACK_ENDS)), _events.c.task_id.is_not(None))
        .group_by(_events.c.task_id)
        .subquery()
    )
    for row in conn.execute(
        sa.select(_events.c.id, _events.c.task_id).where(
            _events.c.id.in_(sa.select(newest.c.id)), _events.c.kind == _UNHEALTHY
        )
    ):
        conn.execute(
            _tasks.update().where(_tasks.c.id == row.task_id).values(pending_rollback=row.id)
        )


def upgrade() -> None:
    # Columns are added in place (ALTER TABLE), never by copying a table (see below).
    with op.batch_alter_table("jobs", recreate="never") as batch:
        batch.add_column(sa.Column("failure_kind", sa.String(32), nullable=True))
    with op.batch_alter_table("tasks", recreate="never") as batch:
        batch.add_column(sa.Column("origin", sa.JSON(none_as_null=True), nullable=True))
        batch.add_column(sa.Column("origin_key", sa.String(300), nullable=True))
        batch.add_column(sa.Column("pending_rollback", sa.Integer, nullable=True))
        batch.create_index("ix_tasks_origin_key", ["origin_key"])
    conn = op.get_bind()
    _backfill_failure_kinds(conn)
    _backfill_origins(conn)
    _backfill_pending_rollbacks(conn)


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), never a copy of the table: on SQLite,
    # with foreign keys on, dropping the old ``tasks`` would cascade to every job, run
    # and event of every task.
    with op.batch_alter_table("tasks", recreate="never") as batch:
        batch.drop_index("ix_tasks_origin_key")
        batch.drop_column("pending_rollback")
        batch.drop_column("origin_key")
        batch.drop_column("origin")
    with op.batch_alter_table("jobs", recreate="never") as batch:
        batch.drop_column("failure_kind")
