"""The engine: dispatch queued jobs, watch them run, finalize them through the gates.

Theory of operation
-------------------
One engine per process, driven by :meth:`Engine.tick` (the ``serve`` loop, ``orch run``
and the demo all call it). A tick

1. collects jobs whose process exited (or stops those past their timeout or budget, or
   whose task moved on under them, e.g. cancelled: SIGTERM now, SIGKILL from a deadline
   heap at the grace deadline, so a job that ignores SIGTERM never holds the tick),
   records the exit, and **finalizes** them:
   evaluate the stage's gates read-only, ask the kernel what next
   (:func:`decide_after_job`), **claim** the job's terminal status with a
   compare-and-swap, and only if that claim won, commit the stage's artifacts and apply
   the decision (stage CAS + next job + events in one transaction, or, when the move
   has side effects, :func:`enter_transition` handed to the crossing pool, so a merge,
   a deploy or a health window never holds up the tick; see :mod:`crossings`);
2. **dispatches** queued jobs whose time has come, within this instance's limit and the
   per-repository one (over every instance): claim (CAS ``queued -> running``), render
   prompt and command, spawn under the launcher in the task's worktree in a new process
   group, record pid and run;
3. every few seconds runs the **reaper** and the **reconciler** (``maintenance``).

Claim-before-act means any number of actors (this monitor, a reaper, a reconciler,
another engine) may try to finalize the same job: exactly one wins, the others do
nothing. Notifications go out only after the transaction that caused them committed.
"""

from __future__ import annotations

import functools
import heapq
import json
import logging
import os
import queue
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, TypeVar

from orchestrator.agents import (
    AgentSpec,
    RunBudgetWatch,
    RunContext,
    build_invocation,
    job_outcome,
    render_prompt,
    resolve_agent,
    result_file_for,
)
from orchestrator.errors import OrchestratorError, first_line
from orchestrator.job_env import job_environment
from orchestrator.kernel.failures import FailureKind
from orchestrator.lifecycle.budget import stop_if_over_budget
from orchestrator.lifecycle.crossings import CrossingPool
from orchestrator.lifecycle.finalizer import Finalizer, runner_facts
from orchestrator.lifecycle.transitions import (
    EventKind,
    Runtime,
    artifact_dir,
)
from orchestrator.maintenance.services import MAINTENANCE_INTERVAL_S, Maintenance
from orchestrator.outbox.notifier import Notifier, notify_safely
from orchestrator.procs.exits import ExitWatch
from orchestrator.procs.job import RunningProcess, job_stop_grace_s, spawn_job
from orchestrator.procs.proc import pid_alive, start_ticks
from orchestrator.runners.environment import runner_environment
from orchestrator.settings import Settings
from orchestrator.store import Job, Store, Task
from orchestrator.store.leases import LeaseStore
from orchestrator.workspace.git import head_commit
from orchestrator.workspace.setup import (
    prepare_workspace,
)
from orchestrator.workspace.worktrees import ensure_worktree

__all__ = ["ENGINE_IDLE_POLL_S", "ENGINE_TICK_S", "Engine"]

log = logging.getLogger("orchestrator.engine.core")

ENGINE_TICK_S: Final = 0.05
# With nothing to watch and commits announced (LISTEN/NOTIFY on PostgreSQL, the database
# file's change stamp on SQLite), the engine polls only this often: the fallback for an
# announcement that was lost. A job due sooner (a retry's backoff) ends the wait then.
ENGINE_IDLE_POLL_S: Final = 10.0
# How often an idle engine on SQLite looks at the database file's change stamp (a stat,
# no query): a job enqueued by another process (the CLI) starts within this.
STAMP_WATCH_S: Final = 0.25
# A database out of reach: the loop asks it again after this, doubling up to the max.
DATABASE_RETRY_S: Final = 0.5
DATABASE_RETRY_MAX_S: Final = 10.0
# How often running jobs are checked against their task's stage (cancel, rollback).
STAGE_CHECK_INTERVAL_S: Final = 0.5
# Ready jobs read beyond the free slots and the busy tasks, for those a full repository
# passes over; a page passed over whole is read again four times larger, up to the max.
DISPATCH_SPARE: Final = 4
DISPATCH_READ_MAX: Final = 50
# The jobs one dispatch pass claimed are started together, and the jobs one watch pass
# found ended are finalized together: both are mostly waiting on spawns, git processes
# and commits, so they overlap there; the pass waits for them all (decision 0030).
PASS_WORKERS: Final = 4
# A pass worker idle this long ends; the next pass starts it again.
PASS_WORKER_IDLE_S: Final = 30.0
ACTOR: Final = "engine"
_T = TypeVar("_T")


