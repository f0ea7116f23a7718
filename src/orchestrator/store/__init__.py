"""Persistence: SQLAlchemy Core over SQLite (WAL) or PostgreSQL, migrated by Alembic."""

from orchestrator.store.records import AgentRun, ApiToken, Event, Job, Task
from orchestrator.store.store import ACTIVE_JOB_STATUSES, JOB_STATUSES, Store, Tx

__all__ = [
    "ACTIVE_JOB_STATUSES",
    "JOB_STATUSES",
    "AgentRun",
    "ApiToken",
    "Event",
    "Job",
    "Store",
    "Task",
    "Tx",
]
