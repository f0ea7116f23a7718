"""The store's pulse: when work last moved, so idle loops can sleep until it moves again.

Theory of operation
-------------------
Every write transaction that moves work (an event, an enqueued job, an outbox message, a
webhook intent) marks itself; when it commits, :meth:`Activity.poke` runs in the
committing thread. Three things then happen at once, none of them a query:

* the **listeners** run (the engine's :meth:`~orchestrator.engine.core.Engine.wake`:
  a job enqueued by the API of this process starts without a poll);
* every loop waiting in :meth:`Activity.wait` wakes (a maintenance sweep that slept
  because nothing happened runs now);
* :meth:`Activity.quiet_for` restarts from zero.

Work moved by *another process* reaches this one as a poke too: on PostgreSQL through
``NOTIFY`` (:mod:`orchestrator.engine.wakeups`), on SQLite through the database file's
change stamp (:meth:`~orchestrator.store.store.Store.change_stamp`, watched by the idle
engine). :meth:`Activity.touch` says "work is in flight here" (the engine watches a
running job) without waking the listeners: the loops keep their busy cadence.

The loops use it like this (:func:`orchestrator.maintenance.supervisor.every`): after a
sweep, wait the busy interval while the store moved within ``QUIET_AFTER_S``, else the
long idle interval, ended early by the next poke. Idle, ``orch serve`` then asks the
database almost nothing (docs/benchmarks.md, bench/idle.py); busy, nothing changes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["QUIET_AFTER_S", "Activity"]

# With no work moving for this long, the store counts as quiet (loops slow down).
QUIET_AFTER_S: Final = 30.0


class Activity:
    """When work last moved through one store in this process; wake-ups for the idle."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._changed = threading.Condition()
        self._generation = 0
        self._last = clock()
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (cheap, never raising) on every :meth:`poke`."""
        with self._changed:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        with self._changed:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def poke(self) -> None:
        """Work moved (a commit here, a notification from elsewhere): wake everyone."""
        with self._changed:
            listeners = list(self._listeners)
            self._moved()
        for listener in listeners:
            listener()

    def touch(self) -> None:
        """Work is in flight here: not quiet, and the slow waits end; no listener runs."""
        with self._changed:
            self._moved()

    def _moved(self) -> None:
        self._generation += 1
        self._last = self._clock()
        self._changed.notify_all()

    @property
    def generation(self) -> int:
        """A number that changes whenever work moves (pass it to :meth:`wait`)."""
        with self._changed:
            return self._generation

    def quiet_for(self) -> float:
        """Seconds since work last moved."""
        with self._changed:
            return max(0.0, self._clock() - self._last)

    def rest(
        self,
        since: int,
        *,
        busy_wait: Callable[[float], object],
        interval_s: float,
        idle_interval_s: float,
        next_due: Callable[[], float | None] = lambda: None,
        now: Callable[[], float] = time.time,
    ) -> None:
        """A loop's wait between two sweeps (``since``: the generation read before the
        sweep). While work moves: ``busy_wait(interval_s)`` (the loop's own stop or wake
        event). Once quiet for ``QUIET_AFTER_S``: until work moves after ``since``,
        ``idle_interval_s`` passes, or the loop's next retry is due (``next_due``, a time
        on the ``now`` clock; a retry's backoff is announced by no one)."""
        if self.quiet_for() < QUIET_AFTER_S:
            busy_wait(interval_s)
            return
        due = next_due()
        wait_s = idle_interval_s if due is None else min(idle_interval_s, due - now())
        self.wait(max(wait_s, 0.0), since=since)

    def wait(self, timeout_s: float, since: int | None = None) -> bool:
        """Block until work moves after generation ``since`` (default: now) or
        ``timeout_s`` passes; True when it moved."""
        with self._changed:
            start = self._generation if since is None else since
            return self._changed.wait_for(lambda: self._generation != start, timeout_s)
