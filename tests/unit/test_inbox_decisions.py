"""The inbox's pure decisions: what to do with an intent now, and when to retry.

Seen failing: with the lease check dropped from ``decide_intent`` (an intent was applied
while a lease was held) and with ``retry_at`` never giving up.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.kernel.stages import ROLLBACK_TARGET, STAGE_TRANSITIONS, TERMINAL_STAGES
from orchestrator.store import Task
from orchestrator.webhooks.inbox import (
    ACTIONS,
    INBOX_BACKOFF_S,
    INBOX_MAX_ATTEMPTS,
    Action,
    Apply,
    Refuse,
    Wait,
    decide_intent,
    retry_at,
)

TASK = Task(
    id=1,
    work_item="SHOP-1",
    repository="/r",
    title="t",
    description="",
    stage="deploy",
    version=1,
    attempt=1,
    rollback_count=0,
    failed_reason=None,
    branch="orch/SHOP-1",
    base_branch="main",
    base_sha="0" * 40,
    worktree="/w",
    created_at=0.0,
    updated_at=0.0,
)


def legal(action: str, task: Task) -> bool:
    """Whether the action still makes sense for the task, by the kernel's tables."""
    if action == Action.CANCEL:
        return task.stage not in TERMINAL_STAGES
    if action == Action.ROLLBACK:
        return task.stage in ROLLBACK_TARGET
    return task.stage == "deploy" and not task.failed


@given(
    action=st.sampled_from(sorted(ACTIONS)),
    stage=st.sampled_from(sorted(STAGE_TRANSITIONS)),
    failed=st.booleans(),
    held_by=st.none() | st.just("deploy->done (engine)"),
)
def test_an_intent_is_applied_only_when_legal_and_no_live_lease_is_held(
    action: str, stage: str, failed: bool, held_by: str | None
) -> None:
    task = replace(TASK, stage=stage, failed_reason="boom" if failed else None)
    decision = decide_intent(action, task, held_by)
    if not legal(action, task):
        assert isinstance(decision, Refuse)
        assert task.work_item in decision.reason
    elif held_by is not None:
        assert decision == Wait(f"waiting: {held_by} is under way")
    else:
        assert decision == Apply()


def test_an_unknown_action_is_refused() -> None:
    assert decide_intent("merge-twice", TASK, None) == Refuse("unknown action 'merge-twice'")


@given(attempts=st.integers(min_value=0, max_value=50), now=st.floats(0, 1e10))
def test_retry_backs_off_then_gives_up(attempts: int, now: float) -> None:
    at = retry_at(attempts, now)
    if attempts >= INBOX_MAX_ATTEMPTS:
        assert at is None
    else:
        assert at is not None
        assert now + INBOX_BACKOFF_S <= at <= now + 300.0
        later = retry_at(attempts + 1, now)
        assert later is None or later >= at
