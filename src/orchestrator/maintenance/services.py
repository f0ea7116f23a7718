"""The maintenance services of one process, and how they run.

The reaper, the reconciler and the worktree janitor sweep the store and finish, repair
or clean what no other actor will. They depend on the :class:`~orchestrator.lifecycle.finalizer.
Finalizer`, the store and the settings, never on the engine. ``orch serve`` runs each
as a named loop under the :class:`~orchestrator.maintenance.supervisor.Supervisor` (restarted when
it dies, shown in ``/status``); an engine driven tick by tick without a supervisor
(``orch run``, the demo, tests) runs the due sweeps inline, every
``MAINTENANCE_INTERVAL_S``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from orchestrator.lifecycle.finalizer import Finalizer
from orchestrator.maintenance.reaper import Reaper
from orchestrator.maintenance.reconciler import Reconciler
from orchestrator.maintenance.supervisor import Loop, every
from orchestrator.workspace.worktrees import WORKTREE_SWEEP_INTERVAL_S, WorktreeJanitor

__all__ = ["MAINTENANCE_IDLE_INTERVAL_S", "MAINTENANCE_INTERVAL_S", "Maintenance"]

log = logging.getLogger("orchestrator.maintenance.services")

# How often the reaper and the reconciler sweep.
MAINTENANCE_INTERVAL_S: Final = 5.0
# How often they sweep once no work has moved for QUIET_AFTER_S (store/activity.py):
# idle, there is nothing to reap or repair, and work moving wakes them at once.
MAINTENANCE_IDLE_INTERVAL_S: Final = 60.0


@dataclass(frozen=True)
class Maintenance:
    """The reaper, the reconciler and the worktree janitor of one process."""

    reaper: Reaper
    reconciler: Reconciler
    janitor: WorktreeJanitor

    @classmethod
    def create(
        cls, finalizer: Finalizer, stop_watched_job: Callable[[int, str], bool] | None = None
    ) -> Maintenance:
        """``stop_watched_job`` stops a job this process's engine watches (the reaper's
        tier 3)."""
        reaper = (
            Reaper(finalizer) if stop_watched_job is None else Reaper(finalizer, stop_watched_job)
        )
        janitor = WorktreeJanitor(finalizer.store, finalizer.settings)
        return cls(reaper, Reconciler(finalizer), janitor)

    def loops(self) -> list[Loop]:
        """Each service as a supervised loop."""
        activity = self.reaper.finalizer.store.activity

        def paced(name: str, sweep: Callable[[], object]) -> Loop:
            body = every(
                MAINTENANCE_INTERVAL_S,
                sweep,
                activity=activity,
                idle_interval_s=MAINTENANCE_IDLE_INTERVAL_S,
            )
            return Loop(name, body, wake=activity.touch)

        return [
            paced("reaper", self.reaper.sweep),
            paced("reconciler", self.reconciler.sweep),
            Loop("worktree-janitor", every(WORKTREE_SWEEP_INTERVAL_S, self.janitor.sweep)),
        ]

    def sweep_inline(self) -> None:
        """One sweep of each (the janitor at most every ``WORKTREE_SWEEP_INTERVAL_S``),
        for an engine without a supervisor: an error is logged, the others still run."""
        sweeps: tuple[tuple[str, Callable[[], object]], ...] = (
            ("reaper", self.reaper.sweep),
            ("reconciler", self.reconciler.sweep),
            ("worktree janitor", self.janitor.maybe_sweep),
        )
        for name, sweep in sweeps:
            try:
                sweep()
            except Exception:
                log.exception("%s sweep failed", name)
