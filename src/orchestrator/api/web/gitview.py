"""What the task page reads from git: the artifacts on the task's branch and its diff.

Everything is read from committed objects (``git ls-tree`` / ``git cat-file`` /
``git diff``), never from the worktree: a symlink an agent left behind is shown as the
link's text, not followed, and the worktree may be gone already (a finished task). The
artifacts are what the gates read, committed after each job. Output is read as bytes,
capped, and decoded with replacement, so nothing an agent commits can break the page.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from orchestrator.lifecycle.transitions import artifact_dir
from orchestrator.store import Task
from orchestrator.workspace.git import GIT_ENV

__all__ = [
    "MAX_ARTIFACTS",
    "MAX_ARTIFACT_BYTES",
    "MAX_DIFF_BYTES",
    "Artifact",
    "DiffView",
    "read_artifacts",
    "read_diff",
]

MAX_ARTIFACTS: Final = 40
MAX_ARTIFACT_BYTES: Final = 256 * 1024
MAX_DIFF_BYTES: Final = 512 * 1024
GIT_READ_TIMEOUT_S: Final = 20.0
# Artifacts shown as Markdown; others are listed by name only.
MARKDOWN_SUFFIXES: Final = (".md", ".markdown", ".txt")


@dataclass(frozen=True)
class Artifact:
    """One file under the task's artifact directory on its branch."""

    path: str
    text: str | None  # None: not shown (not Markdown, or too many)
    truncated: bool


@dataclass(frozen=True)
class DiffView:
    """The branch's changes since the task began, as text (capped)."""

    base: str
    text: str
    truncated: bool
    error: str | None = None


def _git_bytes(repository: str, *args: str, limit: int) -> tuple[bytes, bool]:
    """Run git, return (stdout up to ``limit`` bytes, whether it was cut)."""
    with subprocess.Popen(
        ["git", *args],
        cwd=repository,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **GIT_ENV},
    ) as process:
        assert process.stdout is not None
        data = process.stdout.read(limit + 1)
        cut = len(data) > limit
        if cut:
            process.kill()
        else:
            process.stdout.read()
        process.wait(timeout=GIT_READ_TIMEOUT_S)
        if not cut and process.returncode != 0:
            raise OSError(f"git {args[0]} exited {process.returncode}")
    return data[:limit], cut


def read_artifacts(task: Task) -> list[Artifact]:
    """The files under ``docs/work-items/<ID>/`` on the task's branch, oldest name first."""
    folder = artifact_dir(task.work_item).rstrip("/") + "/"
    if not Path(task.repository).is_dir():
        return []
    try:
        listing, _cut = _git_bytes(
            task.repository,
            "ls-tree",
            "-r",
            "-z",
            "--name-only",
            task.branch,
            "--",
            folder,
            limit=MAX_ARTIFACT_BYTES,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    names = sorted(name.decode("utf-8", "replace") for name in listing.split(b"\0") if name)
    artifacts: list[Artifact] = []
    for index, name in enumerate(names):
        if index >= MAX_ARTIFACTS or not name.lower().endswith(MARKDOWN_SUFFIXES):
            artifacts.append(Artifact(name, None, False))
            continue
        try:
            blob, cut = _git_bytes(
                task.repository,
                "cat-file",
                "blob",
                f"{task.branch}:{name}",
                limit=MAX_ARTIFACT_BYTES,
            )
        except (OSError, subprocess.SubprocessError):
            artifacts.append(Artifact(name, None, False))
            continue
        artifacts.append(Artifact(name, blob.decode("utf-8", "replace"), cut))
    return artifacts


def read_diff(task: Task) -> DiffView:
    """``git diff <base_sha>...<branch>``: what the task's branch changed."""
    base = task.base_sha
    if not Path(task.repository).is_dir():
        return DiffView(base, "", False, "the repository is not on this host")
    try:
        data, cut = _git_bytes(
            task.repository,
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            f"{base}...{task.branch}",
            "--",
            limit=MAX_DIFF_BYTES,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return DiffView(base, "", False, f"no diff: {exc}")
    return DiffView(base, data.decode("utf-8", "replace"), cut)
