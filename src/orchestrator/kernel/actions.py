"""Which human actions are legal on a task as it stands, as data.

A person can ``approve`` or ``reject`` a human gate, ``retry`` a failed job stage,
``cancel`` a task that has not ended, and ``rollback`` a task from a stage whose failure
means the code is wrong. :func:`allowed_actions` reads only the stage graph
(:mod:`orchestrator.kernel.stages`); the service still checks each action when it is
taken (the task may have moved since the page was drawn), and refuses with the same
reasons. The dashboard shows only the actions this function allows. Pure.
"""

from __future__ import annotations

from typing import Final

from orchestrator.kernel.stages import (
    HUMAN_GATE_STAGES,
    JOB_STAGES,
    REJECT_TARGET,
    ROLLBACK_TARGET,
    TERMINAL_STAGES,
    Pipeline,
)

__all__ = ["APPROVE", "CANCEL", "HUMAN_ACTIONS", "REJECT", "RETRY", "ROLLBACK", "allowed_actions"]

APPROVE: Final = "approve"
REJECT: Final = "reject"
RETRY: Final = "retry"
CANCEL: Final = "cancel"
ROLLBACK: Final = "rollback"
# Every action a person may take, in the order a page shows them.
HUMAN_ACTIONS: Final[tuple[str, ...]] = (APPROVE, REJECT, RETRY, ROLLBACK, CANCEL)


def allowed_actions(
    stage: str, *, failed: bool, pipeline: Pipeline | None = None
) -> tuple[str, ...]:
    """The actions of :data:`HUMAN_ACTIONS` a person may take on a task in ``stage``.

    ``failed`` is the task's failure flag; ``pipeline`` the repository's skips (a
    rejection needs the stage that redoes the document).
    """
    skipped = pipeline.skipped if pipeline is not None else frozenset()
    allowed: set[str] = set()
    if stage in HUMAN_GATE_STAGES and not failed:
        allowed.add(APPROVE)
    target = REJECT_TARGET.get(stage)
    if target is not None and not failed and target not in skipped:
        allowed.add(REJECT)
    if failed and stage in JOB_STAGES:
        allowed.add(RETRY)
    if stage in ROLLBACK_TARGET:
        allowed.add(ROLLBACK)
    if stage not in TERMINAL_STAGES:
        allowed.add(CANCEL)
    return tuple(action for action in HUMAN_ACTIONS if action in allowed)
