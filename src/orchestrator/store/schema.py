"""The database schema, in SQLAlchemy Core. One schema for SQLite and PostgreSQL.

Timestamps are UNIX seconds (floats): the same on both databases, and ages are a
subtraction. Alembic migrations in ``migrations/`` create exactly this schema; a test
compares the migrated database with this metadata.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "agent_runs",
    "api_tokens",
    "effects",
    "events",
    "inbox",
    "instances",
    "jobs",
    "metadata",
    "outbox",
    "spend_days",
    "task_cards",
    "task_spend",
    "tasks",
    "transition_lease",
    "webhook_deliveries",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("work_item", String(64), nullable=False),
    # Absolute path of the repository on disk (the local forge).
    Column("repository", String(1024), nullable=False),
    Column("title", String(500), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("stage", String(32), nullable=False),
    # Bumped by every stage write; the compare-and-swap can pin it.
    Column("version", Integer, nullable=False, server_default="0"),
    # Attempt of the current stage (1-based) and rollbacks to development so far.
    Column("attempt", Integer, nullable=False, server_default="1"),
    Column("rollback_count", Integer, nullable=False, server_default="0"),
    # Set when the task failed: the stage stays, retry resumes it.
    Column("failed_reason", Text, nullable=True),
    Column("branch", String(300), nullable=False),
    Column("base_branch", String(300), nullable=False),
    Column("base_sha", String(64), nullable=False),
    Column("worktree", String(2048), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # When the janitor removed the worktree of the ended task; NULL while it exists.
    Column("worktree_removed_at", Float, nullable=True),
    # Where the work item came from (a tracker's issue: {"tracker": "plane", ...}) and
    # its key (kernel/origins.py), by which an inbound change of the issue finds the
    # task; NULL for a task made by hand (the CLI, the API).
    Column("origin", JSON(none_as_null=True), nullable=True),
    Column("origin_key", String(300), nullable=True),
    # The id of the deploy.unhealthy event whose rollback is still to finish; set with
    # the verdict, cleared by every stage move (lifecycle/post_deploy.py).
    Column("pending_rollback", Integer, nullable=True),
    UniqueConstraint("repository", "work_item"),
    Index(None, "origin_key"),
    # GET /tasks/{ref} finds a task by its work item alone (migration 0010).
    Index(None, "work_item"),
    # The reconciler's change window (migration 0012b).
    Index(None, "updated_at"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("stage", String(32), nullable=False),
    Column("kind", String(16), nullable=False),  # agent | runner
    Column("agent", String(100), nullable=False),
    # queued | running | finalizing | done | failed | deferred
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    # Why this run exists: the previous verdict, given to the agent as feedback.
    Column("feedback", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("pid", Integer, nullable=True),
    Column("owner_boot_id", String(64), nullable=True),
    # Start time of `pid` (clock ticks since boot): adoption after a restart checks it.
    Column("pid_start", BigInteger, nullable=True),
    # HEAD of the worktree when the job started: the gates judge what it added.
    Column("start_sha", String(64), nullable=True),
    Column("not_before", Float, nullable=False),
    Column("enqueued_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    # The job's limits as when it started (its agent's or stage's timeout, its run budget
    # in USD, 0 = none): an engine adopting it after a restart keeps them. NULL: before 0007.
    Column("timeout_s", Float, nullable=True),
    Column("budget_usd", Float, nullable=True),
    # How a failed job failed (kernel/failures.py: timeout, gate_failed, lost_race...);
    # decisions read this, never the error text. NULL while it has not failed.
    Column("failure_kind", String(32), nullable=True),
    Index(None, "status", "not_before"),
    Index(None, "task_id"),
    # /queue's page: each status's jobs in id order, read from the index (0010).
    Index(None, "status", "id"),
    Index(None, "updated_at"),
)

agent_runs = Table(
    "agent_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("agent", String(100), nullable=False),
    Column("model", String(200), nullable=False, server_default=""),
    Column("effort", String(50), nullable=False, server_default=""),
    Column("attempt", Integer, nullable=False),
    Column("exit_code", Integer, nullable=True),
    Column("exit_recorded_at", Float, nullable=True),
    Column("input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cost_usd", Float, nullable=False, server_default="0"),
    Column("num_turns", Integer, nullable=True),
    Column("log_path", String(2048), nullable=False),
    Column("started_at", Float, nullable=False),
    # A task's runs, covering what its spend sums: the cost report's top tasks and the
    # task lists' cost read the index alone (migration 0010; it replaced ix_..._task_id).
    Index(
        "ix_agent_runs_task_spend",
        "task_id",
        "started_at",
        "cost_usd",
        "input_tokens",
        "output_tokens",
    ),
    Index(None, "job_id"),
    # The runs of a stretch of time (the cost report's partial days).
    Index(None, "started_at"),
)

# The cost report's daily rollup (decision 0025): the runs that started on one UTC day
# (days since 1970-01-01) for one (repository, agent, model, stage), summed. Database
# triggers on agent_runs keep it (migration 0011), so every write of a run moves it, in
# the same transaction; a key whose runs all moved away stays with runs = 0.
spend_days = Table(
    "spend_days",
    metadata,
    Column("day", BigInteger, nullable=False),
    Column("repository", String(1024), nullable=False),
    Column("agent", String(100), nullable=False),
    Column("model", String(200), nullable=False),
    Column("stage", String(32), nullable=False),
    Column("cost_usd", Float, nullable=False, server_default="0"),
    Column("input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, server_default="0"),
    Column("runs", Integer, nullable=False, server_default="0"),
    PrimaryKeyConstraint("day", "repository", "agent", "model", "stage"),
)

# Each task's spend over all time, kept by triggers on agent_runs like spend_days
# (migration 0012): an upper bound of its spend in any period, by which the cost
# report's top tasks visit the costliest tasks first (decision 0025). No foreign key: a
# run deleted with its task must not fail to take itself out.
task_spend = Table(
    "task_spend",
    metadata,
    Column("task_id", Integer, primary_key=True, autoincrement=False),
    Column("cost_usd", Float, nullable=False, server_default="0"),
    Column("input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, server_default="0"),
    Column("runs", Integer, nullable=False, server_default="0"),
    Index(None, "cost_usd", "task_id"),
)

# Append-only audit trail: every transition, verdict, retry and side effect.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=True),
    Column("job_id", Integer, nullable=True),
    Column("kind", String(64), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("from_stage", String(32), nullable=True),
    Column("to_stage", String(32), nullable=True),
    Column("reason", Text, nullable=False, server_default=""),
    Column("data", JSON(none_as_null=True), nullable=True),
    Column("created_at", Float, nullable=False),
    Index(None, "task_id"),
)

# One row per orchestrator process start (boot): who it is and that it is alive.
instances = Table(
    "instances",
    metadata,
    Column("boot_id", String(64), primary_key=True),
    Column("instance", String(200), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    # The process's start time in clock ticks since boot (/proc/<pid>/stat): a reused
    # pid has a different one.
    Column("pid_start", BigInteger, nullable=True),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("stopped_at", Float, nullable=True),
)

# The durable transition lease: at most one row per task (the primary key says so).
# A released lease keeps its row (owner columns NULL) so the epoch only ever grows.
transition_lease = Table(
    "transition_lease",
    metadata,
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    # Fencing token: incremented by every acquisition; writes under the lease check it.
    Column("lease_epoch", Integer, nullable=False),
    Column("transition", String(100), nullable=True),
    Column("actor", String(100), nullable=True),
    Column("owner_instance", String(200), nullable=True),
    Column("owner_host", String(255), nullable=True),
    Column("owner_pid", Integer, nullable=True),
    Column("owner_boot_id", String(64), nullable=True),
    Column("acquired_at", Float, nullable=True),
    Column("released_at", Float, nullable=True),
)

# The effect journal: an intent before every side effect, its completion after.
effects = Table(
    "effects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("transition", String(100), nullable=False),
    Column("effect", String(100), nullable=False),
    Column("lease_epoch", Integer, nullable=False),
    # task:transition:effect:epoch — the same effect is never journaled twice per epoch.
    Column("idempotency_key", String(300), nullable=False, unique=True),
    Column("status", String(16), nullable=False),  # intent | done | failed
    Column("actor", String(100), nullable=False),
    Column("result", JSON(none_as_null=True), nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("completed_at", Float, nullable=True),
    Index(None, "task_id", "transition", "effect"),
)

# The durable outbox: every outbound call (card update, alert, tracker comment, forge
# status) is a row written in the same transaction as the change that caused it, and
# delivered by a supervised loop with retries and backoff.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=True),
    Column("channel", String(32), nullable=False),  # telegram | tracker | forge
    Column("kind", String(32), nullable=False),  # card | alert | comment | status | ...
    # Delivered at most once per key (a card edit is idempotent by design).
    Column("idempotency_key", String(300), nullable=False, unique=True),
    Column("payload", JSON(none_as_null=True), nullable=False),
    Column("status", String(16), nullable=False),  # pending | sending | sent | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("sent_at", Float, nullable=True),
    # The boot id of the process delivering it (status 'sending'), and since when.
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_at", Float, nullable=True),
    Index(None, "status", "next_attempt_at"),
)

# One live card per task and chat: where it is, and what it last said.
task_cards = Table(
    "task_cards",
    metadata,
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("chat_id", String(64), primary_key=True),
    Column("message_id", BigInteger, nullable=True),
    Column("text_hash", String(64), nullable=True),
    Column("updated_at", Float, nullable=False),
)

# Inbound webhooks seen, so a replayed delivery is ignored.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(32), nullable=False),  # gitea | github | plane | telegram
    Column("delivery_id", String(200), nullable=False),
    Column("task_id", Integer, nullable=True),
    Column("outcome", String(200), nullable=False, server_default=""),
    Column("received_at", Float, nullable=False),
    UniqueConstraint("source", "delivery_id"),
)

# API tokens: a name, a role, and the SHA-256 of the secret (the secret itself is shown
# once at creation and never stored). A revoked token's row is deleted.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),  # viewer | operator | admin
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_by", String(100), nullable=False),
    Column("created_at", Float, nullable=False),
)

# The inbox: what an inbound webhook asked for (cancel, rollback, the crossing a merged
# pull request starts), recorded before the answer and applied later by the inbox loop
# when the task's transition lease allows, exactly once (claim, compare-and-swap, fenced
# marks: the pattern of the outbox). One row per delivery.
inbox = Table(
    "inbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("action", String(32), nullable=False),  # cancel | rollback | merged
    Column("actor", String(100), nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("source", String(32), nullable=False),  # gitea | github | plane
    Column("delivery_id", String(200), nullable=False),
    # pending | applying | applied | refused | failed
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float, nullable=False),
    # Why it waits (a lease held), why it was refused or failed, or how it was applied.
    Column("outcome", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    # The boot id of the process applying it (status 'applying'), and since when.
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_at", Float, nullable=True),
    UniqueConstraint("source", "delivery_id"),
    Index(None, "status", "next_attempt_at"),
)
