"""The forge interface: pull requests, comments, commit statuses, merges.

A forge is where a task branch becomes a pull request and is merged. The pipeline asks
five things of it and nothing else, so the local repository, Gitea and GitHub are
interchangeable (``forge`` in the settings, per repository too):

* :meth:`Forge.open_pull_request` — idempotent: an open pull request for the task
  branch is found and returned, not opened twice;
* :meth:`Forge.comment` — idempotent by ``key``: a comment already carrying the key is
  not posted again;
* :meth:`Forge.set_status` — a commit status (a check) on a commit;
* :meth:`Forge.merge` — merge, squash or rebase (``merge_method``); a branch already
  merged is not merged again;
* :meth:`Forge.is_merged` — the world, for the effect journal's "world first".

Every failed call raises :class:`~orchestrator.errors.IntegrationError` whose message
names the forge, the call and the forge's own complaint.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Protocol

from orchestrator.store import Task

__all__ = [
    "COMMENT_KEY_MARKER",
    "CommitState",
    "Forge",
    "MergeMethod",
    "MergeOutcome",
    "PullRequest",
    "comment_marker",
    "pull_request_body",
    "pull_request_title",
]

# A comment posted with a key carries it in an HTML comment, invisible when rendered,
# so a retry finds it and does not post twice.
COMMENT_KEY_MARKER: Final = "orch-key"


class MergeMethod(enum.StrEnum):
    MERGE = "merge"
    SQUASH = "squash"
    REBASE = "rebase"


class CommitState(enum.StrEnum):
    """Commit status states common to Gitea and GitHub."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"


@dataclass(frozen=True)
class PullRequest:
    """A pull request as the pipeline needs it; ``number`` 0 on the local forge."""

    number: int
    url: str
    head: str
    base: str
    state: str = "open"  # open | closed
    merged: bool = False


@dataclass(frozen=True)
class MergeOutcome:
    """What a merge did: the commit now at the target, or that it was merged before."""

    sha: str
    already_merged: bool


class Forge(Protocol):
    """One forge for one repository (see the module docstring)."""

    name: str

    def open_pull_request(self, task: Task) -> PullRequest:
        """The open (or merged) pull request of the task branch; opened if there is none."""

    def comment(self, task: Task, body: str, *, key: str) -> None:
        """Comment on the task's pull request, once per ``key``."""

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
        """Set a commit status on ``sha`` (``context`` names the check, e.g. orch/testing)."""

    def merge(self, task: Task) -> MergeOutcome:
        """Land the task branch on its base branch with the configured method, once."""

    def is_merged(self, task: Task) -> bool:
        """Whether the task branch has landed on its base branch."""


def pull_request_title(task: Task) -> str:
    return f"{task.work_item}: {task.title}"


def pull_request_body(task: Task) -> str:
    description = task.description.strip() or "(no description)"
    return f"{description}\n\n---\nOpened by orchestrator for task {task.work_item}."


def comment_marker(key: str) -> str:
    """The invisible marker that makes a comment findable by its idempotency key."""
    return f"<!-- {COMMENT_KEY_MARKER}: {key} -->"
