"""Persistence: SQLAlchemy Core over SQLite (WAL) or PostgreSQL, migrated by Alembic."""

from orchestrator.store.inbox import InboxStatus, InboxStore, Intent
from orchestrator.store.records import AgentRun, ApiToken, Event, Job, Task, TaskCard
from orchestrator.store.store import (
    ACTIVE_JOB_STATUSES,
    JOB_STATUSES,
    DuplicateError,
    Store,
    Tx,
    database_label,
    sqlite_path,
)

__all__ = [
    "ACTIVE_JOB_STATUSES",
    "JOB_STATUSES",
    "AgentRun",
    "ApiToken",
    "DuplicateError",
    "Event",
    "InboxStatus",
    "InboxStore",
    "Intent",
    "Job",
    "Store",
    "Task",
    "TaskCard",
    "Tx",
    "database_label",
    "sqlite_path",
]