class PassWorkers:
    """Daemon threads kept between the engine's passes (decision 0030): a pass hands its
    calls out and waits for them all. Starting four threads per pass cost the engine
    about a sixth of its own CPU per stage-job; these start once, and one idle for
    ``idle_s`` ends (the next pass starts it again), so an engine that stopped leaves
    none behind for long. Daemons: a call stuck on something without a timeout never
    holds up the process's exit."""

    def __init__(self, size: int = PASS_WORKERS, idle_s: float = PASS_WORKER_IDLE_S) -> None:
        self.size = size
        self._idle_s = idle_s
        self._calls: queue.SimpleQueue[tuple[Callable[[], None], threading.Semaphore]] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads = 0

    def run(self, work: Callable[..., _T], calls: list[tuple[Any, ...]]) -> list[_T | Exception]:
        """``work(*call)`` for every call, up to ``size`` at once; each call's result or
        the exception it raised, in order. A single call runs in the caller's thread."""
        outcomes: list[_T | Exception | None] = [None] * len(calls)

        def one(index: int, call: tuple[Any, ...]) -> None:
            try:
                outcomes[index] = work(*call)
            except Exception as exc:
                outcomes[index] = exc
            except BaseException as exc:  # SystemExit and the like: still an outcome
                outcomes[index] = RuntimeError(f"{type(exc).__name__} in a pass: {exc}")

        if len(calls) <= 1:
            for index, call in enumerate(calls):
                one(index, call)
            return outcomes  # type: ignore[return-value]
        done = threading.Semaphore(0)
        # Counted and put under one lock: a thread that found the queue empty ends
        # before (and is not counted) or sees the calls, never in between.
        with self._lock:
            missing = min(self.size, len(calls)) - self._threads
            for _ in range(missing):
                self._threads += 1
                name = f"engine-pass-{self._threads}"
                threading.Thread(target=self._serve, name=name, daemon=True).start()
            for index, call in enumerate(calls):
                self._calls.put((functools.partial(one, index, call), done))
        for _ in calls:
            done.acquire()
        return outcomes  # type: ignore[return-value]

    def _serve(self) -> None:
        while True:
            try:
                call, done = self._calls.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    # A pass counts the threads and puts its calls under this lock.
                    if self._calls.empty():
                        self._threads -= 1
                        return
                continue
            try:
                call()
            finally:
                done.release()


# The engines of a process share them: a pass's calls hold nothing while queued.
_PASS_WORKERS: Final = PassWorkers()


def _together(work: Callable[..., _T], calls: list[tuple[Any, ...]]) -> list[_T | Exception]:
    """``work(*call)`` for every call on the shared :class:`PassWorkers`."""
    return _PASS_WORKERS.run(work, calls)


@dataclass
class _Live:
    job: Job
    task: Task
    run_id: int
    process: RunningProcess | None
    timeout_s: float
    start_error: str | None = None
    budget: RunBudgetWatch | None = None
    # How it failed, when the engine knows before it ends: why it was stopped or could
    # not start (kernel/failures.py; ENVIRONMENT sends the task to a person).
    failure: FailureKind | None = None


