"""Unit tests of what `orch task show` offers: the gate's document and commands, the retry
command of a failed task, the merge commit of a finished one."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from orchestrator.kernel.stages import JOB_STAGES, STAGE_TRANSITIONS
from orchestrator.lifecycle.next_steps import merge_commit, next_steps
from orchestrator.store import Event, Task

TASK = Task(
    id=7,
    work_item="SVC-42",
    repository="/src/svc",
    title="Add rate limiting",
    description="",
    stage="brd-approval",
    version=3,
    attempt=1,
    rollback_count=0,
    failed_reason=None,
    branch="orch/SVC-42",
    base_branch="main",
    base_sha="0" * 40,
    worktree="/data/worktrees/svc/SVC-42",
    created_at=0.0,
    updated_at=0.0,
)


def event(event_id: int, kind: str, data: dict[str, Any] | None = None) -> Event:
    return Event(event_id, TASK.id, None, kind, "engine", None, None, "", data, 0.0)


def test_at_the_gate_the_brd_and_both_commands() -> None:
    steps = next_steps(TASK, [])
    assert steps.artifact == "/data/worktrees/svc/SVC-42/docs/work-items/SVC-42/01-brd.md"
    assert steps.commands == {
        "approve": "orch task approve SVC-42",
        "reject": "orch task reject SVC-42 --feedback 'what must change'",
    }
    assert steps.merge_commit is None


def test_commands_carry_the_config_and_repository_given_and_are_quoted() -> None:
    steps = next_steps(TASK, [], options=["--config", "/etc/my orch.toml"], repo="/src/my svc")
    assert steps.commands["approve"] == (
        "orch --config '/etc/my orch.toml' task approve SVC-42 --repo '/src/my svc'"
    )


def test_a_failed_task_gets_the_retry_command() -> None:
    failed = replace(TASK, stage="testing", failed_reason="testing gate failed")
    steps = next_steps(failed, [])
    assert steps.commands == {"retry": "orch task retry SVC-42"}
    assert steps.artifact is None


@pytest.mark.parametrize("stage", sorted(STAGE_TRANSITIONS))
def test_commands_are_offered_only_where_the_service_accepts_them(stage: str) -> None:
    for failed in (None, "boom"):
        steps = next_steps(replace(TASK, stage=stage, failed_reason=failed), [])
        if failed and stage in JOB_STAGES:
            assert set(steps.commands) == {"retry"}
        elif not failed and stage == "brd-approval":
            assert set(steps.commands) == {"approve", "reject"}
        else:
            assert steps.commands == {}


def test_done_names_the_last_merge_commit() -> None:
    done = replace(TASK, stage="done")
    events = [
        event(1, "effect.done", {"effect": "merge", "merge_sha": "a" * 40}),
        event(2, "effect.done", {"effect": "deploy"}),
        event(3, "effect.done", {"effect": "merge", "merge_sha": "b" * 40}),
        event(4, "stage.changed"),
    ]
    steps = next_steps(done, events)
    assert steps.merge_commit == "b" * 40
    assert steps.to_dict() == {"artifact": None, "merge_commit": "b" * 40, "commands": {}}
    # A merge found already done records no commit: nothing is made up.
    assert merge_commit([event(1, "effect.done", {"effect": "merge"})]) is None
