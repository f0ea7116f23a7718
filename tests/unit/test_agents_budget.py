"""The per-task cost budget's decision: what counts as spent, when to stop. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.lifecycle.budget import TaskSpend, budget_stop_reason, task_spend
from orchestrator.store import AgentRun, Event


def run(cost: float, started_at: float) -> AgentRun:
    return AgentRun(
        id=1,
        job_id=1,
        task_id=1,
        agent="claude",
        model="m",
        effort="",
        attempt=1,
        exit_code=0,
        exit_recorded_at=started_at + 1,
        input_tokens=0,
        output_tokens=0,
        cost_usd=cost,
        num_turns=1,
        log_path="x.log",
        started_at=started_at,
    )


def event(kind: str, created_at: float) -> Event:
    fields: dict[str, Any] = {
        "id": 1,
        "task_id": 1,
        "job_id": None,
        "kind": kind,
        "actor": "cli",
        "from_stage": None,
        "to_stage": "development",
        "reason": "",
        "data": None,
        "created_at": created_at,
    }
    return Event(**fields)


def test_every_run_counts_until_a_person_retries() -> None:
    runs = [run(0.25, 10), run(0.5, 20), run(1.0, 40)]
    assert task_spend(runs, [event("task.approved", 15)]) == TaskSpend(1.75, None)
    after_retry = task_spend(runs, [event("task.retried", 15), event("task.retried", 30)])
    assert after_retry == TaskSpend(1.0, 30)


@pytest.mark.parametrize(
    ("budget", "spent", "stops"),
    [(0.0, 100.0, False), (1.0, 0.99, False), (1.0, 1.0, True), (1.0, 1.5, True)],
)
def test_the_budget_stops_once_reached_and_zero_means_no_limit(
    budget: float, spent: float, stops: bool
) -> None:
    assert (budget_stop_reason(budget, TaskSpend(spent), "T-1") is not None) is stops


def test_the_reason_says_what_was_spent_and_what_to_do() -> None:
    assert budget_stop_reason(2.0, TaskSpend(2.345, since=50.0), "PROJ-9") == (
        "cost budget $2.00 reached ($2.35 spent since its last retry); raise task_budget_usd "
        "in orch.toml, or run `orch task retry PROJ-9` to allow another $2.00"
    )
