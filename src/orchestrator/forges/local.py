"""The local forge (the default): the repository on disk, merged with git.

There is no pull request server: the "pull request" of a task is its branch, comments
and commit statuses have nowhere to go but the log (the task's events trail already
records every stage outcome), and a merge is :meth:`orchestrator.workspace.git.Repo.merge` with
the configured method. "Is merged" is ancestry, or for a squash or rebase the landing
commit's ``Orch-Merged-Head`` trailer.
"""

from __future__ import annotations

import logging
from pathlib import Path

from orchestrator.forges.base import CommitState, MergeMethod, MergeOutcome, PullRequest
from orchestrator.store import Task
from orchestrator.workspace.git import Repo

__all__ = ["LocalForge"]

log = logging.getLogger("orchestrator.forges.local")


class LocalForge:
    """Pull requests, merges and checks against the repository on disk."""

    name = "local"

    def __init__(self, repo: Repo, merge_method: MergeMethod = MergeMethod.MERGE) -> None:
        self.repo = repo
        self.merge_method = merge_method

    def open_pull_request(self, task: Task) -> PullRequest:
        merged = self.is_merged(task)
        return PullRequest(
            number=0,
            url=f"file://{self.repo.path}#{task.branch}",
            head=task.branch,
            base=task.base_branch,
            state="closed" if merged else "open",
            merged=merged,
        )

    def comment(self, task: Task, body: str, *, key: str) -> None:
        log.info("%s (local forge, comment %s): %s", task.work_item, key, body.splitlines()[0])

    def set_status(
        self,
        task: Task,
        sha: str,
        state: CommitState,
        *,
        context: str,
        description: str,
        target_url: str = "",
    ) -> None:
        log.info("%s %s %s: %s (%s)", task.work_item, sha[:10], context, state, description)

    def merge(self, task: Task) -> MergeOutcome:
        scratch = self._scratch(task)
        result = self.repo.merge(
            task.branch,
            task.base_branch,
            f"Merge {task.branch}: {task.work_item} {task.title}",
            scratch,
            method=str(self.merge_method),
        )
        return MergeOutcome(result.merge_sha, result.already_merged)

    def is_merged(self, task: Task) -> bool:
        return self.repo.is_merged(task.branch, task.base_branch)

    def _scratch(self, task: Task) -> Path:
        return self.repo.path / ".git" / "orch-merge" / task.work_item
