"""Whether an ended task's worktree may be removed now. Pure; no I/O.

The janitor (``workspace/worktrees.py``) loads the facts of a task (its stage, whether it failed,
when it ended, whether a job of it is still pending) and asks :func:`worktree_disposition`;
the answer is :class:`Remove` or :class:`Keep` with the reason, and for a kept worktree
the time it becomes due. Rules:

* a task that has not ended (a job stage, the human gate, not failed) keeps its worktree;
* a task with a job queued, running or finalizing keeps it (the job works in it; a
  cancelled task's job is still being stopped): the next sweep looks again;
* ``done`` and ``cancelled`` tasks: removed once ``done_s`` have passed since they ended
  (0, the default: at once);
* a failed task: removed once ``failed_s`` have passed since it failed (a person may want
  to look at it first; ``retry`` brings it back from the branch either way).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.kernel.stages import TERMINAL_STAGES

__all__ = ["Keep", "Remove", "RetentionPolicy", "WorktreeFacts", "worktree_disposition"]


@dataclass(frozen=True)
class RetentionPolicy:
    """How long worktrees of ended tasks are kept, in seconds."""

    done_s: float = 0.0
    failed_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class WorktreeFacts:
    """What the decision needs to know about one task."""

    stage: str
    failed: bool
    # When the task ended (done, cancelled, failed): UNIX seconds.
    ended_at: float
    # A job of the task is queued, deferred, running or finalizing.
    job_pending: bool


@dataclass(frozen=True)
class Remove:
    reason: str


@dataclass(frozen=True)
class Keep:
    reason: str
    # When the worktree becomes due for removal; None: not while things stay as they are.
    until: float | None = None


def worktree_disposition(
    facts: WorktreeFacts, policy: RetentionPolicy, now: float
) -> Remove | Keep:
    """Remove the worktree now, or keep it (and until when)."""
    if facts.stage in TERMINAL_STAGES:
        retention, why = policy.done_s, facts.stage
    elif facts.failed:
        retention, why = policy.failed_s, "failed"
    else:
        return Keep(f"the task is in {facts.stage}")
    if facts.job_pending:
        return Keep("a job of the task is still pending")
    due = facts.ended_at + retention
    if now < due:
        return Keep(f"{why}; kept for {retention:g}s", until=due)
    return Remove(why)
