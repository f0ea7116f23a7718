"""The audit trail's vocabulary: every event kind any module writes, in one place.

Pure; a leaf module (anything may import it, the store too; it imports nothing of
ours). An event kind is part of the product's interface (``orch task show``, ``/status``,
the docs and the chaos figures name them), so a new one is added here, never as a string
literal at the call site: ``tests/unit/test_event_vocabulary.py`` fails on an
``add_event`` whose kind is a literal (or a module constant outside this class).
"""

from __future__ import annotations

from typing import Final

__all__ = ["EventKind", "all_kinds"]


class EventKind:
    """Names of the audit trail's events (the values are stored; never rename one)."""

    # --- a task's life ---------------------------------------------------------------
    TASK_CREATED: Final = "task.created"
    STAGE_CHANGED: Final = "stage.changed"
    ROLLBACK: Final = "task.rollback"
    FAILED: Final = "task.failed"
    APPROVED: Final = "task.approved"
    REJECTED: Final = "task.rejected"  # a human gate sent back, with the person's feedback
    CANCELLED: Final = "task.cancelled"
    RETRIED: Final = "task.retried"  # a person's retry of a failed task
    # --- jobs --------------------------------------------------------------------------
    JOB_ENQUEUED: Final = "job.enqueued"
    JOB_STARTED: Final = "job.started"
    JOB_EXITED: Final = "job.exited"
    JOB_KILLED: Final = "job.killed"
    # The task moved on under the job (another actor, a cancel): nothing to repair.
    JOB_LOST_RACE: Final = "job.lost_race"
    JOB_ADOPTED: Final = "job.adopted"
    GATE_VERDICT: Final = "gate.verdict"
    RETRY: Final = "job.retry"  # the kernel's retry after a failed attempt
    # --- transitions with side effects -------------------------------------------------
    EFFECT: Final = "effect"
    EFFECT_DONE: Final = "effect.done"
    EFFECT_UNCERTAIN: Final = "effect.uncertain"
    DEFERRED: Final = "transition.deferred"
    LOST: Final = "transition.lost"
    DEPLOY_UNHEALTHY: Final = "deploy.unhealthy"
    LEASE_RECLAIMED: Final = "lease.reclaimed"
    LEASE_FORCE_RELEASED: Final = "lease.force_released"
    # --- maintenance -------------------------------------------------------------------
    REAPER_DEFERRED: Final = "reaper.deferred"
    REAPER_TIER2: Final = "reaper.tier2"
    REAPER_TIER3: Final = "reaper.tier3"
    RECONCILER_DEFERRED: Final = "reconciler.deferred"
    RECONCILER_ENQUEUED: Final = "reconciler.enqueued"
    RECONCILER_ADVANCE: Final = "reconciler.advance"
    RECONCILER_DECIDE: Final = "reconciler.decide"
    WORKTREE_REMOVED: Final = "worktree.removed"
    WORKTREE_RESTORED: Final = "worktree.restored"
    # This host's task branch made the remote's before a job (decision 0031).
    BRANCH_SYNCED: Final = "branch.synced"
    # --- the edges ---------------------------------------------------------------------
    WEBHOOK: Final = "webhook"
    TOKEN_CREATED: Final = "token.created"  # noqa: S105 - an event name
    TOKEN_REVOKED: Final = "token.revoked"  # noqa: S105 - an event name
    ACCESS_REFUSED: Final = "access.refused"
    # A webhook's intent (cancel, rollback, merged) in the inbox, and how it ended.
    INBOX_RECORDED: Final = "inbox.recorded"
    INBOX_APPLIED: Final = "inbox.applied"
    INBOX_REFUSED: Final = "inbox.refused"
    INBOX_FAILED: Final = "inbox.failed"


def all_kinds() -> frozenset[str]:
    """Every value of :class:`EventKind`."""
    return frozenset(
        value
        for name, value in vars(EventKind).items()
        if name.isupper() and isinstance(value, str)
    )
