"""The per-task cost budget: past it, no new agent job starts and a person decides.

Theory of operation
-------------------
``task_budget_usd`` (global, or per repository) caps what a task may spend on agent
runs **since it was created or last retried by a person**. Before the engine starts an
agent job (runners cost nothing and always run) it sums the task's runs in that window;
when the sum has reached the budget the job is not started: it is failed, the task is
marked failed with a reason that says what was spent and what to do, and the notifier
raises an alert. The task then waits, like any failed task, for ``orch task retry``
(which opens a new window: another full budget) after someone raised the budget or
decided the work is worth it.

A run already going is not stopped by the task budget; a run's own ``budget_usd`` does
that (see :class:`orchestrator.agents.RunBudgetWatch`).

:func:`task_spend` and :func:`budget_stop_reason` are pure; :func:`stop_if_over_budget`
applies the decision through :mod:`orchestrator.lifecycle.moves`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from orchestrator.kernel.events import EventKind
from orchestrator.lifecycle import moves as lifecycle
from orchestrator.store import AgentRun, Event, Job, Task

__all__ = ["TaskSpend", "budget_stop_reason", "stop_if_over_budget", "task_spend"]

ACTOR: Final = "engine"


@dataclass(frozen=True)
class TaskSpend:
    """What a task spent in its current budget window."""

    spent_usd: float
    # When the window opened: the last person's retry; None = the task's creation.
    since: float | None = None


def task_spend(runs: Sequence[AgentRun], events: Sequence[Event]) -> TaskSpend:
    """Sum the runs that started since the task's last retry (or all of them)."""
    retries = [event.created_at for event in events if event.kind == EventKind.RETRIED]
    since = max(retries) if retries else None
    spent = sum(run.cost_usd for run in runs if since is None or run.started_at >= since)
    return TaskSpend(round(spent, 6), since)


def budget_stop_reason(budget_usd: float, spend: TaskSpend, work_item: str) -> str | None:
    """Why the task may not start another agent run; None while it is within budget."""
    if budget_usd <= 0 or spend.spent_usd < budget_usd:
        return None
    window = " since its last retry" if spend.since is not None else ""
    return (
        f"cost budget ${budget_usd:.2f} reached (${spend.spent_usd:.2f} spent{window}); "
        f"raise task_budget_usd in orch.toml, or run `orch task retry {work_item}` to allow "
        f"another ${budget_usd:.2f}"
    )


def stop_if_over_budget(runtime: lifecycle.Listeners, job: Job, task: Task | None = None) -> bool:
    """Fail ``job`` and its task if the task is over budget (through the lifecycle, so
    the card, the tracker, the forge status and the alert all hear it); True if it did
    (or lost the job to another actor meanwhile), False when the job may start.
    ``task`` is the job's task if the caller has just read it."""
    store, settings = runtime.store, runtime.settings
    task = task or store.get_task(job.task_id)
    budget = settings.task_budget_for(Path(task.repository))
    if budget <= 0:
        return False
    spend = task_spend(store.task_runs(task.id), store.task_events(task.id))
    reason = budget_stop_reason(budget, spend, task.work_item)
    if reason is None:
        return False
    with store.transaction() as tx:
        change = lifecycle.stop_for_budget(
            tx,
            settings,
            task,
            job.id,
            job.stage,
            reason,
            actor=ACTOR,
            data={"budget_usd": budget, "spent_usd": spend.spent_usd},
        )
    lifecycle.after_commit(runtime, change)
    return True
