"""The effect journal: every side effect is an intent before it runs and a completion after.

Theory of operation
-------------------
:meth:`Journal.run` performs one effect under a held lease:

1. **Wait for what still runs.** While the process of an unfinished intent still runs
   in the task's repository (left by a killed server, or another task's deploy), the
   effect waits (:class:`EffectInFlightError`, the transition defers): it may yet
   complete, and deploys of one repository must not overlap.
2. **World first.** ``effect.observe()`` asks the world whether the effect already
   happened (is the branch merged? is the target commit deployed?). If so, the journal
   records it as done (``reconciled``) and nothing runs.
3. **Never blindly re-run.** If an earlier epoch left an intent without a completion and
   the world cannot tell (``UNKNOWN``), the effect fails closed with a reason for a human.
4. **Intent, perform, completion.** The intent row (idempotency key
   ``task:transition:effect:epoch``) is written, fenced by the lease epoch, before the
   effect runs; the completion after it, fenced again. A zombie owner whose lease was
   reclaimed fails the fence and neither runs nor completes anything.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from orchestrator.effects.leases import Lease, LeaseManager
from orchestrator.errors import OrchestratorError
from orchestrator.kernel.events import EventKind
from orchestrator.procs.proc import pid_alive, start_ticks
from orchestrator.store import Store
from orchestrator.store.effects import (
    INTENT,
    EffectRows,
    close_intent,
    close_intents,
    open_intent_epochs,
    record_effect,
    set_intent_result,
)

__all__ = [
    "Effect",
    "EffectFailedError",
    "EffectInFlightError",
    "Journal",
    "Observation",
    "Seen",
]


class Seen(enum.Enum):
    DONE = "done"
    NOT_DONE = "not_done"
    UNKNOWN = "unknown"  # the world cannot tell (e.g. a deploy without a check command)


@dataclass(frozen=True)
class Observation:
    seen: Seen
    result: Mapping[str, Any] = field(default_factory=dict)


class Effect(Protocol):
    """A side effect the product performs at most once per transition."""

    name: str

    def observe(self) -> Observation:
        """Look at the world: has this effect already happened?"""
        ...

    def perform(self, on_spawn: Callable[[int], None]) -> Mapping[str, Any]:
        """Do it; return facts for the journal (e.g. the merge commit).

        An effect that runs a process calls ``on_spawn(pid)`` once it started, so that
        recovery after a crash waits for that process instead of starting another.
        """
        ...


class EffectFailedError(OrchestratorError):
    """An effect failed or cannot safely be resumed; a human must look."""


class EffectInFlightError(OrchestratorError):
    """An earlier attempt's process is still running the effect: wait, do not re-run."""


class Journal:
    """Runs effects under a lease and records them."""

    def __init__(self, store: Store, leases: LeaseManager) -> None:
        self.store = store
        self.leases = leases

    def run(
        self, lease: Lease, task_id: int, transition: str, effect: Effect, *, actor: str
    ) -> Mapping[str, Any]:
        self._wait_for_in_flight(task_id, transition, effect.name)
        observed = effect.observe()
        # An inert lease (kill-switch off) fences nothing; its rows never collide.
        epoch = f"inert-{uuid.uuid4().hex}" if lease.inert else str(lease.epoch)
        key = f"{task_id}:{transition}:{effect.name}:{epoch}"
        record = partial(
            record_effect,
            key=key,
            task_id=task_id,
            transition=transition,
            name=effect.name,
            lease_epoch=lease.epoch,
            actor=actor,
        )
        if observed.seen is Seen.DONE:
            with self.store.transaction() as tx:
                self.leases.check(tx, lease)
                close_intents(tx, task_id, transition, effect.name, "done in the world")
                record(tx, status="done", result={**observed.result, "reconciled": True})
            return observed.result
        with self.store.transaction() as tx:
            self.leases.check(tx, lease)
            unfinished = open_intent_epochs(tx, task_id, transition, effect.name)
            if unfinished and observed.seen is Seen.UNKNOWN:
                reason = (
                    f"{effect.name} may or may not have run (interrupted at epoch "
                    f"{unfinished[-1]}); check it by hand, then `orch task retry`"
                )
                close_intents(tx, task_id, transition, effect.name, reason)
                tx.add_event(
                    EventKind.EFFECT_UNCERTAIN,
                    actor=actor,
                    task_id=task_id,
                    reason=reason,
                    data={"effect": effect.name, "transition": transition},
                )
                uncertain = EffectFailedError(reason)
            else:
                uncertain = None
                close_intents(tx, task_id, transition, effect.name, "resumed")
                record(tx, status=INTENT)
        if uncertain is not None:
            raise uncertain
        # Fence once more right before acting: a zombie resumed here must not act.
        with self.store.transaction() as tx:
            self.leases.check(tx, lease)
        try:
            result = dict(effect.perform(lambda pid: self._record_process(key, pid)))
        except Exception as exc:
            with self.store.transaction() as tx:
                close_intent(tx, key, status="failed", error=str(exc)[:2000])
            raise EffectFailedError(f"{effect.name} failed: {exc}") from exc
        with self.store.transaction() as tx:
            self.leases.check(tx, lease)
            close_intent(tx, key, status="done", result=result)
            tx.add_event(
                EventKind.EFFECT_DONE,
                actor=actor,
                task_id=task_id,
                reason=f"{effect.name} done",
                data={"effect": effect.name, "transition": transition, **result},
            )
        return result

    def _record_process(self, key: str, pid: int) -> None:
        """Remember which process performs the effect, so recovery can wait for it."""
        with self.store.transaction() as tx:
            set_intent_result(tx, key, {"pid": pid, "pid_start": start_ticks(pid)})

    def _wait_for_in_flight(self, task_id: int, transition: str, name: str) -> None:
        """An interrupted intent whose process still runs: the effect may yet complete.

        Any effect process still running in the task's repository counts, not only this
        task's own: a deploy left running by a killed server must end before another
        task's deploy starts, or the older commit could land last.
        """
        for row in EffectRows(self.store).open_intents_in_repository_of(task_id):
            process = row["result"] or {}
            pid = process.get("pid")
            if pid and pid_alive(pid) and start_ticks(pid) in (None, process.get("pid_start")):
                own = (row["id"], row["transition"], row["effect"]) == (task_id, transition, name)
                what = f"{row['effect']} of " + (
                    f"epoch {row['lease_epoch']}"
                    if own
                    else f"{row['work_item']} (epoch {row['lease_epoch']})"
                )
                raise EffectInFlightError(f"{name} waits: {what} is still running (pid {pid})")

    def history(self, task_id: int) -> list[dict[str, Any]]:
        """Every journal row of a task, oldest first."""
        return EffectRows(self.store).of_task(task_id)

    def pending(self) -> list[dict[str, Any]]:
        """Intents without a completion, over all tasks."""
        return EffectRows(self.store).open_intents()
