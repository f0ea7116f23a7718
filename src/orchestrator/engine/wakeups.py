"""Wake-ups pushed to an idle instance: work moved anywhere starts without a poll.

On PostgreSQL every transaction that moves work (an event, an enqueued job, an outbox
message) sends ``NOTIFY orch_jobs`` (at commit, to every instance of the database, the
sender included). :class:`JobWakeups` is a supervised loop of ``orch serve``
(``wakeups``, on every instance, not only the leader) that listens and pokes the
store's :class:`~orchestrator.store.activity.Activity` for each notification: the
engine wakes (it listens to the Activity) and so do the maintenance loops sleeping
through a quiet time. While it listens the engine, idle (nothing running, no crossing),
polls only every ``ENGINE_IDLE_POLL_S`` instead of every tick: that slow poll is the
fallback for a notification that never arrives.

A notification is lost when the listening connection drops (nobody listens until it is
back). Then the loop raises, ``wakeups_pushed`` goes false and the engine is woken (it
polls every tick again), the supervisor restarts the loop with its backoff, and the
reconnected listener pokes once for whatever moved meanwhile. SQLite has no listener:
a commit in this process pokes the Activity directly, and the idle engine watches the
database file's change stamp for another process's commits (engine/core.py).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final

from orchestrator.store import Store
from orchestrator.store.notify import JobListener

if TYPE_CHECKING:
    from orchestrator.engine.core import Engine

__all__ = ["LISTEN_TIMEOUT_S", "JobWakeups"]

# How long one wait for a notification lasts before the stop event is looked at again.
LISTEN_TIMEOUT_S: Final = 1.0


class JobWakeups:
    """Listens for enqueued jobs and wakes ``engine``; a supervised loop body."""

    def __init__(self, store: Store, engine: Engine) -> None:
        self.listener = JobListener(store)
        self.store = store
        self.engine = engine
        self.received = 0

    def run(self, stop: threading.Event) -> None:
        """Listen until ``stop``; a dropped connection raises (the supervisor restarts
        the loop), and the engine polls every tick until the listener is back."""
        try:
            self.listener.connect()
            self.engine.wakeups_pushed = True
            self.store.activity.poke()  # whatever moved while nobody listened
            while not stop.is_set():
                if self.listener.wait(LISTEN_TIMEOUT_S):
                    self.received += 1
                    self.store.activity.poke()  # the engine and the idle loops wake
        finally:
            self.engine.wakeups_pushed = False
            self.engine.wake()  # its slow wait ends: it polls every tick until we are back
            self.listener.close()
