"""Who runs the maintenance that must run once: one instance per database.

Theory of operation
-------------------
Several ``orch serve`` instances may share one PostgreSQL database; on SQLite there is
exactly one (decision 0027).

* **SQLite is single-instance.** :func:`hold_single_instance` takes an exclusive
  ``flock`` on a lock file beside the database (``<database>.lock``) and keeps it for
  the life of the process. A second ``orch serve`` on the same file finds it taken and
  is refused with one line naming the holder's pid. The operating system drops the lock
  when the holder dies however it dies (SIGKILL included), so a restart after a crash is
  never refused; the descriptor is not inherited (Python opens it close-on-exec), so a
  job that outlives its server does not keep the lock. The one instance is the leader.
* **PostgreSQL elects a leader.** :class:`Leadership` runs as the supervised ``leader``
  loop: every ``LEADER_RETRY_S`` an instance that does not lead tries
  ``pg_try_advisory_lock`` on a connection of its own
  (:class:`~orchestrator.store.advisory.AdvisoryLock`), and every ``LEADER_CHECK_S``
  the leader checks that it still holds it. The lock is the session's, so it goes when
  the leader's connection does: a leader killed by SIGKILL loses it as soon as the
  server sees the socket close, and another instance takes over at its next try.
* **Led loops.** The maintenance that must run once (reaper, reconciler, worktree
  janitor, inbox, outbox delivery) runs through :meth:`Leadership.led`: its body
  starts when this instance becomes the leader and is asked to stop (its stop event
  set) when it stops being one; meanwhile the loop is on ``standby``. Leadership saves
  work, it does not make anything correct: every write those services make is a claim
  or a compare-and-swap, so two leaders for a moment (a partitioned leader that has
  not noticed yet) do no harm.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Protocol

from orchestrator.errors import ConflictError, first_line
from orchestrator.maintenance.supervisor import Body, Loop
from orchestrator.store import Store, sqlite_path
from orchestrator.store.advisory import AdvisoryLock

__all__ = [
    "LEADER_CHECK_S",
    "LEADER_RETRY_S",
    "LOCK_SUFFIX",
    "Elector",
    "Leadership",
    "SingleInstanceLock",
    "hold_single_instance",
]

log = logging.getLogger("orchestrator.maintenance.leadership")

# How often a follower tries to take the lead.
LEADER_RETRY_S: Final = 2.0
# How often the leader checks that it still holds the lock (a query on its own
# connection; a killed leader's lock goes with its session whatever this is).
LEADER_CHECK_S: Final = 10.0
# How long a led loop waits for leadership before looking at its stop event again.
LEADER_WAIT_S: Final = 1.0

# The lock file sits beside the database: ``orch.db`` -> ``orch.db.lock``.
LOCK_SUFFIX: Final = ".lock"


@dataclass
class SingleInstanceLock:
    """The held lock: released when :meth:`release` is called or the process ends."""

    path: Path
    file: IO[str]

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def hold_single_instance(database_url: str) -> SingleInstanceLock | None:
    """Take the single-instance lock of a SQLite database; None for PostgreSQL (where
    several instances are supported). Raises :class:`ConflictError` when another
    process holds it."""
    database = sqlite_path(database_url)
    if database is None:
        return None
    path = database.with_name(database.name + LOCK_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    # "a+": never truncate before we hold the lock (the holder's pid is in the file).
    file = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "?"
        file.close()
        raise ConflictError(
            f"another orch serve (pid {holder}) already runs on SQLite {database}; SQLite is "
            "single-instance: stop that one first, or use PostgreSQL to run several"
        ) from None
    file.seek(0)
    file.truncate()
    file.write(f"{os.getpid()}\n")
    file.flush()
    return SingleInstanceLock(path, file)


# --- leader election -----------------------------------------------------------------------
class Elector(Protocol):
    """What elects a leader: :class:`~orchestrator.store.advisory.AdvisoryLock`."""

    def try_acquire(self) -> bool: ...

    def still_held(self) -> bool: ...

    def release(self) -> None: ...

    def holder(self) -> str | None: ...


class Leadership:
    """Whether this instance leads, kept current by :meth:`run`; ``elector`` None means
    the only instance (SQLite), which always leads."""

    def __init__(
        self,
        elector: Elector | None,
        *,
        boot_id: str | None = None,
        retry_s: float = LEADER_RETRY_S,
        check_s: float = LEADER_CHECK_S,
    ) -> None:
        self._elector = elector
        self.boot_id = boot_id
        self.retry_s = retry_s
        self.check_s = check_s
        # The led loops' wakes: a lost lead ends their long idle waits too.
        self._wakes: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._leading = threading.Event()
        # The stop events of led bodies running now: set when the lead is lost.
        self._terms: set[threading.Event] = set()
        self.since: float | None = None
        self.changes = 0
        # The election's error last told (None: the last step worked): an outage is one
        # line, not one every retry_s.
        self._failing: str | None = None
        if elector is None:
            self._gain()

    @classmethod
    def for_store(cls, store: Store, boot_id: str) -> Leadership:
        """An advisory-lock election on PostgreSQL (the lock's session named by this
        instance's ``boot_id``); the only instance on SQLite."""
        if store.engine.dialect.name == "postgresql":
            return cls(AdvisoryLock(store, name=boot_id), boot_id=boot_id)
        return cls(None, boot_id=boot_id)

    @property
    def elected(self) -> bool:
        """Whether an election runs (PostgreSQL), rather than one instance leading."""
        return self._elector is not None

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    def status(self) -> dict[str, Any]:
        """For ``GET /status``: whether this instance leads, since when, how it was chosen,
        and how many times it gained or lost the lead."""
        return {
            "is_leader": self.is_leader,
            "elected_at": self.since,
            "election": "advisory-lock" if self.elected else "single-instance",
            "changes": self.changes,
            "leader_boot_id": self.leader_boot_id(),
        }

    def leader_boot_id(self) -> str | None:
        """The boot id of the instance that leads now, whichever it is (None: nobody
        holds the lock, or it cannot be read)."""
        if self.is_leader:
            return self.boot_id
        if self._elector is None:
            return None
        try:
            return self._elector.holder()
        except Exception as exc:
            log.warning("cannot read who leads: %s", first_line(exc))
            return None

    # --- the leader loop -------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Try to lead (or check that we still do) every ``retry_s`` until ``stop``; the
        lead is given up when this loop ends, however it ends."""
        try:
            while not stop.is_set():
                self.check()
                stop.wait(self.check_s if self.is_leader else self.retry_s)
        finally:
            if self._elector is not None:
                self._lose("this instance is stopping", level=logging.INFO)
                with contextlib.suppress(Exception):
                    self._elector.release()

    def check(self) -> None:
        """One election step: a follower tries to take the lead, the leader checks it
        still has it. A database error is logged once until the step works again, or the
        error changes; the next step tries again."""
        if self._elector is None:
            return
        if self.is_leader:
            if not self._elector.still_held():
                self._lose("the leader lock's connection dropped")
            return
        try:
            won = self._elector.try_acquire()
        except Exception as exc:
            said = first_line(exc)
            if said != self._failing:
                log.warning("leader election: %s", said)
            self._failing = said
            return
        self._failing = None
        if won:
            self._gain()

    def _gain(self) -> None:
        with self._lock:
            self.since = time.time()
            self.changes += 1
            self._leading.set()
        log.info("this instance leads the maintenance now")

    def _lose(self, why: str, *, level: int = logging.WARNING) -> None:
        with self._lock:
            was = self._leading.is_set()
            self._leading.clear()
            self.since = None
            for term in self._terms:
                term.set()
            wakes = list(self._wakes)
        for wake in wakes:
            wake()
        if was:
            self.changes += 1
            log.log(level, "this instance no longer leads the maintenance: %s", why)

    # --- led loops ---------------------------------------------------------------------
    def led(self, body: Body) -> Body:
        """``body`` run only while this instance leads: started when it becomes the
        leader, its stop event set when it stops being one or when ``stop`` is set."""

        def led_body(stop: threading.Event) -> None:
            while not stop.is_set():
                if not self._leading.wait(LEADER_WAIT_S):
                    continue
                term = threading.Event()
                with self._lock:
                    self._terms.add(term)
                    leading = self._leading.is_set()
                try:
                    if leading and not stop.is_set():
                        body(term)
                finally:
                    with self._lock:
                        self._terms.discard(term)

        return led_body

    def led_loop(self, loop: Loop) -> Loop:
        """``loop`` run through :meth:`led`, shown ``standby`` while another leads."""
        wake = loop.wake
        if wake is not None:
            with self._lock:
                self._wakes.append(wake)

        def wake_led() -> None:
            self.end_led()
            if wake is not None:
                wake()

        return Loop(loop.name, self.led(loop.body), wake=wake_led, active=lambda: self.is_leader)

    def end_led(self) -> None:
        """Set every led body's stop event (at shutdown: the supervisor's wake)."""
        with self._lock:
            for term in self._terms:
                term.set()
