"""What a person needs to act on a task: the gate's document, the exact commands, the merge.

:func:`next_steps` is pure: it takes the task and its events trail and says

* at a human gate: the document to read (its path in the task's worktree) and the exact
  commands to approve or reject it;
* on a failed task: the command that retries it (the reason is the task's own);
* on ``done``: the merge commit (from the merge effect's event; None when the merge was
  found already done and no commit was recorded).

``orch task show`` prints these facts and puts them in its ``--json``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from orchestrator.kernel.events import EventKind
from orchestrator.kernel.gates import HUMAN_GATE_ARTIFACTS, artifact_dir
from orchestrator.kernel.stages import DONE, JOB_STAGES, REJECT_TARGET
from orchestrator.store import Event, Task

__all__ = ["MERGE_EFFECT", "NextSteps", "merge_commit", "next_steps"]

MERGE_EFFECT: Final = "merge"
EFFECT_DONE: Final = EventKind.EFFECT_DONE


@dataclass(frozen=True)
class NextSteps:
    """The facts and commands ``orch task show`` offers for a task as it stands."""

    artifact: str | None = None
    merge_commit: str | None = None
    commands: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "merge_commit": self.merge_commit,
            "commands": dict(self.commands),
        }


def merge_commit(events: Sequence[Event]) -> str | None:
    """The commit the task's last merge made on the default branch, if one was recorded."""
    for event in reversed(events):
        data = event.data or {}
        if event.kind == EFFECT_DONE and data.get("effect") == MERGE_EFFECT:
            sha = data.get("merge_sha")
            if isinstance(sha, str) and sha:
                return sha
    return None


def next_steps(
    task: Task,
    events: Sequence[Event],
    *,
    options: Sequence[str] = (),
    repo: str | None = None,
) -> NextSteps:
    """What to look at and what to run next. ``options`` go into every command before
    ``task`` (e.g. ``--config PATH``); ``repo``, when given, follows the work item as
    ``--repo`` (the id alone names tasks in several repositories)."""
    prefix = shlex.join(["orch", *options, "task"])
    ref = shlex.join([task.work_item, *(["--repo", repo] if repo else [])])
    if task.stage == DONE:
        return NextSteps(merge_commit=merge_commit(events))
    if task.failed:
        if task.stage in JOB_STAGES:
            return NextSteps(commands={"retry": f"{prefix} retry {ref}"})
        return NextSteps()
    document = HUMAN_GATE_ARTIFACTS.get(task.stage)
    if document is None:
        return NextSteps()
    commands = {"approve": f"{prefix} approve {ref}"}
    if task.stage in REJECT_TARGET:
        commands["reject"] = f"{prefix} reject {ref} --feedback 'what must change'"
    path = Path(task.worktree) / artifact_dir(task.work_item) / document
    return NextSteps(artifact=str(path), commands=commands)
