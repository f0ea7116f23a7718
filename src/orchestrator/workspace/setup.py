"""The task worktree's set-up: included files, hooks, and what tools created there.

Before a job starts the engine calls :func:`prepare_workspace`:

* the first time in a worktree, the repository's ``worktree_include`` patterns are
  copied from the main checkout (e.g. an ignored ``.env``) if the worktree lacks them;
* when the repository has hooks, it writes their spec next to the job's log and returns
  the wrapper (:mod:`orchestrator.workspace.hooks`) the launcher runs before the job's command:
  ``after_create`` once per worktree, ``before_run`` before every job.

Whatever those copies and hooks created is written to a record in the worktree's git
directory; :func:`recorded_patterns` turns it into exclude patterns, so the engine's
commit never takes those paths (:mod:`orchestrator.workspace.commit_policy`).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Final

from orchestrator.errors import RepositoryError
from orchestrator.settings import RepoConfig
from orchestrator.workspace.git import git_dir
from orchestrator.workspace.hooks import HOOK_FAILED_EXIT

__all__ = [
    "HOOK_FAILED_EXIT",
    "prepare_workspace",
    "recorded_patterns",
]

CREATED_RECORD: Final = "tool-created"
INCLUDE_DONE: Final = "include.done"
AFTER_CREATE_DONE: Final = "after-create.done"
# gitignore's special characters, escaped so a recorded path matches only itself.
_SPECIAL: Final = re.compile(r"([\\*?\[\]!#])")


def state_dir(worktree: Path) -> Path:
    """Where orch keeps its notes on a worktree: inside the worktree's own git dir."""
    return git_dir(worktree) / "orch"


def _argv(command: list[str] | str) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _record(worktree: Path, paths: list[str]) -> None:
    if not paths:
        return
    record = state_dir(worktree) / CREATED_RECORD
    record.parent.mkdir(parents=True, exist_ok=True)
    with record.open("a", encoding="utf-8") as handle:
        handle.write("".join(f"{path}\n" for path in paths))


def _escape(path: str) -> str:
    escaped = _SPECIAL.sub(r"\\\1", path)
    stripped = escaped.rstrip(" ")
    escaped = stripped + "\\ " * (len(escaped) - len(stripped))  # trailing spaces count
    return f"/{escaped}"


def recorded_patterns(worktree: Path) -> tuple[str, ...]:
    """Exclude patterns matching exactly the paths tools created in ``worktree``."""
    try:
        record = (state_dir(worktree) / CREATED_RECORD).read_text(encoding="utf-8")
    except (OSError, RepositoryError):
        return ()
    return tuple(dict.fromkeys(_escape(line) for line in record.splitlines() if line))


def _copy_includes(config: RepoConfig, repository: Path, worktree: Path) -> list[str]:
    copied: list[str] = []
    for pattern in config.worktree_include:
        for source in sorted(repository.glob(pattern)):
            relative = source.relative_to(repository)
            if not source.is_file() or relative.parts[0] == ".git":
                continue
            target = worktree / relative
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            copied.append(relative.as_posix())
    return copied


def prepare_workspace(
    config: RepoConfig, repository: Path, worktree: Path, log_path: Path
) -> list[str]:
    """Copy the included files (once) and return the hooks wrapper for this job ([] for
    none). Raises ``OSError`` or :class:`RepositoryError` if the worktree is unusable for
    them (with neither included files nor hooks configured, it is not looked at)."""
    if not (config.worktree_include or config.after_create or config.before_run):
        return []  # the usual case: no file to copy, no hook, no git directory to find
    state = state_dir(worktree)
    if config.worktree_include and not (state / INCLUDE_DONE).exists():
        _record(worktree, _copy_includes(config, repository, worktree))
        state.mkdir(parents=True, exist_ok=True)
        (state / INCLUDE_DONE).write_text("done\n")
    hooks = []
    if config.after_create and not (state / AFTER_CREATE_DONE).exists():
        hooks.append(
            {
                "name": "after_create",
                "argv": _argv(config.after_create),
                "timeout_s": config.hook_timeout_s,
                "done_marker": str(state / AFTER_CREATE_DONE),
            }
        )
    if config.before_run:
        hooks.append(
            {
                "name": "before_run",
                "argv": _argv(config.before_run),
                "timeout_s": config.hook_timeout_s,
            }
        )
    if not hooks:
        return []
    spec_path = log_path.with_suffix(".hooks.json")
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec = {"hooks": hooks, "log": str(log_path), "created_record": str(state / CREATED_RECORD)}
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    return [sys.executable, "-m", "orchestrator.workspace.hooks", str(spec_path), "--"]