class Engine:
    """Runs the jobs of one store under one set of settings."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        notifier: Notifier | None = None,
        *,
        boot_id: str | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.runtime = runtime or Runtime.create(store, settings, notifier, boot_id=boot_id)
        self.store = self.runtime.store
        self.settings = self.runtime.settings
        self._secrets: tuple[Settings, frozenset[str]] | None = None
        # Resolved once, not per job: a work item is one plain path component
        # (WORK_ITEM_PATTERN), so its logs sit directly under it.
        self._logs_root = (self.settings.data_dir / "logs").resolve()
        self.notifier: Notifier = self.runtime.notifier
        # A random id per process start: rows it owns are recognisably this boot's.
        self.boot_id = self.runtime.owner.boot_id
        self._live: dict[int, _Live] = {}
        # (monotonic deadline, job id): when a SIGTERMed job's group gets its SIGKILL.
        self._kill_deadlines: list[tuple[float, int]] = []
        self._last_stage_check = 0.0
        self._last_maintenance = 0.0
        self._recovered = False
        self.started_at = time.time()
        # When the last tick began (GET /status: a loop alive but stuck shows here).
        self.last_tick_at: float | None = None
        # Side-effectful crossings run here, beside the tick (one per task at once).
        self.crossings = CrossingPool(self.settings.crossing_workers)
        self.finalizer = Finalizer(self.runtime, self.crossings)
        # kill_job comes from the reaper's loop too: stops and the heap are guarded.
        self._kill_lock = threading.Lock()
        self.services = Maintenance.create(self.finalizer, self.kill_job)
        self.janitor = self.services.janitor
        # False when a supervisor runs the services in their own loops (orch serve).
        self.inline_maintenance = True
        # Set by the leader's rescuer: the next tick takes over dead instances' jobs.
        self._rescue_due = threading.Event()
        # Ends an idle wait early (a job was enqueued, shutdown).
        self._wake = threading.Event()
        # True while a listener announces commits (engine/wakeups.py): idle, the engine
        # then polls every idle_poll_s instead of every tick. SQLite's commits are
        # announced by the change stamp of its file (and in-process by the Activity).
        self.wakeups_pushed = self.store.change_stamp() is not None
        self.idle_poll_s = ENGINE_IDLE_POLL_S
        # How long the idle wait going on now lasts at most (None: not waiting).
        self.waiting_s: float | None = None
        # A commit that moved work in this process (an enqueued job) wakes us at once.
        self.store.activity.subscribe(self.wake)
        # So does a job's end (its pidfd), instead of waiting out the tick.
        self.exits = ExitWatch(self.wake)
        # Why the database is out of reach while the loop waits for it (GET /status).
        self.database_outage: str | None = None

    # --- loop --------------------------------------------------------------------------
    def tick(self) -> bool:
        """One pass: recover once, finalize what finished, start what is due."""
        self.last_tick_at = time.time()
        if not self._recovered:
            self.recover_on_startup()
        elif self._rescue_due.is_set():
            self._rescue_due.clear()
            self.requeue_running_jobs(this_host_only=True)
        self.crossings.supervise()
        ended = self.crossings.forget_ended()
        crossed = bool(ended)
        if any(run.error is not None for run in ended):
            self.release_orphaned_leases()  # one that raised may have kept its lease
        finished = self._collect()
        started = self._dispatch()
        self._maybe_maintain()
        return finished or started or crossed

    def run(
        self,
        stop: threading.Event,
        *,
        until: Callable[[], bool] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        """Tick until ``stop`` is set (call :meth:`wake` after setting it, so an idle
        wait ends at once) or ``until()`` holds.

        A database out of reach (:meth:`Store.is_outage`: its server restarting, a
        connection lost) does not end the loop: it waits for the database, doubling its
        wait up to ``DATABASE_RETRY_MAX_S``, then recovers what the failed pass left
        (:meth:`recover_after_outage`) and goes on. Any other error ends it, as before."""
        recovering = False
        while True:
            try:
                if recovering:
                    self.recover_after_outage()
                    log.warning("the database is back; the engine goes on")
                    recovering = False
                    self.database_outage = None
                self._loop(stop, until, on_tick)
                return
            except Exception as exc:
                if not self.store.is_outage(exc):
                    raise
                self.database_outage = first_line(exc)
                log.warning(
                    "the database is out of reach (%s); the engine waits for it",
                    self.database_outage,
                )
            if not self._await_database(stop):
                return
            recovering = True  # a recovery that meets the outage again waits again

    def _await_database(self, stop: threading.Event) -> bool:
        """Wait until the database answers (True) or ``stop`` is set (False)."""
        wait_s = DATABASE_RETRY_S
        while not stop.wait(wait_s):
            try:
                self.store.ping()
            except OrchestratorError:
                wait_s = min(wait_s * 2, DATABASE_RETRY_MAX_S)
                continue
            return True
        return False

    def recover_after_outage(self) -> None:
        """After the database was out of reach mid-pass: this engine's jobs that the
        pass lost track of (a start whose record failed, a finalization that failed)
        are finished from what their launchers recorded, or failed as lost and retried,
        as a dead engine's are; stale leases are reclaimed."""
        self.requeue_running_jobs(own_unwatched=True)
        self.runtime.leases.reclaim_stale(actor="recovery")
        self.release_orphaned_leases()

    def release_orphaned_leases(self) -> list[int]:
        """Release the leases this process holds for tasks it crosses no longer: a
        crossing that failed (the database went away under it) could not release its
        lease, and a live owner's lease is never reclaimed as stale, so the task would
        wait for this process to restart. An actor of this process that holds one just
        now is fenced by the lease's epoch: its write fails, it does nothing twice.
        Returns the tasks' ids."""
        crossing = self.crossings.busy_tasks()
        released = []
        for info in self.runtime.leases.held():
            if info.owner_boot_id != self.boot_id or info.task_id in crossing:
                continue
            task = self.store.get_task(info.task_id)
            reason = "its holder in this process ended without releasing it"
            if self.runtime.leases.force_release(task, actor="recovery", reason=reason):
                released.append(info.task_id)
        return released

    def _loop(
        self,
        stop: threading.Event,
        until: Callable[[], bool] | None,
        on_tick: Callable[[], None] | None,
    ) -> None:
        while True:
            self._wake.clear()  # before the tick: a wake during it is not lost
            if stop.is_set():  # after the clear: a stop with its wake is never missed
                return
            # SQLite: what the file looked like before the tick read the queue, so a
            # commit by another process during the tick still ends the idle wait.
            stamp = self.store.change_stamp()
            busy = self.tick()
            if on_tick is not None:
                on_tick()
            if until is not None and until():
                return
            working = self._working()
            if busy or working:
                self.store.activity.touch()  # the maintenance loops keep their cadence
            if not busy:
                self._idle_wait(working, stop, stamp)

    def _working(self) -> bool:
        """Anything of this engine under way: a job running, a crossing."""
        return bool(self._live) or bool(self.crossings.pending())

    def wake(self) -> None:
        """End the current idle wait: a job was enqueued, or the engine should stop."""
        self._wake.set()

    def _idle_wait(
        self, working: bool, stop: threading.Event, stamp: tuple[int, ...] | None
    ) -> None:
        """A tick's worth while anything runs here or nobody announces commits;
        otherwise until a commit is announced, the next queued job is due, or the slow
        fallback poll (a lost announcement waits at most that long)."""
        if working or not self.wakeups_pushed:
            self.waiting_s = ENGINE_TICK_S
            self._wake.wait(ENGINE_TICK_S)
            self.waiting_s = None
            return
        now = time.time()
        due = self.store.next_job_due(now)
        wait_s = self.idle_poll_s if due is None else min(self.idle_poll_s, due - now)
        if self.inline_maintenance:  # no supervisor: the sweeps run in our tick
            next_sweep = self._last_maintenance + MAINTENANCE_INTERVAL_S - time.monotonic()
            wait_s = min(wait_s, next_sweep)
        self.waiting_s = max(wait_s, 0.0)
        try:
            if stamp is None:
                self._wake.wait(self.waiting_s)
            else:
                self._watch_stamp(self.waiting_s, stop, stamp)
        finally:
            self.waiting_s = None

    def _watch_stamp(
        self, wait_s: float, stop: threading.Event, seen: tuple[int, ...] | None
    ) -> None:
        """SQLite: wait up to ``wait_s`` for a wake or ``stop``, looking at the database
        file's change stamp every ``STAMP_WATCH_S`` (``seen``: before the last tick);
        another process's commit ends the wait and is announced to this process's loops
        (the Activity)."""
        deadline = time.monotonic() + wait_s
        while not self._wake.is_set() and not stop.is_set():
            stamp = self.store.change_stamp()
            if stamp != seen:
                before, after = self.store.own_change
                if stamp != after or seen != before:
                    self.store.activity.poke()  # someone else's commit; wakes us too
                    return
                seen = stamp  # only our own commit (a heartbeat) moved it
            left = deadline - time.monotonic()
            if left <= 0 or self._wake.wait(min(STAMP_WATCH_S, left)):
                return

    def idle(self) -> bool:
        """No crossing in flight here, no job queued, deferred, running or finalizing."""
        # The pool first: a crossing that ends meanwhile has committed what it queued
        # (a rollback's development job) before it leaves the pool, so the store sees it.
        if self._working():
            return False
        pending = self.store.jobs_by_status(("queued", "deferred", "running", "finalizing"))
        return not pending and not self._live

    def wait_for_crossings(self, timeout_s: float | None = None) -> bool:
        """Block until no crossing of this engine is in flight; False on timeout."""
        return self.crossings.wait(timeout_s)

    def running_jobs(self) -> list[Job]:
        return [live.job for live in self._live.values()]

    def shutdown(self, *, kill: bool = False, crossing_wait_s: float | None = None) -> None:
        """Stop watching. Running agents are left running (and stay recorded) unless
        ``kill``; the next engine adopts them (:meth:`requeue_running_jobs`).

        Crossings in flight are waited for up to ``crossing_wait_s`` (default
        ``crossing_shutdown_wait_s``); one still going then is left to the next engine,
        as after a crash: its lease expires and the journal finds what it did."""
        wait_s = (
            self.settings.crossing_shutdown_wait_s if crossing_wait_s is None else crossing_wait_s
        )
        if not self.crossings.wait(wait_s):
            log.warning(
                "%d crossing(s) still in flight after %ss; the next engine completes them",
                self.crossings.pending(),
                wait_s,
            )
        if kill:
            self._kill_all("engine shutdown")
        self._live.clear()
        self.exits.close()
        self.store.activity.unsubscribe(self.wake)

    def _kill_all(self, reason: str) -> None:
        """SIGTERM every job at once, collect them as they end; SIGKILL what is left at
        the grace deadline (each job's own, from the deadline heap)."""
        for live in self._live.values():
            if live.process is not None and live.process.killed_reason is None:
                self._stop(live, reason, FailureKind.KILLED)
        give_up = time.monotonic() + self._stop_grace_s() + ENGINE_TICK_S
        while self._live and time.monotonic() < give_up:
            if not self._collect(final=True):
                time.sleep(ENGINE_TICK_S)
        for live in self._live.values():
            if live.process is not None:
                live.process.force_kill()
        self._collect(final=True)

    def _maybe_maintain(self) -> None:
        if not self.inline_maintenance:
            return  # a supervisor runs the services in their own loops
        now = time.monotonic()
        if now - self._last_maintenance < MAINTENANCE_INTERVAL_S:
            return
        self._last_maintenance = now
        self.maintenance()

    def maintenance(self) -> None:
        """One inline sweep of the maintenance services (when no supervisor runs them)."""
        self.services.sweep_inline()

    # --- restart recovery --------------------------------------------------------------
    def recover_on_startup(self) -> None:
        """Adopt or requeue the jobs of dead engines, then reclaim stale leases."""
        self._recovered = True
        self.requeue_running_jobs()
        self.runtime.leases.reclaim_stale(actor="recovery")

    def request_rescue(self) -> None:
        """Ask the next tick to adopt or finish the running jobs of instances that died
        meanwhile (the leader's ``rescuer`` loop, every few seconds): without it, the
        jobs of an instance that is not restarted would wait for the reaper's tier 3."""
        self._rescue_due.set()
        self.wake()

    def requeue_running_jobs(
        self, *, this_host_only: bool = False, own_unwatched: bool = False
    ) -> None:
        """Running jobs of dead engines: adopt those still alive, finish the others.

        A job is adopted when its pid is alive and started when recorded (not a reused
        pid); the new engine watches it through the launcher's exit and tail files. A
        job that is gone is finalized from its recorded exit, or failed and retried when
        it left none. Finalizing jobs of dead engines are finalized now.

        The jobs of instances that ran on another host are left while that host may
        still run them: their pids and files mean nothing here (decision 0027). Once no
        instance of that host has beaten for ``host_takeover_s``, they are failed as
        lost and retried by whoever claims them; the task's branch comes from the
        remote (decision 0031). ``this_host_only`` (the rescuer's sweeps) also leaves
        the jobs whose instance is unknown. ``own_unwatched`` (after a database outage)
        also takes this engine's own jobs that it does not watch.
        """
        for job, task in self.store.jobs_by_status(("running", "finalizing")):
            if job.id in self._live:
                continue
            if job.owner_boot_id == self.boot_id:
                if not own_unwatched:
                    continue
            elif self.runtime.leases.instance_alive(job.owner_boot_id):
                continue  # another live engine watches it
            host = self._owner_host(job)
            gone_host = None
            shares_no_disk = bool(self.settings.repo_config(Path(task.repository)).remote)
            if host is not None and host != self.runtime.owner.host and shares_no_disk:
                gone_host = self._gone_host(host)
                if gone_host is None:
                    continue
            elif this_host_only and host != self.runtime.owner.host:
                continue  # unknown, or another host sharing this disk: as decision 0027
            run = self.store.job_run(job.id)
            host_lost = (
                f"the job was lost with its host {gone_host}, silent for "
                f"{self.settings.host_takeover_s:.0f}s or more"
                if gone_host
                else None
            )
            if job.status == "finalizing":
                # A gone host's job ended there, with its worktree: judged here, it is lost.
                known = run.exit_code if run and not gone_host else None
                self.finalizer.finalize_orphan(job, known, "", lost=host_lost)
                continue
            log_path = Path(run.log_path) if run and not gone_host else None
            alive = (
                not gone_host
                and pid_alive(job.pid)
                and (job.pid_start is None or start_ticks(job.pid or 0) == job.pid_start)
            )
            if alive and run is not None and log_path is not None:
                with self.store.transaction() as tx:
                    adopted = tx.adopt_job(
                        job.id, old_boot_id=job.owner_boot_id, new_boot_id=self.boot_id
                    )
                    if adopted:
                        tx.add_event(
                            EventKind.JOB_ADOPTED,
                            actor="recovery",
                            task_id=task.id,
                            job_id=job.id,
                            to_stage=job.stage,
                            reason=f"pid {job.pid} survived its engine; watching it again",
                        )
                if adopted:
                    running_for = time.time() - (job.started_at or time.time())
                    adopted_process = RunningProcess.adopt(job.pid or 0, log_path, running_for)
                    timeout = job.timeout_s or self._timeout_of(job, task)
                    budget = self._budget_of(job, task, log_path)
                    self._watch(_Live(job, task, run.id, adopted_process, timeout, budget=budget))
                continue
            process = RunningProcess.adopt(job.pid or 0, log_path, 0.0) if log_path else None
            exit_code = process.recorded_exit() if process else -1
            output = process.tail_text() if process else ""
            if run is None:
                self.finalizer.finalize_orphan(job, None, "", lost=host_lost)
                continue
            live = _Live(job, task, run.id, process, 0.0)
            if exit_code == -1:
                live.start_error = (
                    host_lost or "the job was lost with the previous orchestrator process"
                )
                live.failure = FailureKind.LOST
                if process is not None:
                    process.killed_reason = live.start_error
            self._finish(
                live, None if exit_code == -1 else exit_code, claim_from="running", output=output
            )

    def _owner_host(self, job: Job) -> str | None:
        """The host of the instance that claimed ``job``; None when unknown."""
        if job.owner_boot_id is None:
            return None
        owner = LeaseStore(self.store).instance(job.owner_boot_id)
        return None if owner is None else str(owner["host"])

    def _gone_host(self, host: str) -> str | None:
        """``host`` when no instance of it has beaten for ``host_takeover_s``; None
        while it may still be running its jobs."""
        silent = self.runtime.leases.host_silent_s(host)
        if silent is None or silent < self.settings.host_takeover_s:
            return None
        return host

    def _budget_of(self, job: Job, task: Task, log_path: Path) -> RunBudgetWatch | None:
        """The run-budget watch of an adopted job, with the budget it started under."""
        if not job.budget_usd:
            return None
        try:
            spec = resolve_agent(self.settings, job.agent, Path(task.repository), job.stage)
        except OrchestratorError as exc:
            # Its spend is read by its agent's adapter: without it, only the timeout holds.
            log.warning("job %s: run budget not watched after adoption: %s", job.id, exc)
            return None
        config = spec.config.model_copy(update={"budget_usd": job.budget_usd})
        return RunBudgetWatch(replace(spec, config=config), result_file_for(log_path))

    def _timeout_of(self, job: Job, task: Task) -> float:
        """A job's timeout resolved again (a job from before its limits were stored):
        its agent's or stage's, else the global."""
        try:
            spec = resolve_agent(self.settings, job.agent, Path(task.repository), job.stage)
        except OrchestratorError:
            return self.settings.agent_timeout_s
        return spec.config.timeout_s or self.settings.agent_timeout_s

    # --- dispatch ----------------------------------------------------------------------
    def _dispatch(self) -> bool:
        total = len(self._live)
        if total >= self.settings.max_running_jobs:
            return False  # no slot here: a backlog costs no query per tick
        # A task being crossed (merge, deploy, health window) gets no job meanwhile.
        busy_tasks = {live.task.id for live in self._live.values()}
        busy_tasks |= self.crossings.busy_tasks()
        # Read as many ready jobs as could start, and a few for the ones passed over (a
        # busy task, a full repository); more only when a full page was passed over.
        wanted = self.settings.max_running_jobs - total + len(busy_tasks) + DISPATCH_SPARE
        now = time.time()
        counts: dict[str, int] | None = None
        seen: set[int] = set()
        claimed: list[tuple[Job, Task]] = []
        try:
            while True:
                ready = self.store.ready_jobs(
                    now, limit=wanted, repositories=self.settings.instance_repos
                )
                if not ready:
                    break
                if counts is None:
                    # Per repository over every instance; in all, this instance's own
                    # jobs only (max_running_jobs is a host's capacity, decision 0027).
                    counts = self.store.active_job_counts()
                total = self._claim_ready(ready, seen, busy_tasks, counts, claimed, total)
                if total >= self.settings.max_running_jobs or len(ready) < wanted:
                    break
                if wanted >= DISPATCH_READ_MAX:
                    break
                wanted = min(wanted * 4, DISPATCH_READ_MAX)
        finally:
            # What was claimed is started even when a later claim raised: a job left
            # claimed but unstarted would be failed as lost by the next engine.
            self._start_all(claimed)
        return bool(claimed)

    def _claim_ready(
        self,
        ready: list[tuple[Job, Task]],
        seen: set[int],
        busy_tasks: set[int],
        counts: dict[str, int],
        claimed: list[tuple[Job, Task]],
        total: int,
    ) -> int:
        """Claim what ``ready`` holds that may start (not ``seen`` before, its task not
        busy, its repository under its limit) while this instance has slots; the
        number of jobs it runs then."""
        for job, task in ready:
            if total >= self.settings.max_running_jobs:
                break
            if job.id in seen:
                continue
            seen.add(job.id)
            repository = task.repository
            if counts.get(repository, 0) >= self.settings.max_running_jobs_per_repo:
                continue
            if job.task_id in busy_tasks:
                continue
            if job.kind == "agent" and stop_if_over_budget(self.runtime, job, task):
                continue  # the task's cost budget is spent: a person decides
            claim = self._claim(job, task)
            if claim is not None:
                claimed.append(claim)
                total += 1
                counts[repository] = counts.get(repository, 0) + 1
                busy_tasks.add(job.task_id)
        return total

    def _start_all(self, claimed: list[tuple[Job, Task]]) -> None:
        """Start the claimed jobs together (their spawns, git processes and commits
        overlap) and watch each one that started; a start that raised (the store went
        away after a spawn) raises here, once every other start is watched."""
        error: Exception | None = None
        for outcome in _together(self._start, claimed):
            if isinstance(outcome, Exception):
                error = error or outcome
            else:
                self._watch(outcome)
        if error is not None:
            raise error

    def launch_job(self, job: Job) -> bool:
        """Claim ``job`` and start its process; False if another actor claimed it first."""
        claimed = self._claim(job)
        if claimed is None:
            return False
        self._watch(self._start(*claimed))
        return True

    def _watch(self, live: _Live) -> None:
        """Watch a started (or adopted) job; its end wakes the engine."""
        self._live[live.job.id] = live
        if live.process is not None:
            self.exits.watch(live.process.pid)

    def _claim(self, job: Job, task: Task | None = None) -> tuple[Job, Task] | None:
        """``job`` claimed ``queued -> running`` for this engine, with its task (read
        now unless given, fresh); None if another actor claimed it first or its task
        moved on (the job is stale)."""
        task = task or self.store.get_task(job.task_id)
        with self.store.transaction() as tx:
            if task.stage != job.stage or task.failed:
                if tx.set_job_status_cas(
                    job.id,
                    "queued",
                    "failed",
                    error=f"task is in {task.stage}; job is stale",
                    failure_kind=FailureKind.LOST_RACE,
                ):
                    tx.add_event(
                        EventKind.JOB_LOST_RACE,
                        actor=ACTOR,
                        task_id=task.id,
                        job_id=job.id,
                        reason=f"task is in {task.stage}; the job is stale",
                    )
                return None
            if not tx.set_job_status_cas(job.id, "queued", "running", owner_boot_id=self.boot_id):
                return None
        # What the claim wrote, without reading the row again (its started_at, the
        # store's clock, only the reaper and an adoption read, from the row).
        return replace(job, status="running", owner_boot_id=self.boot_id), task

    def _start(self, job: Job, task: Task) -> _Live:
        """Start the process of a claimed job and record it (in the launch pool's thread
        when the dispatch pass claimed it); what to watch, a start failure included."""
        worktree = Path(task.worktree)
        log_path = self._logs_root / task.work_item / f"{job.id:06d}-{job.stage}-a{job.attempt}.log"
        spec: AgentSpec | None = None
        try:
            spec = resolve_agent(self.settings, job.agent, Path(task.repository), job.stage)
            argv, env, prompt = self._command(spec, job, task, log_path)
            timeout_s = spec.config.timeout_s or self.settings.agent_timeout_s
        except OrchestratorError as exc:
            # The agent's configuration is unusable (an unknown agent, a bad template):
            # a person fixes orch.toml, retrying cannot.
            return self._start_failed(
                job, task, log_path, spec, str(exc), failure=FailureKind.ENVIRONMENT
            )
        try:
            # A retried task's worktree may have been removed while it was failed.
            ensure_worktree(self.store, self.settings, task, actor=ACTOR)
            start_sha = head_commit(worktree)
            repository = Path(task.repository)
            # Included files copied once; the hooks run in the job, before its command.
            wrapper = prepare_workspace(
                self.settings.repo_config(repository), repository, worktree, log_path
            )
            process = spawn_job(
                argv,
                cwd=worktree,
                env=env,
                log_path=log_path,
                max_log_bytes=self.settings.log_max_bytes,
                stdin_text=prompt,
                wrapper=wrapper,
                grace_s=self.settings.kill_grace_s,
                launcher=self.settings.launcher,
            )
        except (OSError, OrchestratorError) as exc:
            reason = f"cannot start {argv[0]!r}: {getattr(exc, 'strerror', None) or exc}"
            return self._start_failed(job, task, log_path, spec, reason)
        job = replace(
            job,
            pid=process.pid,
            start_sha=start_sha,
            pid_start=start_ticks(process.pid),
            timeout_s=timeout_s,
            budget_usd=spec.config.budget_usd,
        )
        try:
            run_id = self._record_start(job, task, spec, log_path)
        except Exception:
            # Unrecorded, nobody could ever watch or stop it: it must not run on.
            process.kill("its start could not be recorded", grace_s=0.0)
            raise
        notify_safely(lambda: self.notifier.on_task_changed(task, f"{job.stage} started"))
        return _Live(
            job,
            task,
            run_id,
            process,
            timeout_s,
            budget=RunBudgetWatch(spec, result_file_for(log_path)),
        )

    def _record_start(self, job: Job, task: Task, spec: AgentSpec, log_path: Path) -> int:
        """Record a spawned job's process, its limits, its run and the event; the run's
        id (``job`` carries what was spawned)."""
        with self.store.transaction() as tx:
            tx.set_job_process(
                job.id,
                pid=job.pid,
                start_sha=job.start_sha,
                pid_start=job.pid_start,
                # Stored, so an engine adopting the job after a restart keeps them.
                timeout_s=job.timeout_s,
                budget_usd=job.budget_usd,
            )
            run_id = tx.insert_agent_run(
                job_id=job.id,
                task_id=task.id,
                agent=spec.name,
                model=spec.config.model,
                effort=spec.config.effort,
                attempt=job.attempt,
                log_path=str(log_path),
            )
            tx.add_event(
                EventKind.JOB_STARTED,
                actor=ACTOR,
                task_id=task.id,
                job_id=job.id,
                to_stage=job.stage,
                reason=f"{spec.kind} {spec.name} pid {job.pid}, attempt {job.attempt}",
            )
        return run_id

    def _start_failed(
        self,
        job: Job,
        task: Task,
        log_path: Path,
        spec: AgentSpec | None,
        reason: str,
        *,
        failure: FailureKind = FailureKind.LAUNCH_FAILED,
    ) -> _Live:
        """Record a job that could not start; ``failure=ENVIRONMENT`` (an unusable agent
        configuration) sends the task to a person instead of retrying it."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"[orch: {reason}]\n", encoding="utf-8")
        with self.store.transaction() as tx:
            run_id = tx.insert_agent_run(
                job_id=job.id,
                task_id=task.id,
                agent=job.agent,
                model=spec.config.model if spec else "",
                effort=spec.config.effort if spec else "",
                attempt=job.attempt,
                log_path=str(log_path),
            )
        return _Live(job, task, run_id, None, 0.0, start_error=reason, failure=failure)

    def _command(
        self, spec: AgentSpec, job: Job, task: Task, log_path: Path
    ) -> tuple[list[str], dict[str, str], str | None]:
        log_dir = log_path.parent
        worktree = Path(task.worktree)
        stage_config = self.settings.stage_config(Path(task.repository), job.stage)
        docs = artifact_dir(task.work_item)
        template = None
        if stage_config.prompt:
            template = Path(task.repository) / stage_config.prompt
        prompt = render_prompt(
            job.stage,
            {
                "role": {"analysis": "analyst", "architecture": "architect"}.get(
                    job.stage, "developer" if job.stage == "development" else "engineer"
                ),
                "work_item": task.work_item,
                "title": task.title,
                "description": task.description,
                "stage": job.stage,
                "attempt": job.attempt,
                "artifact_dir": docs,
                "worktree": str(worktree),
                "feedback": job.feedback or "",
            },
            template,
        )
        log_dir.mkdir(parents=True, exist_ok=True)
        prompt_file = log_dir / f"{job.id:06d}-{job.stage}-prompt.md"
        prompt_file.write_text(prompt, encoding="utf-8")
        result_file = result_file_for(log_path)
        result_file.unlink(missing_ok=True)
        invocation = build_invocation(
            spec,
            RunContext(job.stage, task.work_item, worktree, prompt, prompt_file, result_file),
        )
        repo_config = self.settings.repo_config(Path(task.repository))
        test_command = repo_config.test_command
        if isinstance(test_command, str):
            test_command = shlex.split(test_command)
        task_vars = {
            "ORCH_WORK_ITEM": task.work_item,
            "ORCH_STAGE": job.stage,
            "ORCH_ATTEMPT": str(job.attempt),
            "ORCH_ROLLBACK_COUNT": str(task.rollback_count),
            "ORCH_ARTIFACT_DIR": docs,
            "ORCH_TASK_TITLE": task.title,
            "ORCH_TASK_DESCRIPTION": task.description,
            "ORCH_PROMPT_FILE": str(prompt_file),
            "ORCH_FEEDBACK": job.feedback or "",
            "ORCH_REPOSITORY": task.repository,
            "ORCH_BRANCH": task.branch,
            "ORCH_BASE_BRANCH": task.base_branch,
        }
        if test_command:
            task_vars["ORCH_TEST_COMMAND"] = json.dumps(test_command)
        if spec.kind == "runner":
            # A runner gets its repository's runner settings as one JSON variable.
            task_vars.update(runner_environment(self.settings, task, job, log_dir))
        # Built from an allow-list, never inherited whole: no secret of ours reaches a job.
        env = job_environment(
            os.environ,
            passthrough=self.settings.agent_env_passthrough,
            secrets=self._secret_values(),
            layers=(invocation.env, spec.config.env, task_vars),
        )
        # The adapter decides how the prompt travels: stdin (None = none) or argv.
        return invocation.argv, env, invocation.stdin

    def _secret_values(self) -> frozenset[str]:
        """``settings.secret_values``, computed once per settings object (it dumps the
        whole model: about 5 % of the engine's CPU per stage-job when asked per job)."""
        cached = self._secrets
        if cached is None or cached[0] is not self.settings:
            cached = self._secrets = (self.settings, self.settings.secret_values)
        return cached[1]

    # --- monitor -----------------------------------------------------------------------
    def _collect(self, *, final: bool = False) -> bool:
        if not self._live:
            return False
        self._enforce_kill_deadlines()
        moved = self._stage_moved_tasks() if not final else set()
        ended: list[tuple[_Live, int | None]] = []
        for job_id, live in list(self._live.items()):
            exit_code: int | None
            if live.process is None:
                exit_code = None
            else:
                if live.task.id in moved and live.process.killed_reason is None:
                    self._stop(live, "the task moved to another stage", FailureKind.LOST_RACE)
                elif (
                    live.process.killed_reason is None and live.process.elapsed_s() > live.timeout_s
                ):
                    self._stop(live, f"timed out after {live.timeout_s:.0f}s", FailureKind.TIMEOUT)
                elif live.process.killed_reason is None and live.budget is not None:
                    over = live.budget.over_budget(live.process.tail_text)
                    if over is not None:
                        self._stop(live, f"{live.job.agent} went {over}", FailureKind.BUDGET)
                exit_code = live.process.poll()
                if exit_code is None:
                    continue
            del self._live[job_id]
            ended.append((live, exit_code))
        errors = [outcome for outcome in _together(self._finish, ended) if outcome is not None]
        if errors:
            raise errors[0]  # the store went away: the others were finalized all the same
        return bool(ended)

    def kill_job(self, job_id: int, reason: str, failure: FailureKind = FailureKind.REAPED) -> bool:
        """Stop one of this engine's running jobs (the reaper's tier 3): SIGTERM now,
        SIGKILL at the grace deadline; the watch pass collects it when it ended. Safe
        from any thread; False if this engine does not watch the job."""
        live = self._live.get(job_id)
        if live is None or live.process is None:
            return False
        self._stop(live, reason, failure)
        return True

    def _stop_grace_s(self) -> float:
        # The launcher kills the job's tree at kill_grace_s; the engine SIGKILLs what is
        # left only if the launcher has not ended LAUNCHER_MARGIN_S later.
        return job_stop_grace_s(self.settings.kill_grace_s)

    def _stop(self, live: _Live, reason: str, failure: FailureKind) -> None:
        """SIGTERM the job's group without waiting (once); schedule its SIGKILL.
        ``failure`` is how the job failed, whatever its exit code says then."""
        assert live.process is not None
        with self._kill_lock:
            if live.process.killed_reason is not None:
                return
            live.failure = failure
            deadline = live.process.terminate(reason, self._stop_grace_s())
            heapq.heappush(self._kill_deadlines, (deadline, live.job.id))

    def _enforce_kill_deadlines(self) -> None:
        """SIGKILL the groups of stopped jobs whose grace deadline has passed."""
        now = time.monotonic()
        while True:
            with self._kill_lock:
                if not self._kill_deadlines or self._kill_deadlines[0][0] > now:
                    return
                _, job_id = heapq.heappop(self._kill_deadlines)
            live = self._live.get(job_id)
            if live is None or live.process is None:
                continue  # it ended within its grace and was collected
            if live.process.force_kill():
                log.warning(
                    "job %s outlived its kill grace; its process group is SIGKILLed", job_id
                )

    def _stage_moved_tasks(self) -> set[int]:
        now = time.monotonic()
        if now - self._last_stage_check < STAGE_CHECK_INTERVAL_S:
            return set()
        self._last_stage_check = now
        # One query for every running job's task, however many run (decision 0028).
        states = self.store.task_stages({live.task.id for live in self._live.values()})
        moved = set()
        for live in self._live.values():
            stage, failed = states.get(live.task.id, ("", True))  # gone: moved for good
            if stage != live.job.stage or failed:
                moved.add(live.task.id)
        return moved

    def _finish(
        self,
        live: _Live,
        exit_code: int | None,
        *,
        claim_from: str = "running",
        output: str | None = None,
    ) -> None:
        job, task = live.job, live.task
        if output is None:
            output = live.process.tail_text() if live.process else ""
        log_path = live.process.log_path if live.process else None
        outcome = job_outcome(
            self.settings, job.agent, task.repository, job.stage, output, exit_code, log_path
        )
        usage = outcome.usage
        facts = runner_facts(output)
        killed = live.process.killed_reason if live.process else None
        failure = live.failure
        if exit_code == -1 and killed is None and live.start_error is None:
            killed = "the job ended without recording an exit code (killed)"
            failure = FailureKind.KILLED
        elif killed is None and live.start_error is None and outcome.error:
            failure = FailureKind.AGENT_ERROR
        with self.store.transaction() as tx:
            if not tx.set_job_status_cas(job.id, claim_from, "finalizing"):
                return  # someone else (a reaper, another engine) already took it
            tx.record_exit(
                live.run_id,
                exit_code=exit_code if exit_code is not None else -1,
                model=usage.model if usage else None,
                input_tokens=usage.input_tokens if usage else 0,
                output_tokens=usage.output_tokens if usage else 0,
                cost_usd=usage.cost_usd if usage else 0.0,
                num_turns=usage.num_turns if usage else None,
            )
            tx.add_event(
                EventKind.JOB_KILLED if killed else EventKind.JOB_EXITED,
                actor=ACTOR,
                task_id=task.id,
                job_id=job.id,
                to_stage=job.stage,
                reason=killed or live.start_error or outcome.error or f"exit code {exit_code}",
                data={
                    "exit_code": exit_code,
                    **outcome.event_data(),
                    **facts,
                },
            )
        error = killed or live.start_error or outcome.error
        self.finalizer.finalize(job, exit_code, error, output, failure=failure)
