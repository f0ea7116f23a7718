"""The reconciler: repairs tasks whose stage and jobs disagree.

It looks at every live task (not done, cancelled or failed) with no job pending and no
change within ``reaper_finalize_grace_s`` (its own actor may be between its claim and
its act), and repairs through the same paths as everyone else (claim, CAS, lease),
deferring on a live transition lease:

* the task is in a job stage but its latest job belongs to another stage (the stage
  advanced but the next job was never enqueued) or it has no job at all: enqueue it;
* the latest job of this stage is ``done`` but the stage did not advance (the actor
  died between its claim and its transition): re-evaluate the gates read-only, then
  advance — for ``deploy -> done`` through the lease and the effect journal, so an
  interrupted merge or deploy is completed exactly once;
* the latest job of this stage ``failed`` and no retry was queued: apply the decision
  (retry, rollback or fail) that was never applied, with the cause its stored
  ``failure_kind`` gives (an environment failure goes to a person). A job whose kind
  says the task went elsewhere on purpose (``lost_race``, ``cancelled``) is left alone:
  the kind is read, never the error text.

A sweep does not read history (decision 0028). It asks the store for live tasks with no
job pending among those written since its last sweep (``tasks.updated_at`` or a job's
``updated_at``, re-reading ``CHANGE_SLACK_S`` before the cursor for a transaction that
committed late), the tasks it deferred last time, and one keyset page of
``FULL_PASS_PAGE`` task ids: the slow full pass, which goes round every task however
old, catches what the window cannot see (a clock behind on another host, a commit later
than the slack). The window ends ``reaper_finalize_grace_s`` ago, so a task is looked at
once its own actor's grace is over. A new reconciler's first window has no start: a
restarted engine repairs what the crash left at its first sweep.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

from orchestrator.errors import RepositoryError
from orchestrator.kernel.events import EventKind
from orchestrator.kernel.failures import SUPERSEDED, cause_of
from orchestrator.kernel.stages import JOB_STAGES
from orchestrator.lifecycle.transitions import enqueue_stage_job
from orchestrator.store.reconciling import ChangeWindow, ReconcilerStore

if TYPE_CHECKING:
    from orchestrator.kernel.gates import Verdict
    from orchestrator.lifecycle.finalizer import Finalizer
    from orchestrator.store import Task

__all__ = ["ACTOR", "CHANGE_SLACK_S", "FULL_PASS_PAGE", "Reconciler"]

log = logging.getLogger("orchestrator.maintenance.reconciler")
ACTOR: Final = "reconciler"
# Each window re-reads this much before the last one's end: a row stamped by a
# transaction that committed up to this late is still seen.
CHANGE_SLACK_S: Final = 60.0
# Task ids the full pass covers per sweep (10,000 tasks: once every 10 sweeps).
FULL_PASS_PAGE: Final = 1_000


class Reconciler:
    """Repairs through the finalizer; never starts a crossing the pool already runs."""

    def __init__(self, finalizer: Finalizer, *, page: int = FULL_PASS_PAGE) -> None:
        self.finalizer = finalizer
        self.runtime = finalizer.runtime
        self.store = finalizer.store
        self.settings = finalizer.settings
        self.reads = ReconcilerStore(self.store)
        self.page = page
        # The end of the last window read (None: nothing read yet), the full pass's
        # position, and the tasks deferred last sweep (asked for again by id).
        self._changed_until: float | None = None
        self._page_after = 0
        self._deferred: set[int] = set()

    def sweep(self) -> int:
        """Repair every task that needs it among those this sweep looks at (see the
        module's docstring); returns how many were repaired."""
        until = time.time() - self.settings.reaper_finalize_grace_s
        after = None if self._changed_until is None else self._changed_until - CHANGE_SLACK_S
        page_end = self.reads.page_end(self._page_after, self.page)
        if page_end is None and self._page_after:
            self._page_after = 0  # the pass went round every task: begin the next one
            page_end = self.reads.page_end(0, self.page)
        page = None if page_end is None else (self._page_after, page_end)
        candidates = self.reads.candidates(
            JOB_STAGES, window=ChangeWindow(after, until), page=page, ids=self._deferred
        )
        self._changed_until = until
        self._page_after = page_end or 0
        live_leases = {info.task_id for info in self.runtime.leases.held() if info.live}
        # This engine's own crossings in flight (they may not hold their lease yet).
        crossing = self.finalizer.crossings.busy_tasks()
        deferred: set[int] = set()
        repaired = 0
        for task in candidates:
            if task.id in crossing:
                deferred.add(task.id)
                continue
            if task.id in live_leases:
                deferred.add(task.id)
                self._event(task, EventKind.RECONCILER_DEFERRED, "a live owner holds the lease")
                continue
            if self._recently_moved(task):
                continue  # its own actor may still be between claim and act
            if self.repair(task):
                repaired += 1
        self._deferred = deferred
        return repaired

    def _recently_moved(self, task: Task) -> bool:
        """Within ``reaper_finalize_grace_s`` of the task's last change or job."""
        job = self.store.latest_job(task.id)
        last = max(task.updated_at, job.updated_at if job else 0.0)
        return time.time() - last < self.settings.reaper_finalize_grace_s

    def repair(self, task: Task) -> bool:
        """Repair ``task``; False when there was nothing to do or another actor won."""
        try:
            return self._repair(task)
        except RepositoryError:
            current = self.store.get_task(task.id)
            if current.stage == task.stage and not current.failed:
                raise
            return False  # another actor finished the task meanwhile; its worktree went

    def _repair(self, task: Task) -> bool:
        job = self.store.latest_job(task.id)
        if job is None or job.stage != task.stage:
            with self.store.transaction() as tx:
                current = tx.get_task(task.id)
                if current.stage != task.stage or current.failed:
                    return False
                tx.add_event(
                    EventKind.RECONCILER_ENQUEUED,
                    actor=ACTOR,
                    task_id=task.id,
                    to_stage=task.stage,
                    reason=f"task in {task.stage} had no job for it",
                )
                enqueue_stage_job(
                    tx, self.settings, task, task.stage, attempt=task.attempt, actor=ACTOR
                )
            return True
        if job.status == "done":
            problem, judged = self.finalizer.judge(task, job)
            decision = self.finalizer.decide(task, job, problem, judged)
            self._event(
                task, EventKind.RECONCILER_ADVANCE, f"job {job.id} is done, stage did not move"
            )
            return self.finalizer.apply_decision(
                task, job, judged, problem, decision, actor=ACTOR, claim_from=None
            )
        if job.status == "failed":
            if job.failure_kind in SUPERSEDED:
                return False  # a stale job: the task went elsewhere on purpose
            run = self.store.job_run(job.id)
            job_error: str | None = job.error or "the job failed"
            verdict: Verdict | None = None
            if run is not None and run.exit_code == 0:
                # The agent succeeded: the failure was the gates' verdict; judge again.
                job_error, verdict = self.finalizer.judge(task, job)
            # An environment failure goes to a person, as when it was first decided.
            cause = cause_of(job.failure_kind)
            decision = self.finalizer.decide(task, job, job_error, verdict, cause)
            self._event(
                task,
                EventKind.RECONCILER_DECIDE,
                f"job {job.id} failed and no decision was applied",
            )
            return self.finalizer.apply_decision(
                task, job, verdict, job_error, decision, actor=ACTOR, claim_from=None
            )
        return False

    def _event(self, task: Task, kind: str, reason: str) -> None:
        with self.store.transaction() as tx:
            tx.add_event(kind, actor=ACTOR, task_id=task.id, reason=reason)
