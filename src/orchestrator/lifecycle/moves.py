"""The lifecycle: the only way a task moves or ends, and the one step after each commit.

Theory of operation
-------------------
Every move of a task — advance, the kernel's retry, a person's retry (resume),
rollback, fail, cancel, reject, budget stop — is one function here. Each runs **inside
the caller's transaction** (so a lease-fenced caller, :mod:`orchestrator.lifecycle.transitions`,
checks its epoch in the same transaction), performs the compare-and-swap, appends the
event and the live card's outbox row, and returns a :class:`Change` describing what
happened, or None when the compare-and-swap lost (the task moved first: the caller
performs no side effect).

After the transaction commits the caller hands the change to :func:`after_commit`, the
single place that tells every listener::

    lifecycle.fail(tx, ...) ──commit──> after_commit(listeners, change)
                                           ├─ notifier.on_task_changed  (card row,
                                           │    tracker write-back, forge status)
                                           ├─ notifier.alert            (if the change
                                           │    carries one: failures, rollbacks)
                                           └─ release the worktree      (the task ended)

The notifier is whatever the composition root connected (:mod:`orchestrator.integrations`:
the console, the Telegram card and alerts, tracker write-back, the forge's commit
status), each writing its own outbox row, so a listener that is down loses nothing.
``tests/integration/test_task_endings.py`` runs every way a task can fail through the
real fakes and checks each listener heard it: a new ending path must come through here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, assert_never, overload

from orchestrator.agents import resolve_agent
from orchestrator.kernel.decisions import Advance, Decision, Fail, Retry, Rollback
from orchestrator.kernel.events import EventKind
from orchestrator.kernel.failures import FailureKind
from orchestrator.kernel.stages import CANCELLED, JOB_STAGES, TERMINAL_STAGES, check_transition
from orchestrator.outbox.delivery import enqueue_card_updates
from orchestrator.outbox.notifier import Notifier, notify_safely
from orchestrator.settings import Settings, in_scope
from orchestrator.store import Store, Task, Tx
from orchestrator.workspace.worktrees import release_quietly

__all__ = [
    "Change",
    "How",
    "JobPlan",
    "Listeners",
    "advance",
    "advance_stage",
    "after_commit",
    "apply_decision",
    "cancel",
    "ended",
    "enqueue_stage_job",
    "fail",
    "lease_enabled",
    "plan_job",
    "record_unhealthy_deploy",
    "reject",
    "resume",
    "retry",
    "roll_back",
    "stop_for_budget",
]


class How(enum.Enum):
    """What a :class:`Change` did to the task."""

    ADVANCED = "advanced"
    RETRIED = "retried"  # the kernel's next attempt in the same stage
    RESUMED = "resumed"  # a person's retry of a failed task
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    BUDGET_STOPPED = "budget-stopped"


@dataclass(frozen=True)
class Change:
    """A committed move of one task, for :func:`after_commit`."""

    task_id: int
    how: How
    summary: str  # what the listeners are told (card line, tracker comment, status)
    actor: str
    alert: str | None = None  # something a person should look at


class Listeners(Protocol):
    """What :func:`after_commit` needs (a ``Runtime``, a ``TaskService``)."""

    @property
    def store(self) -> Store: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def notifier(self) -> Notifier: ...


@dataclass(frozen=True)
class JobPlan:
    kind: str
    agent: str


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


# --- the writes (inside the caller's transaction) ---------------------------------------
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
    """CAS the stage from ``expected`` to ``new`` and enqueue its job; False if lost.

    The low-level write under :func:`advance`, :func:`roll_back`, :func:`cancel` and
    :func:`reject`; callers outside this module use those (they return a Change)."""
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


def advance(
    tx: Tx,
    settings: Settings,
    task: Task,
    expected: str,
    new: str,
    *,
    actor: str,
    reason: str,
    summary: str | None = None,
    event_kind: str = EventKind.STAGE_CHANGED,
) -> Change | None:
    """Move ``task`` forward from ``expected`` to ``new`` (its job queued)."""
    if not advance_stage(
        tx, settings, task, expected, new, actor=actor, reason=reason, event_kind=event_kind
    ):
        return None
    return Change(task.id, How.ADVANCED, summary or f"{expected} -> {new}: {reason}", actor)


def roll_back(
    tx: Tx,
    settings: Settings,
    task: Task,
    expected: str,
    target: str,
    *,
    actor: str,
    reason: str,
    feedback: str,
    alert: str | None = None,
    summary: str | None = None,
    clear_failure: bool = False,
) -> Change | None:
    """Send ``task`` back from ``expected`` to ``target`` with ``feedback`` for the next
    run, one rollback more on its count."""
    if not advance_stage(
        tx,
        settings,
        task,
        expected,
        target,
        actor=actor,
        reason=reason,
        rollback_count=task.rollback_count + 1,
        feedback=feedback,
        event_kind=EventKind.ROLLBACK,
        clear_failure=clear_failure,
    ):
        return None
    return Change(task.id, How.ROLLED_BACK, summary or f"{reason} by {actor}", actor, alert=alert)


def retry(
    tx: Tx,
    settings: Settings,
    task: Task,
    stage: str,
    *,
    attempt: int,
    actor: str,
    reason: str,
    job_id: int | None = None,
    delay_s: float = 0.0,
) -> Change | None:
    """The kernel's next attempt at ``stage``, the failed attempt's reason as feedback."""
    if not tx.update_task_counters(task.id, expected_stage=stage, attempt=attempt):
        return None
    tx.add_event(
        EventKind.RETRY,
        actor=actor,
        task_id=task.id,
        job_id=job_id,
        to_stage=stage,
        reason=f"attempt {attempt}: {reason}",
    )
    enqueue_stage_job(
        tx,
        settings,
        task,
        stage,
        attempt=attempt,
        actor=actor,
        feedback=reason,
        delay_s=delay_s,
    )
    return Change(task.id, How.RETRIED, f"{stage}: retry", actor)


def resume(tx: Tx, settings: Settings, task: Task, *, actor: str) -> Change | None:
    """A person's retry of a failed task: its stage again, with fresh budgets."""
    if not tx.update_task_counters(
        task.id, expected_stage=task.stage, attempt=1, rollback_count=0, clear_failure=True
    ):
        return None
    tx.add_event(
        EventKind.RETRIED,
        actor=actor,
        task_id=task.id,
        to_stage=task.stage,
        reason=f"retried by {actor} after: {task.failed_reason}",
    )
    enqueue_stage_job(
        tx,
        settings,
        task,
        task.stage,
        attempt=1,
        actor=actor,
        feedback=f"previous failure: {task.failed_reason}",
    )
    return Change(task.id, How.RESUMED, "retried", actor)


