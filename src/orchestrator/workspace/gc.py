"""``orch gc``: remove what ended tasks left behind, and say how much space it freed.

Three sweeps, each idempotent and each safe to run beside a live engine:

1. **Worktrees of ended tasks** that are due
   (:class:`~orchestrator.workspace.worktrees.WorktreeJanitor`,
   the same sweep the engine's maintenance runs every minute): done and cancelled tasks
   at once by default, failed ones after ``worktree_retention_failed_s``.
2. **Orphaned directories** under ``<data_dir>/worktrees``: no task owns them, or their
   task's worktree is recorded as removed (a crash between ``git worktree add`` and the
   task's insert, a removal interrupted half-way). Directories younger than
   ``ORPHAN_GRACE_S`` are left alone: a task may be being created in one right now.
3. **Stale git entries**: ``git worktree prune`` in every repository tasks were created
   in drops the entries of worktrees whose directory is gone.

Run logs under ``<data_dir>/logs`` are kept: they are the tasks' record
(``orch task logs``), and each is capped at ``log_max_bytes``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.workspace.git import Repo, remove_tree
from orchestrator.workspace.worktrees import (
    Kept,
    Released,
    WorktreeJanitor,
    disk_usage,
    worktrees_root,
)

__all__ = [
    "LEFTOVER_SWEEP_INTERVAL_S",
    "ORPHAN_GRACE_S",
    "GcReport",
    "LeftoverSweeper",
    "Orphan",
    "Pruned",
    "collect_garbage",
]

log = logging.getLogger("orchestrator.workspace.gc")

# A directory under <data_dir>/worktrees younger than this may be a task being created.
ORPHAN_GRACE_S: Final = 3600.0
ACTOR: Final = "gc"
# How often each instance sweeps its own data dir for leftovers (hosts that share no
# disk): a task that ended on another host left this host's copy of its worktree.
LEFTOVER_SWEEP_INTERVAL_S: Final = 600.0


@dataclass(frozen=True)
class Orphan:
    """A directory under ``<data_dir>/worktrees`` that no live task owns."""

    path: str
    bytes: int
    removed: bool


@dataclass(frozen=True)
class Pruned:
    """Stale worktree entries git dropped in one repository."""

    repository: str
    entries: list[str]


@dataclass
class GcReport:
    """What ``orch gc`` removed (or, with ``dry_run``, would remove)."""

    dry_run: bool
    released: list[Released] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    pruned: list[Pruned] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        """Bytes removed; in a dry run, bytes that would be."""
        return sum(item.bytes for item in self.released) + sum(o.bytes for o in self.orphans)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bytes_freed"] = self.bytes_freed
        return data


def collect_garbage(
    store: Store,
    settings: Settings,
    *,
    dry_run: bool = False,
    now: float | None = None,
    orphan_grace_s: float = ORPHAN_GRACE_S,
) -> GcReport:
    """Run the three sweeps; nothing is removed with ``dry_run``."""
    when = time.time() if now is None else now
    report = GcReport(dry_run=dry_run)
    sweep = WorktreeJanitor(store, settings, actor=ACTOR).sweep(now=when, dry_run=dry_run)
    report.released, report.kept, report.failed = sweep.released, sweep.kept, sweep.failed
    _orphans(store, settings, report, when - orphan_grace_s, {r.path for r in sweep.released})
    for repository in store.repositories():
        if not (Path(repository) / ".git").exists():
            continue
        try:
            entries = Repo(Path(repository)).prune_worktrees(dry_run=dry_run)
        except OrchestratorError as exc:
            report.failed.append({"work_item": "", "path": repository, "error": str(exc)})
            continue
        if entries:
            report.pruned.append(Pruned(repository, entries))
    return report


def _orphans(
    store: Store, settings: Settings, report: GcReport, older_than: float, handled: set[str]
) -> None:
    root = worktrees_root(settings)
    if not root.is_dir():
        return
    found = [
        path
        for group in sorted(root.iterdir())
        if group.is_dir() and not group.is_symlink()
        for path in sorted(group.iterdir())
    ]
    owners = store.tasks_by_worktree([str(path) for path in found])
    for path in found:
        owner = owners.get(str(path))
        live = owner is not None and owner.worktree_removed_at is None
        if live or str(path) in handled:
            continue
        try:
            if path.lstat().st_mtime > older_than:
                continue
        except OSError:
            continue
        size = disk_usage(path)
        if not report.dry_run:
            try:
                _remove_orphan(path, root)
            except (OrchestratorError, OSError) as exc:
                report.failed.append({"work_item": "", "path": str(path), "error": str(exc)})
                continue
        report.orphans.append(Orphan(str(path), size, removed=not report.dry_run))


def _remove_orphan(path: Path, root: Path) -> None:
    """Through git when the directory is still a worktree of a repository on disk (so its
    entry goes too), else as a plain directory: it is inside our own ``root``."""
    dot_git = path / ".git"
    if dot_git.is_file() and not path.is_symlink():
        pointer = dot_git.read_text(encoding="utf-8", errors="replace").strip()
        admin = Path(pointer.removeprefix("gitdir:").strip())
        # <repository>/.git/worktrees/<name>: the repository is two levels up from .git.
        repository = admin.parent.parent.parent
        if admin.parent.name == "worktrees" and (repository / ".git").exists():
            Repo(repository).release_worktree(path, owned_root=root)
            return
    remove_tree(path)


@dataclass
class LeftoverSweeper:
    """``orch gc``'s orphan sweep of this host's own worktrees, as a loop of every
    instance (decision 0031). With hosts that share no disk a task's worktree is
    removed by the host that ends it; another host that ran one of its jobs keeps its
    copy, which is an orphan here once the task is recorded as removed."""

    store: Store
    settings: Settings
    orphan_grace_s: float = ORPHAN_GRACE_S

    def sweep(self, *, now: float | None = None) -> list[Orphan]:
        when = time.time() if now is None else now
        report = GcReport(dry_run=False)
        _orphans(self.store, self.settings, report, when - self.orphan_grace_s, set())
        for failure in report.failed:
            log.warning(
                "removing leftover worktree %s failed: %s", failure["path"], failure["error"]
            )
        return report.orphans
