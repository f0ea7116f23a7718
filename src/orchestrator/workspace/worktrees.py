"""The worktree lifecycle: an ended task's worktree is removed, a retried one comes back.

Theory of operation
-------------------
Every task works in its own worktree (``<data_dir>/worktrees/<repo>-<hash>/<ID>``) on
branch ``orch/<ID>``. When the task ends its worktree is removed; the branch keeps every
commit, so nothing is lost but what was never committed:

* **When.** :func:`release_worktree` asks the kernel (``kernel/retention.py``): ``done``
  and ``cancelled`` at once by default (``worktree_retention_done_s``), a failed task
  after ``worktree_retention_failed_s`` (a week), never while a job of the task is
  pending. It is called right after a task ends (``deploy -> done`` in
  :func:`~orchestrator.lifecycle.transitions.enter_transition`, ``cancel``, a job finalized into a
  failure or lost to a cancel) and by the :class:`WorktreeJanitor`, which the engine's
  maintenance runs every ``WORKTREE_SWEEP_INTERVAL_S`` and ``orch gc`` runs on demand.
  The post-deploy monitor watches inside ``deploy -> done``, before the task is done, so
  a done task's worktree is no longer needed by it.
* **Crash-safe and idempotent.** The removal happens first, then
  ``tasks.worktree_removed_at`` is set (only if the task did not change meanwhile).
  A crash in between leaves the mark unset: the next sweep removes nothing twice
  (``git worktree remove`` of a missing worktree is a no-op, prune drops its entry) and
  sets it. A removal that failed stays a candidate and is retried by the next sweep.
* **Coming back.** ``retry`` and ``rollback`` of a failed task, the engine before it
  starts a job, and the post-deploy rollback before its reapply call
  :func:`ensure_worktree`: a removed worktree is made again from its branch.
* **No interleaving.** Removal and restoration hold the repository's worktree lock
  (a file lock, every process on the host) and re-read the task under it, so a retry
  racing a sweep ends with the worktree present.

With the worktrees of finished tasks gone, git's own per-worktree scans (``git
worktree add`` checks every registered worktree's HEAD) stay proportional to the tasks
in flight, not to every task ever run: see ``bench/worktree_churn.py``.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from orchestrator.errors import OrchestratorError, RepositoryError
from orchestrator.kernel.events import EventKind
from orchestrator.kernel.retention import (
    Keep,
    Remove,
    RetentionPolicy,
    WorktreeFacts,
    worktree_disposition,
)
from orchestrator.kernel.stages import DONE, TERMINAL_STAGES
from orchestrator.settings import Settings
from orchestrator.store import Store, Task
from orchestrator.workspace.commit_policy import repository_policy
from orchestrator.workspace.git import Repo, remove_tree
from orchestrator.workspace.remote import delete_merged_branch, open_repo, sync_task_branch

__all__ = [
    "WORKTREE_REMOVED",
    "WORKTREE_RESTORED",
    "WORKTREE_SWEEP_INTERVAL_S",
    "Kept",
    "Released",
    "SweepResult",
    "WorktreeJanitor",
    "disk_usage",
    "ensure_worktree",
    "release_quietly",
    "release_worktree",
    "retention_policy",
    "worktrees_root",
]

log = logging.getLogger("orchestrator.workspace.worktrees")

WORKTREE_REMOVED: Final = EventKind.WORKTREE_REMOVED
WORKTREE_RESTORED: Final = EventKind.WORKTREE_RESTORED
# How often the engine's maintenance sweeps the worktrees of ended tasks.
WORKTREE_SWEEP_INTERVAL_S: Final = 60.0


def worktrees_root(settings: Settings) -> Path:
    """Where task worktrees are made: ``<data_dir>/worktrees``."""
    return settings.data_dir.resolve() / "worktrees"


def retention_policy(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(
        done_s=settings.worktree_retention_done_s, failed_s=settings.worktree_retention_failed_s
    )


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (each inode once; symlinks not followed)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            info = current.lstat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        total += info.st_blocks * 512
        if stat.S_ISDIR(info.st_mode):
            try:
                with os.scandir(current) as entries:
                    stack.extend(Path(entry.path) for entry in entries)
            except OSError:
                continue
    return total


@dataclass(frozen=True)
class Released:
    """A worktree that was removed (or, in a dry run, would be)."""

    work_item: str
    repository: str
    path: str
    bytes: int
    reason: str
    branch_deleted: bool = False
    removed: bool = True


@dataclass(frozen=True)
class Kept:
    """An ended task's worktree that stays, and why (until when)."""

    work_item: str
    repository: str
    path: str
    reason: str
    until: float | None