def fail(
    tx: Tx,
    settings: Settings,
    task: Task,
    reason: str,
    *,
    actor: str,
    stage: str | None = None,
    job_id: int | None = None,
    cause: str = "",
    data: Mapping[str, Any] | None = None,
    how: How = How.FAILED,
    alert: str | None = None,
) -> Change | None:
    """Fail ``task`` where it stands (``stage``, by default its stage as read) for a
    person, with ``reason``; None when it moved meanwhile."""
    where = stage or task.stage
    if not tx.update_task_counters(task.id, expected_stage=where, failed_reason=reason):
        return None
    details = dict(data or {})
    if cause:
        details["cause"] = cause
    tx.add_event(
        EventKind.FAILED,
        actor=actor,
        task_id=task.id,
        job_id=job_id,
        to_stage=where,
        reason=reason,
        data=details or None,
    )
    enqueue_card_updates(tx, settings, task.id, f"failed: {reason}")
    return Change(task.id, how, f"{where}: failed", actor, alert=alert or f"task failed: {reason}")


def record_unhealthy_deploy(
    tx: Tx, task: Task, *, actor: str, reason: str, report: str
) -> int | None:
    """The task's fresh deploy is unhealthy: the verdict (a ``deploy.unhealthy`` event
    with the monitor's ``report``) and, in the same transaction, the task's pending
    rollback naming it (``tasks.pending_rollback``, cleared when the task leaves its
    stage). The verdict's id, the rollback's name; None when the task left its stage
    meanwhile (the caller rolls the transaction back)."""
    rollback = tx.add_event(
        EventKind.DEPLOY_UNHEALTHY,
        actor=actor,
        task_id=task.id,
        reason=reason,
        data={"report": report},
    )
    if not tx.set_pending_rollback(task.id, rollback, expected_stage=task.stage):
        return None
    return rollback


