"""The reaper: finishes jobs nobody is finishing, and kills jobs that run too long.

Every decision is an event.

* **Tier 2 (known outcome).** A job whose exit code has been recorded for at least
  ``reaper_finalize_grace_s`` but which is still ``finalizing`` lost its finalizer (a
  crash, a hang). The reaper evaluates the stage's gates read-only, chooses the decision
  and claims the job's terminal status first (claim-before-act): only the claim winner
  commits and advances; a loser does nothing. Inside the grace window a live, finalizing
  monitor is never touched. A task that already moved on is an idempotent no-op.
* **Tier 3 (backstop).** A job running longer than ``reaper_max_running_s`` is
  tree-killed and failed or retried, whatever its lease says, and the task's lease is
  force-released.
* The reaper defers on a live transition lease and lets acquisition reclaim a dead one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from orchestrator.kernel.events import EventKind
from orchestrator.kernel.failures import FailureKind
from orchestrator.procs.job import RunningProcess, job_stop_grace_s, kill_job
from orchestrator.procs.proc import pid_alive, start_ticks

if TYPE_CHECKING:
    from orchestrator.lifecycle.finalizer import Finalizer

__all__ = ["ACTOR", "Reaper"]

log = logging.getLogger("orchestrator.maintenance.reaper")
ACTOR: Final = "reaper"


def _not_ours(_job_id: int, _reason: str) -> bool:
    return False


class Reaper:
    """Tier 2 and tier 3, through the finalizer; ``stop_watched_job(job_id, reason)``
    stops a job this process's engine watches (False for a job it does not)."""

    def __init__(
        self, finalizer: Finalizer, stop_watched_job: Callable[[int, str], bool] = _not_ours
    ) -> None:
        self.finalizer = finalizer
        self.runtime = finalizer.runtime
        self.store = finalizer.store
        self.settings = finalizer.settings
        self.stop_watched_job = stop_watched_job

    def sweep(self) -> None:
        self.reap_known_outcomes()
        self.reap_overdue()

    def _lease_live(self, task_id: int) -> bool:
        return any(info.task_id == task_id and info.live for info in self.runtime.leases.held())

    # --- tier 2 ------------------------------------------------------------------------
    def reap_known_outcomes(self) -> int:
        """Finalize jobs whose exit was recorded more than the grace period ago."""
        reaped = 0
        for job, finished_age_s in self.store.overdue_finalizing(
            self.settings.reaper_finalize_grace_s, self.runtime.clock.now()
        ):
            task = self.store.get_task(job.task_id)
            if self._lease_live(task.id):
                self._event(
                    task.id, job.id, EventKind.REAPER_DEFERRED, "a live owner holds the lease"
                )
                continue
            run = self.store.job_run(job.id)
            exit_code = run.exit_code if run else None
            output = ""
            if run is not None:
                output = RunningProcess(job.pid or 0, Path(run.log_path)).tail_text()
            self._event(
                task.id,
                job.id,
                EventKind.REAPER_TIER2,
                f"exit recorded {finished_age_s:.0f}s ago and still not finalized",
            )
            if self.finalizer.finalize(job, exit_code, None, output, actor=ACTOR):
                reaped += 1
        return reaped

    # --- tier 3 ------------------------------------------------------------------------
    def reap_overdue(self) -> int:
        """Kill and fail jobs running longer than ``reaper_max_running_s``."""
        reaped = 0
        now = self.runtime.clock.now()
        running = self.store.jobs_by_status(("running",))
        if running:
            # A job runs somewhere (maybe on another instance): not quiet, so the
            # maintenance loops keep their cadence (a dead owner's job is found soon).
            self.store.activity.touch()
        for job, task in running:
            if job.started_at is None or now - job.started_at <= self.settings.reaper_max_running_s:
                continue
            reason = (
                f"reaper tier 3: running {now - job.started_at:.0f}s, longer than "
                f"reaper_max_running_s={self.settings.reaper_max_running_s:.0f}"
            )
            self._event(task.id, job.id, EventKind.REAPER_TIER3, reason)
            if not self.stop_watched_job(job.id, reason):
                # Not ours (its engine is gone or hung): kill the group ourselves.
                same_process = job.pid_start is None or start_ticks(job.pid or 0) in (
                    None,
                    job.pid_start,
                )
                if job.pid and pid_alive(job.pid) and same_process:
                    kill_job(job.pid, job_stop_grace_s(self.settings.kill_grace_s))
                run = self.store.job_run(job.id)
                with self.store.transaction() as tx:
                    if not tx.set_job_status_cas(job.id, "running", "finalizing"):
                        continue
                    if run is not None:
                        tx.record_exit(run.id, exit_code=-1)
                self.finalizer.finalize(
                    job, None, reason, "", actor=ACTOR, failure=FailureKind.REAPED
                )
            self.runtime.leases.force_release(task, actor=ACTOR, reason=reason)
            reaped += 1
        return reaped

    def _event(self, task_id: int, job_id: int, kind: str, reason: str) -> None:
        with self.store.transaction() as tx:
            tx.add_event(kind, actor=ACTOR, task_id=task_id, job_id=job_id, reason=reason)