def _facts(store: Store, task: Task) -> WorktreeFacts:
    # A failed task is not written again until a person acts, so its last update is
    # when it failed; a done or cancelled task's is when it ended.
    return WorktreeFacts(
        stage=task.stage,
        failed=task.failed,
        ended_at=task.updated_at,
        job_pending=store.has_pending_job(task.id),
    )


def _kept(task: Task, decision: Keep) -> Kept:
    return Kept(task.work_item, task.repository, task.worktree, decision.reason, decision.until)


def release_worktree(
    store: Store,
    settings: Settings,
    task_id: int,
    *,
    actor: str,
    now: float | None = None,
    dry_run: bool = False,
) -> Released | Kept | None:
    """Remove the task's worktree if it is due; None when it is already gone.

    Raises :class:`RepositoryError` when git cannot remove it (the task stays a
    candidate: the next sweep tries again).
    """
    task = store.get_task(task_id)
    if task.worktree_removed_at is not None:
        return None
    repository = Path(task.repository)
    if not (repository / ".git").exists():
        # The repository itself is gone: only what lies in our own directory is ours.
        return _release(store, settings, None, task.id, actor, now, dry_run)
    repo = open_repo(settings, repository)
    with repo.worktree_lock():
        return _release(store, settings, repo, task.id, actor, now, dry_run)


def _release(
    store: Store,
    settings: Settings,
    repo: Repo | None,
    task_id: int,
    actor: str,
    now: float | None,
    dry_run: bool,
) -> Released | Kept | None:
    task = store.get_task(task_id)  # again, under the lock: a retry may have won
    if task.worktree_removed_at is not None:
        return None
    when = time.time() if now is None else now
    decision = worktree_disposition(_facts(store, task), retention_policy(settings), when)
    if isinstance(decision, Keep):
        return _kept(task, decision)
    assert isinstance(decision, Remove)
    path, owned = Path(task.worktree), worktrees_root(settings)
    size = disk_usage(path) if path.exists() else 0
    delete_branch = (
        repo is not None
        and settings.delete_branch_on_done
        and task.stage == DONE
        and repo.has_branch(task.branch)
        and repo.is_merged(task.branch, task.base_branch)
    )
    if dry_run:
        return Released(
            task.work_item, task.repository, str(path), size, decision.reason,
            branch_deleted=delete_branch, removed=False,
        )  # fmt: skip
    if repo is not None:
        repo.release_worktree(path, owned_root=owned)
    elif path.exists():
        if not path.resolve().is_relative_to(owned.resolve()):
            raise RepositoryError(
                f"cannot remove worktree {path}: its repository {task.repository} is gone "
                "and it is outside the data directory; remove it by hand"
            )
        remove_tree(path)
    branch_deleted = bool(delete_branch and repo is not None and repo.delete_branch(task.branch))
    # With a remote the branch goes there too (hosts that share no disk, decision 0031).
    remote_deleted = bool(
        delete_branch
        and repo is not None
        and delete_merged_branch(repo, task.branch, task.base_branch)
    )
    with store.transaction() as tx:
        if tx.set_worktree_removed(task.id, when, expected_version=task.version):
            tx.add_event(
                EventKind.WORKTREE_REMOVED,
                actor=actor,
                task_id=task.id,
                to_stage=task.stage,
                reason=f"{decision.reason}: removed {path} ({size} bytes)"
                + (f" and branch {task.branch}" if branch_deleted else "")
                + (f" (on {repo.remote} too)" if remote_deleted and repo is not None else ""),
                data={
                    "path": str(path),
                    "bytes": size,
                    "branch_deleted": branch_deleted,
                    "remote": repo.remote if repo is not None else None,
                    "remote_branch_deleted": remote_deleted,
                },
            )
    return Released(
        task.work_item, task.repository, str(path), size, decision.reason, branch_deleted
    )


