"""Immutable rows, as the store hands them out."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["AgentRun", "ApiToken", "Event", "Job", "Task", "TaskCard"]


class _Record:
    def to_dict(self) -> dict[str, Any]:
        """The fields by name; a JSON value (a dict or a list) is a copy, as with
        ``dataclasses.asdict``, which deep-copied every field and cost a page of 100
        tasks more than its three queries."""
        return {
            name: copy.deepcopy(value) if isinstance(value, dict | list) else value
            for name, value in vars(self).items()
        }


@dataclass(frozen=True)
class Task(_Record):
    id: int
    work_item: str
    repository: str
    title: str
    description: str
    stage: str
    version: int
    attempt: int
    rollback_count: int
    failed_reason: str | None
    branch: str
    base_branch: str
    base_sha: str
    worktree: str
    created_at: float
    updated_at: float
    # When its worktree was removed (the task ended); None while it exists.
    worktree_removed_at: float | None = None
    # Where its work item came from and the key of that (migration 0009); None: by hand.
    origin: dict[str, Any] | None = None
    origin_key: str | None = None
    # The unhealthy deploy verdict (an event id) whose rollback is still to finish.
    pending_rollback: int | None = None

    @property
    def failed(self) -> bool:
        return self.failed_reason is not None


@dataclass(frozen=True)
class Job(_Record):
    id: int
    task_id: int
    stage: str
    kind: str
    agent: str
    status: str
    attempt: int
    feedback: str | None
    error: str | None
    pid: int | None
    owner_boot_id: str | None
    pid_start: int | None
    start_sha: str | None
    not_before: float
    enqueued_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    # Its limits as when it started (migration 0007); None for older jobs.
    timeout_s: float | None = None
    budget_usd: float | None = None
    # How it failed (kernel/failures.py, migration 0009); None unless it failed.
    failure_kind: str | None = None


@dataclass(frozen=True)
class AgentRun(_Record):
    id: int
    job_id: int
    task_id: int
    agent: str
    model: str
    effort: str
    attempt: int
    exit_code: int | None
    exit_recorded_at: float | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    num_turns: int | None
    log_path: str
    started_at: float


@dataclass(frozen=True)
class Event(_Record):
    id: int
    task_id: int | None
    job_id: int | None
    kind: str
    actor: str
    from_stage: str | None
    to_stage: str | None
    reason: str
    data: dict[str, Any] | None
    created_at: float


@dataclass(frozen=True)
class TaskCard(_Record):
    """Where a task's live card is in one chat, and the digest of its text there."""

    task_id: int
    chat_id: str
    message_id: int | None
    text_hash: str | None
    updated_at: float


@dataclass(frozen=True)
class ApiToken(_Record):
    """An API token as stored: its secret only as a SHA-256 hash."""

    id: int
    name: str
    role: str
    token_hash: str
    created_by: str
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        # The hash stays in the database: listing tokens never shows it.
        return {k: v for k, v in asdict(self).items() if k != "token_hash"}
