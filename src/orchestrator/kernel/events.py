"""The audit trail's vocabulary: every event kind a task's trail may hold. Pure; a leaf
module (anything may import it, it imports nothing of ours)."""

from __future__ import annotations

from typing import Final

__all__ = ["EventKind"]


class EventKind:
    """Names of the audit trail's events."""

    TASK_CREATED: Final = "task.created"
    STAGE_CHANGED: Final = "stage.changed"
    JOB_ENQUEUED: Final = "job.enqueued"
    JOB_STARTED: Final = "job.started"
    JOB_EXITED: Final = "job.exited"
    JOB_KILLED: Final = "job.killed"
    JOB_LOST_RACE: Final = "job.lost_race"
    GATE_VERDICT: Final = "gate.verdict"
    RETRY: Final = "job.retry"
    ROLLBACK: Final = "task.rollback"
    FAILED: Final = "task.failed"
    APPROVED: Final = "task.approved"
    REJECTED: Final = "task.rejected"  # a human gate sent back, with the person's feedback
    CANCELLED: Final = "task.cancelled"
    RETRIED: Final = "task.retried"
    EFFECT: Final = "effect"
    DEFERRED: Final = "transition.deferred"
    LOST: Final = "transition.lost"
    # A webhook's intent (cancel, rollback, merged) in the inbox, and how it ended.
    INBOX_RECORDED: Final = "inbox.recorded"
    INBOX_APPLIED: Final = "inbox.applied"
    INBOX_REFUSED: Final = "inbox.refused"
    INBOX_FAILED: Final = "inbox.failed"
