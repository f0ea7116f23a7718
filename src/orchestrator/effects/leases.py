"""The durable transition lease: one owner at a time for a task's side effects.

Theory of operation
-------------------
Before the side-effectful part of a transition (merge, deploy, the final card) an actor
acquires the task's lease. The ``transition_lease`` table has at most one row per task
(its primary key); acquiring is a compare-and-swap on ``lease_epoch`` that increments
it, so every acquisition gets a fresh **fencing token**. Every write made under the
lease (the effect journal, the stage CAS, the release) first checks that the epoch is
still current, so an owner that was paused and resumed (a zombie) cannot complete
anything after someone else reclaimed the lease.

A held lease blocks others only while its owner is **live**:

* same host: the owner's pid is alive, its start time matches the one its instance
  registered (a reused pid does not count) and the instance has not stopped;
* other host: the owner instance's heartbeat (written by a dedicated thread, so a long
  blocking step never starves it) is younger than ``INSTANCE_STALE_S``;
* never longer than ``reaper_max_running_s`` after acquisition: the lease has no TTL of
  its own, the reaper's backstop is its hard ceiling.

A fresh ``boot_id`` per process start makes every lease of an earlier run of this
instance stale, so restart recovery is free: ``reclaim_stale`` releases them.

Kill-switch: with ``transition_lease_enabled = false`` (or a repository outside
``transition_lease_repos``) acquisition returns an inert lease: no row, no fencing, and
the stage CAS degenerates to an unconditional write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.errors import SideEffectsUnderWayError, first_line
from orchestrator.kernel.events import EventKind
from orchestrator.outbox.notifier import Notifier, NullNotifier, notify_safely
from orchestrator.procs.proc import pid_alive, start_ticks
from orchestrator.settings import Settings, in_scope
from orchestrator.store import Store, Task, Tx
from orchestrator.store.leases import (
    LeaseStore,
    lease_for_share,
    lease_row,
    release_lease,
    take_lease,
)

__all__ = [
    "HEARTBEAT_INTERVAL_S",
    "INSTANCE_STALE_S",
    "Heartbeat",
    "Lease",
    "LeaseInfo",
    "LeaseManager",
    "Owner",
]

log = logging.getLogger("orchestrator.effects.leases")

# Six beats fit in INSTANCE_STALE_S: a live instance never looks dead for a missed one.
HEARTBEAT_INTERVAL_S: Final = 5.0
# A cross-host owner whose heartbeat is older than this is dead.
INSTANCE_STALE_S: Final = 30.0


@dataclass(frozen=True)
class Owner:
    """Who holds a lease: instance, host, pid and the boot id of this process start."""

    instance: str
    host: str
    pid: int
    boot_id: str
    pid_start: int | None

    @classmethod
    def current(cls, instance: str | None = None, boot_id: str | None = None) -> Owner:
        host = socket.gethostname()
        pid = os.getpid()
        return cls(
            instance=instance or host,
            host=host,
            pid=pid,
            boot_id=boot_id or uuid.uuid4().hex,
            pid_start=start_ticks(pid),
        )

    def register(self, store: Store) -> None:
        """Record this process start, so others can judge its liveness."""
        now = time.time()
        LeaseStore(store).register_instance(
            {
                "boot_id": self.boot_id,
                "instance": self.instance,
                "host": self.host,
                "pid": self.pid,
                "pid_start": self.pid_start,
                "started_at": now,
                "heartbeat_at": now,
            }
        )

    def beat(self, store: Store) -> None:
        LeaseStore(store).beat(self.boot_id, time.time())

    def stopped(self, store: Store) -> None:
        LeaseStore(store).mark_stopped(self.boot_id, time.time())


class Heartbeat:
    """Keeps this instance's heartbeat fresh: a loop body for the supervisor."""

    def __init__(self, store: Store, owner: Owner, interval_s: float = HEARTBEAT_INTERVAL_S):
        self.store = store
        self.owner = owner
        self.interval_s = interval_s

    def register(self) -> None:
        """Record this instance as alive now (before any loop starts)."""
        self.owner.register(self.store)

    def run(self, stop: threading.Event) -> None:
        """Beat every ``interval_s`` until ``stop``; a missed beat is retried at the next
        one (a database outage must not end the loop, or the instance would look dead
        for the supervisor's backoff too)."""
        missed = False
        while not stop.wait(self.interval_s):
            try:
                self.owner.beat(self.store)
            except Exception as exc:
                if not self.store.is_outage(exc):
                    log.exception("heartbeat failed")
                elif not missed:  # one line when the outage begins, not one a beat
                    log.warning(
                        "heartbeat missed: the database is out of reach (%s)", first_line(exc)
                    )
                missed = True
            else:
                missed = False

    def stopped(self) -> None:
        """Mark this instance stopped: its leases and claims count as a dead owner's."""
        with contextlib.suppress(Exception):
            self.owner.stopped(self.store)


