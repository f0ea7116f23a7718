"""The crossing pool: side-effectful transitions run beside the engine, never in its tick.

Theory of operation
-------------------
A crossing (``deploy -> done``: merge, deploy command, post-deploy health window, and a
rollback when the deploy is unhealthy) can take many minutes. The engine hands it to
this pool and goes on dispatching jobs and enforcing timeouts. The pool is a fixed set
of named daemon threads (``orch-crossing-1`` ...), started on the first crossing, fed
from one queue; at most one crossing per task is in flight in one pool, so this engine
never crosses a task twice at once. *Across* actors (another engine, a webhook, the
CLI) the transition lease and the effect journal stay the only authority: the pool
only keeps this process from competing with itself.

A crossing that raises is logged and ends as ``None`` (the task stays where it was, its
lease is released by :func:`~orchestrator.lifecycle.transitions.enter_transition`'s ``finally``,
and the reconciler completes the crossing later, as after a crash). A worker that dies
(something escaped even that, e.g. a ``BaseException``) still marks its crossing ended;
:meth:`CrossingPool.supervise`, called from the engine's watch pass, logs it and starts
a replacement. The threads are daemons: a process that exits with a crossing in flight
leaves it to the next engine, exactly like a crash (the lease expires, the journal
observes the world before redoing anything).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from orchestrator.lifecycle.transitions import Crossing

__all__ = ["CROSSING_THREAD_PREFIX", "CrossingPool", "CrossingRun"]

log = logging.getLogger("orchestrator.lifecycle.crossings")

CROSSING_THREAD_PREFIX: Final = "orch-crossing"
# How often wait() looks again (it also wakes on every crossing's end).
WAIT_POLL_S: Final = 0.05


@dataclass
class CrossingRun:
    """One crossing handed to the pool: in flight until ``ended`` is set."""

    task_id: int
    work: Callable[[], Crossing]
    # Crossings with the same key (the repository) run one after another.
    key: str | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    # How it ended; None while in flight or when it raised (see ``error``).
    outcome: Crossing | None = None
    error: BaseException | None = None

    def wait(self, timeout_s: float | None = None) -> Crossing | None:
        """The outcome once the crossing ended (None if it raised or is still going)."""
        self.ended.wait(timeout_s)
        return self.outcome


class CrossingPool:
    """A bounded set of named worker threads that run crossings, one per task at once."""

    def __init__(self, size: int, *, name: str = CROSSING_THREAD_PREFIX) -> None:
        if size < 1:
            raise ValueError("a crossing pool needs at least one worker")
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue[CrossingRun | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._workers: list[threading.Thread] = []
        self._in_flight: dict[int, CrossingRun] = {}
        # The latest run of each task, ended or not (for callers that wait on it).
        self._latest: dict[int, CrossingRun] = {}
        # Keys with a crossing queued or running, and the runs parked behind it.
        self._parked: dict[str, collections.deque[CrossingRun]] = {}
        self._started = 0
        self.replaced = 0

    # --- submitting -------------------------------------------------------------------
    def submit(
        self, task_id: int, work: Callable[[], Crossing], *, key: str | None = None
    ) -> CrossingRun | None:
        """Queue ``work`` for ``task_id``; None if a crossing of that task is in flight.

        Runs that share ``key`` (the engine passes the repository) run one after
        another, in the order submitted: two crossings of one repository would only
        defer each other (a merge waits while the repository's deploy runs), and a
        deferred crossing is left for the reconciler's next sweep."""
        with self._lock:
            if task_id in self._in_flight:
                return None
            run = CrossingRun(task_id, work, key)
            self._in_flight[task_id] = run
            self._latest[task_id] = run
            self._ensure_workers()
            if key is not None:
                if key in self._parked:
                    self._parked[key].append(run)  # queued when the one before ends
                    return run
                self._parked[key] = collections.deque()
        self._queue.put(run)
        return run

    def in_flight(self, task_id: int) -> bool:
        with self._lock:
            return task_id in self._in_flight

    def busy_tasks(self) -> set[int]:
        """Tasks with a crossing queued or running in this pool."""
        with self._lock:
            return set(self._in_flight)

    def pending(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def latest(self, task_id: int) -> CrossingRun | None:
        """The last crossing of ``task_id`` handed to this pool, ended or not."""
        with self._lock:
            return self._latest.get(task_id)

    def forget_ended(self) -> list[CrossingRun]:
        """Drop (and return) the ended runs kept for :meth:`latest`."""
        with self._lock:
            ended = [run for run in self._latest.values() if run.ended.is_set()]
            for run in ended:
                del self._latest[run.task_id]
        return ended

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until no crossing is in flight; False if ``timeout_s`` ran out first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            while self._in_flight:
                left = WAIT_POLL_S if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, WAIT_POLL_S))
        return True

    # --- supervision ------------------------------------------------------------------
    def supervise(self) -> int:
        """Replace workers that died; returns how many were replaced."""
        with self._lock:
            dead = [worker for worker in self._workers if not worker.is_alive()]
            if not dead:
                return 0
            for worker in dead:
                log.error("crossing worker %s died; starting a replacement", worker.name)
                self._workers.remove(worker)
            self.replaced += len(dead)
            self._ensure_workers()
            return len(dead)

    def workers(self) -> list[str]:
        """Names of the live workers."""
        with self._lock:
            return [worker.name for worker in self._workers if worker.is_alive()]

    def _ensure_workers(self) -> None:
        # Called with the lock held. Workers start on demand: an engine that never
        # crosses (a test, `orch run` on a pipeline without deploy) starts no thread.
        while len(self._workers) < self.size:
            self._started += 1
            worker = threading.Thread(
                target=self._work, name=f"{self.name}-{self._started}", daemon=True
            )
            self._workers.append(worker)
            worker.start()

    # --- the worker -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            run = self._queue.get()
            if run is None:
                return
            try:
                run.outcome = run.work()
            except Exception as exc:
                # The crossing's own transaction rolled back and its lease was released;
                # the reconciler completes it later, as after a crash.
                log.exception("the crossing of task %s failed", run.task_id)
                run.error = exc
            except BaseException as exc:
                # Something no crossing should raise (SystemExit, a KeyboardInterrupt):
                # this worker ends here; supervise() logs it and starts a replacement.
                run.error = exc
                return
            finally:
                self._end(run)

    def _end(self, run: CrossingRun) -> None:
        with self._changed:
            if self._in_flight.get(run.task_id) is run:
                del self._in_flight[run.task_id]
            if run.key is not None and run.key in self._parked:
                parked = self._parked[run.key]
                if parked:
                    self._queue.put(parked.popleft())
                else:
                    del self._parked[run.key]
            run.ended.set()
            self._changed.notify_all()
