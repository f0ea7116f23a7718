"""Which human actions are legal in which stage: the kernel's table (pure, no I/O).

A person (the CLI, the API, the dashboard, a chat button) may ``approve`` or
``reject`` a task at a human gate, ``retry`` a failed one in a job stage, ``roll back``
one from testing, staging or deploy to development, and ``cancel`` any task that has
not ended. :func:`refusal` says, in one line, why an action is not legal now; the
service checks it before it writes (the task may have moved since a page was drawn).
:func:`allowed_actions` is what a view offers (the dashboard shows only those), read
from the same table, so what a page shows and what the API accepts cannot disagree.
"""

from __future__ import annotations

import enum
from typing import Final

from orchestrator.kernel.stages import (
    HUMAN_GATE_STAGES,
    JOB_STAGES,
    REJECT_TARGET,
    ROLLBACK_TARGET,
    TERMINAL_STAGES,
    Pipeline,
)

__all__ = [
    "APPROVE",
    "CANCEL",
    "HUMAN_ACTIONS",
    "REJECT",
    "RETRY",
    "ROLLBACK",
    "Action",
    "allowed_actions",
    "refusal",
]


class Action(enum.StrEnum):
    """What a person can do to a task, in the order a page shows them."""

    APPROVE = "approve"
    REJECT = "reject"
    RETRY = "retry"
    ROLLBACK = "rollback"
    CANCEL = "cancel"


APPROVE: Final = Action.APPROVE
REJECT: Final = Action.REJECT
RETRY: Final = Action.RETRY
ROLLBACK: Final = Action.ROLLBACK
CANCEL: Final = Action.CANCEL
# Every action a person may take, in the order a page shows them.
HUMAN_ACTIONS: Final[tuple[Action, ...]] = tuple(Action)


def refusal(action: Action, stage: str, failed: bool) -> str | None:
    """Why ``action`` is not legal for a task in ``stage`` (``failed`` or not), worded to
    follow "task <ID> "; None when it is legal."""
    match action:
        case Action.APPROVE | Action.REJECT:
            gates = HUMAN_GATE_STAGES if action is Action.APPROVE else frozenset(REJECT_TARGET)
            if stage not in gates:
                return f"is in {stage}; {action} applies at {', '.join(sorted(gates))}"
            if failed:
                return "has failed; use retry first"
        case Action.RETRY:
            if not failed:
                return "has not failed; nothing to retry"
            if stage not in JOB_STAGES:
                return f"is in {stage}; nothing to retry"
        case Action.ROLLBACK:
            if stage not in ROLLBACK_TARGET:
                return f"is in {stage}; rollback applies from {', '.join(ROLLBACK_TARGET)}"
        case Action.CANCEL:
            if stage in TERMINAL_STAGES:
                return f"is already {stage}"
    return None


def allowed_actions(
    stage: str, *, failed: bool, pipeline: Pipeline | None = None
) -> tuple[Action, ...]:
    """The actions a person may take on a task in ``stage`` now, in page order.

    ``pipeline`` is the repository's skips: a rejection needs the stage that redoes the
    document (the service refuses one whose target is skipped too)."""
    skipped = pipeline.skipped if pipeline is not None else frozenset()
    return tuple(
        action
        for action in Action
        if refusal(action, stage, failed) is None
        and not (action is Action.REJECT and REJECT_TARGET.get(stage) in skipped)
    )