def stop_for_budget(
    tx: Tx,
    settings: Settings,
    task: Task,
    job_id: int,
    stage: str,
    reason: str,
    *,
    actor: str,
    data: Mapping[str, Any],
) -> Change | None:
    """The task's cost budget is spent: its queued job is not started and the task
    fails for a person. None when another actor took the job (or moved the task)."""
    if not tx.set_job_status_cas(
        job_id, "queued", "failed", error=reason, failure_kind=FailureKind.TASK_BUDGET
    ):
        return None
    return fail(
        tx,
        settings,
        task,
        reason,
        actor=actor,
        stage=stage,
        job_id=job_id,
        data=data,
        how=How.BUDGET_STOPPED,
        alert=f"task stopped: {reason}",
    )


def cancel(tx: Tx, settings: Settings, task: Task, *, actor: str, reason: str) -> Change | None:
    """Cancel ``task`` (terminal); its waiting jobs go with it."""
    if not advance_stage(
        tx,
        settings,
        task,
        task.stage,
        CANCELLED,
        actor=actor,
        reason=reason,
        event_kind=EventKind.CANCELLED,
    ):
        return None
    tx.cancel_waiting_jobs(task.id, reason)
    return Change(task.id, How.CANCELLED, "cancelled", actor)


def reject(
    tx: Tx,
    settings: Settings,
    task: Task,
    target: str,
    *,
    actor: str,
    reason: str,
    feedback: str,
    data: Mapping[str, Any],
) -> Change | None:
    """Send a human gate back to ``target`` with the person's ``feedback``."""
    if not advance_stage(
        tx,
        settings,
        task,
        task.stage,
        target,
        actor=actor,
        reason=reason,
        feedback=feedback,
        event_kind=EventKind.REJECTED,
        data=data,
    ):
        return None
    return Change(task.id, How.REJECTED, f"rejected by {actor}, back to {target}", actor)


def apply_decision(
    tx: Tx,
    settings: Settings,
    task: Task,
    job_id: int,
    stage: str,
    decision: Decision,
    *,
    actor: str,
    feedback: str = "",
) -> Change | None:
    """Apply the kernel's decision after a job of ``stage`` (not a crossing with side
    effects: those go through :func:`~orchestrator.lifecycle.transitions.enter_transition`).
    ``feedback`` is what development is told on a rollback."""
    if isinstance(decision, Advance):
        return advance(
            tx,
            settings,
            task,
            stage,
            decision.to_stage,
            actor=actor,
            reason=decision.reason,
            summary=f"{stage}: advance",
        )
    if isinstance(decision, Rollback):
        return roll_back(
            tx,
            settings,
            task,
            stage,
            decision.to_stage,
            actor=actor,
            reason=f"rollback: {decision.reason}",
            feedback=feedback or decision.reason,
            alert=f"rolled back from {stage} to {decision.to_stage}: {decision.reason}",
            summary=f"{stage}: rollback",
        )
    if isinstance(decision, Retry):
        return retry(
            tx,
            settings,
            task,
            stage,
            attempt=decision.attempt,
            actor=actor,
            reason=decision.reason,
            job_id=job_id,
            delay_s=decision.delay_s,
        )
    if isinstance(decision, Fail):
        return fail(
            tx,
            settings,
            task,
            decision.reason,
            actor=actor,
            stage=stage,
            job_id=job_id,
            cause=decision.cause,
        )
    assert_never(decision)


# --- after the commit --------------------------------------------------------------------
def ended(task: Task) -> bool:
    """Whether ``task`` ended (done, cancelled, failed): its worktree may go."""
    return task.failed or task.stage in TERMINAL_STAGES


@overload
def after_commit(listeners: Listeners, change: Change) -> Task: ...


@overload
def after_commit(listeners: Listeners, change: None) -> None: ...


@overload
def after_commit(listeners: Listeners, change: Change | None) -> Task | None: ...


def after_commit(listeners: Listeners, change: Change | None) -> Task | None:
    """Tell every listener about a committed ``change``; the task as it is now.

    Never raises for a listener: each call is :func:`notify_safely`, and the worktree's
    release leaves a failure to the janitor (workspace/worktrees.py). None in, None out, so a
    caller may pass a lost change straight through.
    """
    if change is None:
        return None
    store, settings = listeners.store, listeners.settings
    task = store.get_task(change.task_id)
    notifier = listeners.notifier
    notify_safely(lambda: notifier.on_task_changed(task, change.summary))
    if change.alert is not None:
        message = change.alert
        notify_safely(lambda: notifier.alert(task, message))
    if ended(task):
        # workspace/worktrees.py decides whether it goes now or after its retention.
        release_quietly(store, settings, task.id, actor=change.actor)
    return task
