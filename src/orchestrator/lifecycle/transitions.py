"""Transitions with side effects: the lease, the effect journal, then the fenced move.

:func:`enter_transition` is the side-effectful way a task moves (``deploy -> done``
merges and deploys): it takes the task's transition lease, runs each effect through the
journal, then writes the stage fenced by the lease epoch. A second actor that finds a
live owner defers without starting anything. Every write it makes (the move, the
rollback of an unhealthy deploy, failing closed) is a :mod:`orchestrator.lifecycle.moves`
function in a transaction that also checks the lease, and every committed change goes to
:func:`~orchestrator.lifecycle.moves.after_commit`, which tells the listeners.

:func:`advance_stage` (the plain compare-and-swap move) lives in the lifecycle and is
re-exported here for the callers that know it by this name.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.effects.journal import EffectFailedError, EffectInFlightError, Journal
from orchestrator.effects.leases import Lease, LeaseLostError, LeaseManager, Owner
from orchestrator.effects.merge_deploy import deploy_effect, effects_for
from orchestrator.kernel.events import EventKind
from orchestrator.kernel.gates import artifact_dir
from orchestrator.kernel.stages import ROLLBACK_TARGET
from orchestrator.lifecycle import moves as lifecycle
from orchestrator.lifecycle.feedback import post_deploy_feedback
from orchestrator.lifecycle.moves import (
    Change,
    JobPlan,
    advance_stage,
    enqueue_stage_job,
    lease_enabled,
    plan_job,
)
from orchestrator.lifecycle.post_deploy import (
    pending_rollback,
    report_of,
    rollback_effects,
    watch_deploy,
)
from orchestrator.outbox.notifier import Notifier, NullNotifier
from orchestrator.settings import Settings
from orchestrator.store import Store, Task, Tx
from orchestrator.workspace.worktrees import ensure_worktree

__all__ = [
    "Crossing",
    "EventKind",
    "JobPlan",
    "Runtime",
    "advance_stage",
    "artifact_dir",
    "enqueue_stage_job",
    "enter_transition",
    "lease_enabled",
    "plan_job",
]


@dataclass
class Runtime:
    """What every actor of one process shares: store, settings, notifier, lease owner,
    and the clock that judges ages (a fake one in tests)."""

    store: Store
    settings: Settings
    notifier: Notifier
    owner: Owner
    leases: LeaseManager
    journal: Journal
    clock: Clock = SYSTEM_CLOCK

    @classmethod
    def create(
        cls,
        store: Store,
        settings: Settings,
        notifier: Notifier | None = None,
        *,
        boot_id: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Runtime:
        owner = Owner.current(settings.instance_name or None, boot_id)
        owner.register(store)
        chosen: Notifier = notifier or NullNotifier()
        leases = LeaseManager(store, settings, owner, chosen, clock)
        return cls(store, settings, chosen, owner, leases, Journal(store, leases), clock)


class Crossing(enum.Enum):
    """How an attempt to enter a transition ended."""

    DONE = "done"  # effects ran (or were found done) and the stage moved
    ROLLED_BACK = "rolled-back"  # the deploy was unhealthy: undone, back to development
    DEFERRED = "deferred"  # a live owner holds the lease: nothing started
    LOST = "lost"  # the task had moved on, or our lease was reclaimed: nothing written
    FAILED = "failed"  # an effect failed: the task failed closed with the reason


class _LostRace(Exception):
    """Raised inside a transaction to roll it back after a lost compare-and-swap."""


def _fenced(runtime: Runtime, lease: Lease, write: Callable[[Tx], Change | None]) -> Change | None:
    """A lifecycle ``write`` in a transaction fenced by the lease epoch; None if lost
    (nothing of it is committed then)."""
    try:
        with runtime.store.transaction() as tx:
            runtime.leases.check(tx, lease)
            change = write(tx)
            if change is None:
                raise _LostRace
    except _LostRace:
        return None
    return change


def _fail_closed(
    runtime: Runtime, lease: Lease, task: Task, reason: str, *, actor: str
) -> Crossing:
    """Fail the task where it stands, for a human, with the reason (fenced); every
    listener hears it (lifecycle.after_commit)."""
    change = _fenced(
        runtime,
        lease,
        lambda tx: lifecycle.fail(tx, runtime.settings, task, reason, actor=actor),
    )
    if change is None:
        return Crossing.LOST
    lifecycle.after_commit(runtime, change)
    return Crossing.FAILED


def _roll_back_deploy(
    runtime: Runtime, lease: Lease, task: Task, transition: str, rollback: int, *, actor: str
) -> Crossing:
    """Undo an unhealthy deploy (revert, redeploy, reapply: journaled effects), then move
    the task back to development with the monitor's report and alert once; with its
    rollbacks used up, fail it in ``deploy`` for a human instead."""
    store, settings = runtime.store, runtime.settings
    # The reapply commits on the task branch in the task's worktree: a failed task's
    # worktree may have been removed after its retention, so it is made again first.
    ensure_worktree(store, settings, task, actor=actor)
    undo = rollback_effects(
        settings, task, rollback, lambda name: deploy_effect(settings, task, name)
    )
    for effect in undo:
        runtime.journal.run(lease, task.id, transition, effect, actor=actor)
    target = ROLLBACK_TARGET[task.stage]
    if task.rollback_count >= settings.max_rollbacks:
        reason = (
            f"the deploy was unhealthy and is rolled back; the task has used its "
            f"{settings.max_rollbacks} rollbacks (max_rollbacks): look at it, then "
            f"`orch task retry {task.work_item}`"
        )
        return _fail_closed(runtime, lease, task, reason, actor=actor)
    reason = "rollback: the post-deploy health check failed"
    change = _fenced(
        runtime,
        lease,
        lambda tx: lifecycle.roll_back(
            tx,
            settings,
            task,
            task.stage,
            target,
            actor=actor,
            reason=reason,
            feedback=post_deploy_feedback(report_of(store, rollback)),
            alert=f"deploy rolled back, back to {target}: the post-deploy health check failed",
        ),
    )
    if change is None:
        return Crossing.LOST
    lifecycle.after_commit(runtime, change)
    return Crossing.ROLLED_BACK


def enter_transition(
    runtime: Runtime,
    task: Task,
    expected: str,
    new: str,
    *,
    actor: str,
    reason: str,
    event_kind: str = EventKind.STAGE_CHANGED,
) -> Crossing:
    """Move ``task`` from ``expected`` to ``new`` with the transition's side effects.

    Exactly one actor performs the effects: the lease excludes the others while its
    owner lives, the journal checks the world before each effect, and every write is
    fenced by the lease epoch.
    """
    store, settings = runtime.store, runtime.settings
    transition = f"{expected}->{new}"
    lease = runtime.leases.acquire(task, transition, actor)
    if lease is None:
        with store.transaction() as tx:
            tx.add_event(
                EventKind.DEFERRED,
                actor=actor,
                task_id=task.id,
                from_stage=expected,
                to_stage=new,
                reason="another actor holds the transition lease",
            )
        return Crossing.DEFERRED
    try:
        current = store.get_task(task.id)
        if current.stage != expected or current.failed:
            return Crossing.LOST
        try:
            # A deploy found unhealthy is rolled back, however often the crossing is
            # entered again, before anything else (see monitor.py).
            rollback = pending_rollback(store, current) if expected == "deploy" else None
            if rollback is None:
                for effect in effects_for(settings, current, expected, new):
                    runtime.journal.run(lease, current.id, transition, effect, actor=actor)
                if (expected, new) == ("deploy", "done"):
                    rollback = watch_deploy(
                        store, settings, runtime.leases, lease, current, actor=actor
                    )
            if rollback is not None:
                return _roll_back_deploy(runtime, lease, current, transition, rollback, actor=actor)
        except EffectInFlightError as exc:
            with store.transaction() as tx:
                tx.add_event(EventKind.DEFERRED, actor=actor, task_id=current.id, reason=str(exc))
            return Crossing.DEFERRED
        except EffectFailedError as exc:
            return _fail_closed(runtime, lease, current, str(exc), actor=actor)
        change = _fenced(
            runtime,
            lease,
            lambda tx: lifecycle.advance(
                tx,
                settings,
                current,
                expected,
                new,
                actor=actor,
                reason=reason,
                summary=f"{transition} by {actor}",
                event_kind=event_kind,
            ),
        )
        if change is None:
            return Crossing.LOST
        # The health window is over (it is watched above, before the move): a finished
        # task's worktree goes now (after_commit, worktrees.py).
        lifecycle.after_commit(runtime, change)
        return Crossing.DONE
    except LeaseLostError as exc:
        with store.transaction() as tx:
            tx.add_event(EventKind.LOST, actor=actor, task_id=task.id, reason=str(exc))
        return Crossing.LOST
    finally:
        runtime.leases.release(lease)
