"""Applying stage changes: the compare-and-swap write plus what must go with it.

:func:`advance_stage` is how every actor (engine, CLI, API, reaper, reconciler) moves a
task: inside the caller's transaction it performs :meth:`Tx.update_task_stage_cas`,
enqueues the new stage's job and appends the event, so either all of it happens or none
does. A lost race returns False and the caller performs no side effect.

:func:`enter_transition` is the side-effectful variant (``deploy -> done`` merges and
deploys): it takes the task's transition lease, runs each effect through the journal,
then writes the stage fenced by the lease epoch. A second actor that finds a live owner
defers without starting anything.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.agents import resolve_agent
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.feedback import post_deploy_feedback
from orchestrator.journal import EffectFailedError, EffectInFlightError, Journal
from orchestrator.kernel.events import EventKind
from orchestrator.kernel.gates import ARTIFACT_ROOT
from orchestrator.kernel.stages import (
    JOB_STAGES,
    ROLLBACK_TARGET,
    TERMINAL_STAGES,
    check_transition,
)
from orchestrator.leases import Lease, LeaseLostError, LeaseManager, Owner
from orchestrator.monitor import pending_rollback, report_of, rollback_effects, watch_deploy
from orchestrator.notifier import Notifier, NullNotifier, notify_safely
from orchestrator.outbox import enqueue_card_updates
from orchestrator.settings import Settings, in_scope
from orchestrator.side_effects import deploy_effect, effects_for
from orchestrator.store import Store, Task, Tx
from orchestrator.worktrees import ensure_worktree, release_quietly

__all__ = [
    "Crossing",
    "EventKind",
    "JobPlan",
    "Runtime",
    "advance_stage",
    "artifact_dir",
    "enter_transition",
    "lease_enabled",
    "plan_job",
]


@dataclass(frozen=True)
class JobPlan:
    kind: str
    agent: str


def artifact_dir(work_item: str) -> str:
    """Where a work item's documents live, relative to the worktree."""
    return f"{ARTIFACT_ROOT}/{work_item}"


def lease_enabled(settings: Settings, repository: str) -> bool:
    """The transition-lease kill-switch and its repository scope."""
    return settings.transition_lease_enabled and in_scope(
        settings.transition_lease_repos, Path(repository)
    )


def plan_job(settings: Settings, repository: str, stage: str) -> JobPlan:
    """Which agent (or runner) works on ``stage`` for this repository."""
    stage_config = settings.stage_config(Path(repository), stage)
    spec = resolve_agent(settings, stage_config.agent or "claude")
    return JobPlan(kind=spec.kind, agent=spec.name)


def advance_stage(
    tx: Tx,
    settings: Settings,
    task: Task,
    expected: str,
    new: str,
    *,
    actor: str,
    reason: str,
    attempt: int = 1,
    rollback_count: int | None = None,
    feedback: str | None = None,
    delay_s: float = 0.0,
    event_kind: str = EventKind.STAGE_CHANGED,
    clear_failure: bool = False,
    data: Mapping[str, Any] | None = None,
) -> bool:
    """CAS the stage from ``expected`` to ``new`` and enqueue its job; False if lost."""
    pipeline = settings.pipeline_for(Path(task.repository))
    check_transition(expected, new, pipeline)
    if not tx.update_task_stage_cas(
        task.id,
        expected,
        new,
        attempt=attempt,
        rollback_count=rollback_count,
        clear_failure=clear_failure,
        # Kill-switch off: the CAS degenerates to the old unconditional write.
        unconditional=not lease_enabled(settings, task.repository),
    ):
        return False
    tx.add_event(
        event_kind,
        actor=actor,
        task_id=task.id,
        from_stage=expected,
        to_stage=new,
        reason=reason,
        data=dict(data) if data is not None else None,
    )
    # The live card's outbox row commits with the move, or not at all.
    enqueue_card_updates(tx, settings, task.id, f"{expected} -> {new}: {reason}")
    if new in JOB_STAGES:
        enqueue_stage_job(
            tx,
            settings,
            task,
            new,
            attempt=attempt,
            actor=actor,
            feedback=feedback,
            delay_s=delay_s,
            card=False,
        )
    return True