@dataclass(frozen=True)
class Lease:
    """A held lease. ``inert`` when the kill-switch is off: nothing is fenced."""

    task_id: int
    epoch: int
    boot_id: str
    transition: str
    inert: bool = False


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as shown in ``GET /queue``."""

    task_id: int
    work_item: str
    epoch: int
    transition: str | None
    actor: str | None
    owner_instance: str | None
    owner_host: str | None
    owner_pid: int | None
    owner_boot_id: str | None
    acquired_at: float | None
    age_s: float
    live: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LeaseLostError(Exception):
    """A write under a lease found its epoch no longer current: someone reclaimed it."""


class LeaseManager:
    """Acquire, check, release and reclaim transition leases."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        owner: Owner,
        notifier: Notifier | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.settings = settings
        self.owner = owner
        self.notifier: Notifier = notifier or NullNotifier()
        self.clock = clock
        self.rows = LeaseStore(store)

    def enabled_for(self, repository: str) -> bool:
        return self.settings.transition_lease_enabled and in_scope(
            self.settings.transition_lease_repos, Path(repository)
        )

    # --- acquisition ---------------------------------------------------------------------
    def acquire(self, task: Task, transition: str, actor: str) -> Lease | None:
        """The task's lease for this caller, or None while a live owner holds it."""
        if not self.enabled_for(task.repository):
            return Lease(task.id, 0, self.owner.boot_id, transition, inert=True)
        self.rows.ensure_row(task.id)
        reclaimed_from: dict[str, Any] | None = None
        with self.store.transaction() as tx:
            row = lease_row(tx, task.id)
            assert row is not None, "ensure_row made it"
            if row["owner_boot_id"] is not None:
                if self.is_live(row):
                    return None
                reclaimed_from = row
            holder = {
                "transition": transition,
                "actor": actor,
                "owner_instance": self.owner.instance,
                "owner_host": self.owner.host,
                "owner_pid": self.owner.pid,
                "owner_boot_id": self.owner.boot_id,
                "acquired_at": self.clock.now(),
            }
            if not take_lease(tx, task.id, from_epoch=int(row["lease_epoch"]), owner=holder):
                return None
            epoch = int(row["lease_epoch"]) + 1
            if reclaimed_from is not None:
                tx.add_event(
                    EventKind.LEASE_RECLAIMED,
                    actor=actor,
                    task_id=task.id,
                    reason=_describe_owner(reclaimed_from, "stale lease reclaimed from"),
                    data={"epoch": epoch},
                )
        if reclaimed_from is not None:
            message = _describe_owner(reclaimed_from, "stale transition lease reclaimed from")
            notify_safely(lambda: self.notifier.alert(task, message))
        return Lease(task.id, epoch, self.owner.boot_id, transition)

    def is_live(self, row: Any) -> bool:
        """Whether the owner recorded in a lease row is still alive."""
        if row["owner_boot_id"] is None:
            return False
        acquired_at = row["acquired_at"] or 0.0
        if self.clock.now() - acquired_at > self.settings.reaper_max_running_s:
            return False  # the hard ceiling: the reaper's backstop
        return self.instance_alive(row["owner_boot_id"])

    def instance_alive(self, boot_id: str | None) -> bool:
        """Whether the process start ``boot_id`` is still running (see module doc)."""
        if boot_id is None:
            return False
        found = self.rows.instance(boot_id)
        if found is None or found["stopped_at"] is not None:
            return False
        if found["host"] == self.owner.host:
            if not pid_alive(found["pid"]):
                return False
            return found["pid_start"] is None or start_ticks(found["pid"]) in (
                None,
                found["pid_start"],
            )
        return self.clock.now() - float(found["heartbeat_at"]) < INSTANCE_STALE_S

    def host_silent_s(self, host: str) -> float | None:
        """Seconds since any instance on ``host`` last beat; None for this host (alive
        by definition) or a host never seen."""
        if host == self.owner.host:
            return None
        seen = self.rows.host_last_seen(host)
        return None if seen is None else max(0.0, self.clock.now() - seen)

    def refuse_if_held(self, tx: Tx, task: Task, action: str) -> None:
        """Raise :class:`SideEffectsUnderWayError` when a live owner holds the task's
        lease, read inside ``tx`` (the row locked for share on PostgreSQL; SQLite's
        ``BEGIN IMMEDIATE`` serialises writers): a stage change written in ``tx`` then
        either precedes the taker, which reads the stage after taking the lease and
        finds it moved, or sees its lease and waits."""
        row = lease_row(tx, task.id, for_share=True)
        if row is None or row["owner_boot_id"] is None or not self.is_live(row):
            return
        raise SideEffectsUnderWayError(
            f"task {task.work_item} is in {row['transition']} (held by {row['actor']}); "
            f"{action} it when that finishes"
        )

    # --- fencing -------------------------------------------------------------------------
    @staticmethod
    def check(tx: Tx, lease: Lease) -> None:
        """Raise :class:`LeaseLostError` unless ``lease`` is still current (in ``tx``).

        On PostgreSQL the row is locked FOR SHARE, so a concurrent reclaim waits for this
        transaction; SQLite's BEGIN IMMEDIATE already serialises writers.
        """
        if lease.inert:
            return
        row = lease_for_share(tx, lease.task_id)
        if row is None or row != (lease.epoch, lease.boot_id):
            raise LeaseLostError(
                f"transition lease of task {lease.task_id} was reclaimed "
                f"(held epoch {lease.epoch}, now {row[0] if row else 'none'})"
            )

    # --- release -------------------------------------------------------------------------
    def release(self, lease: Lease) -> bool:
        """Release a lease we hold; False if it was already reclaimed (fenced)."""
        if lease.inert:
            return True
        with self.store.transaction() as tx:
            return release_lease(
                tx,
                lease.task_id,
                epoch=lease.epoch,
                owner_boot_id=lease.boot_id,
                at=self.clock.now(),
            )

    def force_release(self, task: Task, *, actor: str, reason: str) -> bool:
        """Release whatever lease the task has, live or not; logged and alerted."""
        with self.store.transaction() as tx:
            row = lease_row(tx, task.id)
            if row is None or row["owner_boot_id"] is None:
                return False
            epoch = int(row["lease_epoch"])
            release_lease(tx, task.id, epoch=epoch, owner_boot_id=None, at=self.clock.now())
            description = _describe_owner(row, "lease force-released from")
            tx.add_event(
                EventKind.LEASE_FORCE_RELEASED,
                actor=actor,
                task_id=task.id,
                reason=f"{description}: {reason}",
                data={"epoch": epoch},
            )
        message = f"transition lease force-released by {actor}: {reason}"
        notify_safely(lambda: self.notifier.alert(task, message))
        return True

    def reclaim_stale(self, *, actor: str) -> list[int]:
        """Release every held lease whose owner is dead; returns the task ids."""
        released = []
        for info in self.held():
            if info.live:
                continue
            task = self.store.get_task(info.task_id)
            if self.force_release(task, actor=actor, reason="owner is gone (stale lease)"):
                released.append(info.task_id)
        return released

    def held(self) -> list[LeaseInfo]:
        """Every held lease, with its owner's liveness (for GET /queue)."""
        now = self.clock.now()
        return [
            LeaseInfo(
                task_id=int(row["task_id"]),
                work_item=str(row["work_item"]),
                epoch=int(row["lease_epoch"]),
                transition=row["transition"],
                actor=row["actor"],
                owner_instance=row["owner_instance"],
                owner_host=row["owner_host"],
                owner_pid=row["owner_pid"],
                owner_boot_id=row["owner_boot_id"],
                acquired_at=row["acquired_at"],
                age_s=round(now - float(row["acquired_at"] or now), 3),
                live=self.is_live(row),
            )
            for row in self.rows.held()
        ]


def _describe_owner(row: dict[str, Any], prefix: str) -> str:
    return (
        f"{prefix} {row.get('actor') or '?'} "
        f"(pid {row.get('owner_pid')} on {row.get('owner_host')}, "
        f"epoch {row.get('lease_epoch')}, {row.get('transition') or 'no transition'})"
    )