def release_quietly(store: Store, settings: Settings, task_id: int, *, actor: str) -> None:
    """:func:`release_worktree` right after a task ended; a failure is logged and left
    to the janitor's next sweep, never raised into the caller's transition."""
    try:
        release_worktree(store, settings, task_id, actor=actor)
    except (OrchestratorError, OSError):
        log.warning("removing the worktree of task %s failed; the janitor retries", task_id)


def ensure_worktree(store: Store, settings: Settings, task: Task, *, actor: str) -> bool:
    """The task's worktree exists afterwards, made again from its branch if it was
    removed; True if it was recreated. Raises :class:`RepositoryError` when it cannot
    be (the branch is gone)."""
    path = Path(task.worktree)
    repo = open_repo(settings, task.repository)
    with repo.worktree_lock():
        # With a remote, this host's branch becomes the remote's first (another host
        # may have run the task's last job).
        synced = sync_task_branch(
            repo,
            task.branch,
            task.base_branch,
            path,
            lambda: repository_policy(settings, Path(task.repository), path),
        )
        recreated = repo.restore_worktree(path, task.branch, owned_root=worktrees_root(settings))
        if synced is None and not recreated and task.worktree_removed_at is None:
            return False  # the usual case: no second read of the task
        current = store.get_task(task.id)
        with store.transaction() as tx:
            tx.set_worktree_removed(task.id, None)
            if synced:
                tx.add_event(
                    EventKind.BRANCH_SYNCED,
                    actor=actor,
                    task_id=task.id,
                    to_stage=current.stage,
                    reason=f"{task.branch} {synced} ({repo.remote})",
                    data={"synced": synced, "remote": repo.remote},
                )
            if recreated:
                tx.add_event(
                    EventKind.WORKTREE_RESTORED,
                    actor=actor,
                    task_id=task.id,
                    to_stage=current.stage,
                    reason=f"recreated {path} from {task.branch}",
                )
    return recreated


@dataclass
class SweepResult:
    """What one sweep of the janitor did."""

    released: list[Released] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WorktreeJanitor:
    """Removes the worktrees of ended tasks that are due (a maintenance service)."""

    store: Store
    settings: Settings
    actor: str = "janitor"
    _last_sweep: float = field(default=float("-inf"), init=False)

    def maybe_sweep(self) -> SweepResult | None:
        """:meth:`sweep`, at most every ``WORKTREE_SWEEP_INTERVAL_S``."""
        now = time.monotonic()
        if now - self._last_sweep < WORKTREE_SWEEP_INTERVAL_S:
            return None
        self._last_sweep = now
        return self.sweep()

    def sweep(self, *, now: float | None = None, dry_run: bool = False) -> SweepResult:
        when = time.time() if now is None else now
        result = SweepResult()
        policy = retention_policy(self.settings)
        for task in self.store.tasks_with_worktree_to_release(tuple(TERMINAL_STAGES)):
            # Cheap first look without the lock; the release looks again under it.
            first = worktree_disposition(_facts(self.store, task), policy, when)
            if isinstance(first, Keep):
                result.kept.append(_kept(task, first))
                continue
            try:
                outcome = release_worktree(
                    self.store, self.settings, task.id, actor=self.actor, now=when, dry_run=dry_run
                )
            except (OrchestratorError, OSError) as exc:
                log.warning("removing the worktree of %s failed: %s", task.work_item, exc)
                result.failed.append(
                    {"work_item": task.work_item, "path": task.worktree, "error": str(exc)}
                )
                continue
            if isinstance(outcome, Released):
                result.released.append(outcome)
            elif isinstance(outcome, Kept):
                result.kept.append(outcome)
        return result
