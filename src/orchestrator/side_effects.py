"""The side effects of transitions: merge and deploy, each able to look at the world.

``deploy -> done`` performs, under the task's lease and through the journal:

* ``merge``: the task branch into the default branch (observed: is the branch head
  already an ancestor of the default branch?);
* ``deploy``: the repository's ``deploy_command`` with ``ORCH_DEPLOY_COMMIT`` (observed
  through ``deploy_check_command``, which prints the deployed commit; without one an
  interrupted deploy cannot be judged and fails closed).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from orchestrator.git import Repo
from orchestrator.journal import Effect, Observation, Seen
from orchestrator.proc_group import kill_group
from orchestrator.settings import Settings
from orchestrator.store import Task

__all__ = ["TRANSITION_EFFECTS", "DeployEffect", "MergeEffect", "effects_for"]

DEPLOY_TIMEOUT_S: Final = 1800.0


def _argv(command: Sequence[str] | str) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


@dataclass
class MergeEffect:
    """Merge the task branch into the default branch, once."""

    repo: Repo
    task: Task
    name: str = "merge"

    def observe(self) -> Observation:
        head = self.repo.rev(self.task.branch)
        if self.repo.is_ancestor(head, self.task.base_branch):
            return Observation(
                Seen.DONE, {"merged_head": head, "target": self.repo.rev(self.task.base_branch)}
            )
        return Observation(Seen.NOT_DONE)

    def perform(self, on_spawn: Callable[[int], None]) -> Mapping[str, Any]:
        scratch = self.repo.path / ".git" / "orch-merge" / self.task.work_item
        result = self.repo.merge(
            self.task.branch,
            self.task.base_branch,
            f"Merge {self.task.branch}: {self.task.work_item} {self.task.title}",
            scratch,
        )
        return {"merge_sha": result.merge_sha, "already_merged": result.already_merged}


@dataclass
class DeployEffect:
    """Run the repository's deploy command for the default branch's head, once."""

    repo: Repo
    task: Task
    command: list[str]
    check_command: list[str] | None
    name: str = "deploy"

    def _target(self) -> str:
        return self.repo.rev(self.task.base_branch)

    def _env(self, target: str) -> dict[str, str]:
        return {
            **os.environ,
            "ORCH_DEPLOY_COMMIT": target,
            "ORCH_WORK_ITEM": self.task.work_item,
            "ORCH_REPOSITORY": self.task.repository,
        }

    def observe(self) -> Observation:
        if self.check_command is None:
            return Observation(Seen.UNKNOWN)
        target = self._target()
        deployed = self._run(self.check_command, target).strip()
        if deployed and deployed.splitlines()[-1].strip() == target:
            return Observation(Seen.DONE, {"deployed_commit": target})
        return Observation(Seen.NOT_DONE)

    def perform(self, on_spawn: Callable[[int], None]) -> Mapping[str, Any]:
        target = self._target()
        output = self._run(self.command, target, on_spawn)
        return {"deployed_commit": target, "output_tail": output[-500:]}

    def _run(
        self, argv: list[str], target: str, on_spawn: Callable[[int], None] | None = None
    ) -> str:
        process = subprocess.Popen(
            argv,
            cwd=self.repo.path,
            env=self._env(target),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        if on_spawn is not None:
            on_spawn(process.pid)
        try:
            output, _ = process.communicate(timeout=DEPLOY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_group(process.pid)
            process.wait()
            raise RuntimeError(f"{argv[0]} timed out after {DEPLOY_TIMEOUT_S:.0f}s") from None
        if process.returncode != 0:
            last = output.strip().splitlines()[-1] if output.strip() else ""
            raise RuntimeError(f"{argv[0]} exited {process.returncode}: {last}")
        return output


# Which transitions have side effects, in the order they run.
TRANSITION_EFFECTS: Final[Mapping[tuple[str, str], tuple[str, ...]]] = {
    ("deploy", "done"): ("merge", "deploy"),
}


def effects_for(settings: Settings, task: Task, expected: str, new: str) -> list[Effect]:
    """The effects of ``expected -> new`` for this task's repository, ready to run."""
    names = TRANSITION_EFFECTS.get((expected, new), ())
    if not names:
        return []
    repo = Repo(Path(task.repository))
    config = settings.repo_config(Path(task.repository))
    built: list[Effect] = []
    for name in names:
        if name == "merge":
            built.append(MergeEffect(repo, task))
        elif name == "deploy" and config.deploy_command:
            check = _argv(config.deploy_check_command) if config.deploy_check_command else None
            built.append(DeployEffect(repo, task, _argv(config.deploy_command), check))
    return built