def enqueue_stage_job(
    tx: Tx,
    settings: Settings,
    task: Task,
    stage: str,
    *,
    attempt: int,
    actor: str,
    feedback: str | None = None,
    delay_s: float = 0.0,
    card: bool = True,
) -> int:
    """Queue the job of ``stage`` for ``task`` and record it (and, unless ``card`` is
    False because the caller wrote it already, the live card's outbox row)."""
    plan = plan_job(settings, task.repository, stage)
    job_id = tx.enqueue_job(
        task_id=task.id,
        stage=stage,
        kind=plan.kind,
        agent=plan.agent,
        attempt=attempt,
        feedback=feedback,
        delay_s=delay_s,
    )
    tx.add_event(
        EventKind.JOB_ENQUEUED,
        actor=actor,
        task_id=task.id,
        job_id=job_id,
        to_stage=stage,
        reason=f"{plan.kind} {plan.agent}, attempt {attempt}"
        + (f", in {delay_s:.0f}s" if delay_s >= 1 else ""),
    )
    if card:
        enqueue_card_updates(tx, settings, task.id, f"{stage}: attempt {attempt}")
    return job_id


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


def _advance_fenced(
    runtime: Runtime,
    lease: Lease,
    task: Task,
    expected: str,
    new: str,
    **how: Any,
) -> bool:
    """``advance_stage`` in a transaction fenced by the lease epoch; False if lost."""
    try:
        with runtime.store.transaction() as tx:
            runtime.leases.check(tx, lease)
            if not advance_stage(tx, runtime.settings, task, expected, new, **how):
                raise _LostRace
    except _LostRace:
        return False
    return True


def _fail_closed(
    runtime: Runtime, lease: Lease, task: Task, reason: str, *, actor: str
) -> Crossing:
    """Fail the task where it stands, for a human, with the reason (fenced), and alert."""
    with runtime.store.transaction() as tx:
        runtime.leases.check(tx, lease)
        tx.update_task_counters(task.id, expected_stage=task.stage, failed_reason=reason)
        tx.add_event(
            EventKind.FAILED, actor=actor, task_id=task.id, to_stage=task.stage, reason=reason
        )
        enqueue_card_updates(tx, runtime.settings, task.id, f"failed: {reason}")
    failed = runtime.store.get_task(task.id)
    notify_safely(lambda: runtime.notifier.alert(failed, f"task failed: {reason}"))
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
    if not _advance_fenced(
        runtime,
        lease,
        task,
        task.stage,
        target,
        actor=actor,
        reason=reason,
        rollback_count=task.rollback_count + 1,
        feedback=post_deploy_feedback(report_of(store, rollback)),
        event_kind=EventKind.ROLLBACK,
    ):
        return Crossing.LOST
    moved = store.get_task(task.id)
    message = f"deploy rolled back, back to {target}: the post-deploy health check failed"
    notify_safely(lambda: runtime.notifier.alert(moved, message))
    notify_safely(lambda: runtime.notifier.on_task_changed(moved, f"{reason} by {actor}"))
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
        if not _advance_fenced(
            runtime,
            lease,
            current,
            expected,
            new,
            actor=actor,
            reason=reason,
            event_kind=event_kind,
        ):
            return Crossing.LOST
        moved = store.get_task(current.id)
        notify_safely(lambda: runtime.notifier.on_task_changed(moved, f"{transition} by {actor}"))
        if moved.stage in TERMINAL_STAGES:
            # The health window is over (it is watched above, before the move): the
            # worktree of the finished task goes now (worktrees.py).
            release_quietly(store, settings, moved.id, actor=actor)
        return Crossing.DONE
    except LeaseLostError as exc:
        with store.transaction() as tx:
            tx.add_event(EventKind.LOST, actor=actor, task_id=task.id, reason=str(exc))
        return Crossing.LOST
    finally:
        runtime.leases.release(lease)
