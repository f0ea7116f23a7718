"""Task branches that travel through the repository's remote, for hosts that share no disk.

Theory of operation
-------------------
A repository with ``remote`` set (``[repos.<name>] remote = "origin"``, a git remote of
the host's clone or a URL) is shared by every host that runs its tasks (decision 0031).
Each host has its own clone and its own worktrees at the same paths; the remote holds
the truth:

* **Created**: a task branch starts from the remote's default branch and is pushed at
  once, so any host can take its first job (:func:`start_task_branch`).
* **Before a job**: :func:`sync_task_branch` fetches the task branch and the default
  branch. This host's copy then catches up: made where missing, fast-forwarded where
  behind, pushed where ahead (a crash between a commit and its push, on this host),
  and reset to the remote where the two went separate ways (local commits that were
  never pushed belong to no recorded stage). A worktree that follows the remote loses
  the new files a job left in it uncommitted, which are older than the remote's work.
* **After a job**: the finalizer pushes what it committed (:func:`push_task_branch`)
  before it moves the task on, so a stage's result is never recorded on one host only.
* **Merges** land on the remote's default branch by a compare-and-swap push, made again
  on the new tip when another host landed first (:meth:`Repo.merge`).

A push is a compare-and-swap on the remote's branch (``--force-with-lease``): two hosts
never overwrite each other's work, whatever they raced on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import RepositoryError
from orchestrator.settings import Settings
from orchestrator.workspace.commit_policy import CommitPolicy, remove_new_files
from orchestrator.workspace.git import RemoteMovedError, Repo, git

__all__ = [
    "delete_merged_branch",
    "open_repo",
    "push_task_branch",
    "start_task_branch",
    "sync_task_branch",
]

log = logging.getLogger("orchestrator.workspace.remote")


def open_repo(settings: Settings, repository: str | Path) -> Repo:
    """The repository at ``repository`` with its configured remote (none by default)."""
    path = Path(repository)
    return Repo(path, settings.repo_config(path).remote)


def start_task_branch(repo: Repo, branch: str, sha: str) -> None:
    """Publish a new task branch at ``sha``; a :class:`RemoteMovedError` when the
    remote has a branch by that name already. Without a remote: nothing."""
    if repo.remote:
        repo.push(branch, sha, None)


def delete_merged_branch(repo: Repo, branch: str, base_branch: str) -> bool:
    """Delete the remote's ``branch`` where its tip there has landed on the remote's
    ``base_branch``: fetched now, and deleted as a compare-and-swap on that very tip, so
    work another host pushed since stays. True if it went; False without a remote, when
    it is gone there already, not merged, moved meanwhile, or the remote cannot be
    reached (said in the log; it stays)."""
    if not repo.remote:
        return False
    try:
        tips = repo.fetch(branch, base_branch)
        tip, base = tips[branch], tips[base_branch]
        if tip is None or base is None or not repo.landed(tip, base):
            return False
        repo.push(branch, None, tip)
    except RemoteMovedError as exc:
        log.info("kept %s: %s", branch, exc)
        return False
    except RepositoryError as exc:
        log.warning("cannot delete %s on %s; it stays there: %s", branch, repo.remote, exc)
        return False
    return True


def push_task_branch(repo: Repo, branch: str) -> str | None:
    """After a job: push this host's task branch where it is ahead of the remote; what
    was pushed, None when there was nothing to push (no remote, or the remote is ahead:
    another host ran a later job, as when the reconciler repairs a job of a dead host).

    Raises :class:`RepositoryError` when the remote cannot be reached or the two went
    separate ways: the stage's result must not be recorded on this host alone.
    """
    if not repo.remote or not repo.has_branch(branch):
        return None
    local = repo.rev(branch)
    known = repo.tracked(branch)  # as last fetched or pushed: checked by the push
    for last in (False, True):
        if known == local or (known is not None and repo.is_ancestor(local, known)):
            return None
        if known is None or repo.is_ancestor(known, local):
            try:
                repo.push(branch, local, known)
                return local
            except RemoteMovedError:
                pass
        elif last:
            raise RepositoryError(
                f"{branch} here and on {repo.remote} went separate ways "
                f"({local[:10]} and {known[:10]}); retry the task"
            )
        known = repo.fetch(branch)[branch]
    raise RepositoryError(f"{branch} keeps moving on {repo.remote}; retry the task")


def sync_task_branch(
    repo: Repo,
    branch: str,
    base_branch: str,
    worktree: Path,
    policy: Callable[[], CommitPolicy] = CommitPolicy,
) -> str | None:
    """Before a job, under the worktree lock: this host's task branch (and worktree,
    when there is one) is the remote's. What was done ("fetched", "fast-forwarded",
    "pushed", "reset to the remote's"), None when nothing was needed or there is no
    remote. A worktree that follows the remote first loses the new files a commit under
    ``policy()`` would take (a job of this host left them; they are older than the
    remote's work). Raises :class:`RepositoryError` when the branch is nowhere, or a
    leftover cannot be removed (nothing moved then: the next attempt tries again)."""
    if not repo.remote:
        return None
    tips = repo.fetch(base_branch, branch)
    if (base := tips[base_branch]) is not None:
        repo.follow(base_branch, base)  # fresh for the deploy preflight (never raises)
    remote_tip = tips[branch]
    local = repo.rev(branch) if repo.has_branch(branch) else None
    if remote_tip is None:
        if local is None:
            raise RepositoryError(
                f"branch {branch} is neither in {repo.path} nor on {repo.remote}; cancel the task"
            )
        repo.push(branch, local, None)  # created here; the push never happened
        return "pushed"
    if local == remote_tip:
        return None
    if local is not None and repo.is_ancestor(remote_tip, local):
        repo.push(branch, local, remote_tip)
        return "pushed"
    done = "fetched" if local is None else "fast-forwarded"
    if local is not None and not repo.is_ancestor(local, remote_tip):
        done = "reset to the remote's"
        log.warning("%s: local commits %s never pushed; taking %s's", branch, local, repo.remote)
    if (worktree / ".git").exists():
        # What a job left here uncommitted (it died before its commit) must not ride
        # along in the next commit; ignored files, a venv, a `.env` and whatever else
        # the commit policy leaves out stay. Then the tracked files follow.
        try:
            gone = remove_new_files(worktree, policy())
        except OSError as exc:
            raise RepositoryError(
                f"cannot remove {exc.filename}, left uncommitted in {worktree} by an earlier "
                f"job, before taking {repo.remote}'s {branch}: {exc.strerror}; remove it "
                "and retry the task"
            ) from None
        if gone:
            log.warning(
                "%s: removed %d file(s) an earlier job left uncommitted: %s",
                branch,
                len(gone),
                ", ".join(gone[:5]),
            )
        git(worktree, "reset", "--hard", "--quiet", remote_tip)
    else:
        git(repo.path, "update-ref", f"refs/heads/{branch}", remote_tip)
    return done
