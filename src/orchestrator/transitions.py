"""Applying stage changes: the compare-and-swap write plus what must go with it.

:func:`advance_stage` is how every actor (engine, CLI, API) moves a task: inside the
caller's transaction it performs :meth:`Tx.update_task_stage_cas`, enqueues the new
stage's job and appends the event, so either all of it happens or none does. A lost
race returns False and the caller performs no side effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from orchestrator.agents import resolve_agent
from orchestrator.kernel.gates import ARTIFACT_ROOT
from orchestrator.kernel.stages import JOB_STAGES, check_transition
from orchestrator.settings import Settings
from orchestrator.store import Task, Tx

__all__ = ["EventKind", "JobPlan", "advance_stage", "artifact_dir", "plan_job"]


class EventKind:
    """Names of the audit trail's events."""

    TASK_CREATED: Final = "task.created"
    STAGE_CHANGED: Final = "stage.changed"
    JOB_ENQUEUED: Final = "job.enqueued"
    JOB_STARTED: Final = "job.started"
    JOB_EXITED: Final = "job.exited"
    JOB_KILLED: Final = "job.killed"
    JOB_LOST_RACE: Final = "job.lost_race"
    GATE_VERDICT: Final = "gate.verdict"
    RETRY: Final = "job.retry"
    ROLLBACK: Final = "task.rollback"
    FAILED: Final = "task.failed"
    APPROVED: Final = "task.approved"
    CANCELLED: Final = "task.cancelled"
    RETRIED: Final = "task.retried"
    EFFECT: Final = "effect"


@dataclass(frozen=True)
class JobPlan:
    kind: str
    agent: str


def artifact_dir(work_item: str) -> str:
    """Where a work item's documents live, relative to the worktree."""
    return f"{ARTIFACT_ROOT}/{work_item}"


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
    ):
        return False
    tx.add_event(
        event_kind,
        actor=actor,
        task_id=task.id,
        from_stage=expected,
        to_stage=new,
        reason=reason,
    )
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
) -> int:
    """Queue the job of ``stage`` for ``task`` and record it."""
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
    return job_id
