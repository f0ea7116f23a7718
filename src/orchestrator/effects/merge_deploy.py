"""The side effects of transitions: merge and deploy, each able to look at the world.

``deploy -> done`` performs, under the task's lease and through the journal:

* ``merge``: the task branch onto the default branch through the repository's forge
  (``local`` by default: git on disk; ``gitea``, ``github``: their merge API), with the
  configured ``merge_method`` (observed: the forge's "is merged");
* ``deploy``: the repository's ``deploy_command`` with ``ORCH_DEPLOY_COMMIT`` (observed
  through ``deploy_check_command``, which prints the deployed commit: done when it is
  the target, or already carries the task's change — the default branch may have moved
  on since an interrupted deploy started; without a check command an interrupted
  deploy cannot be judged and fails closed).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from orchestrator.effects.journal import Effect, Observation, Seen
from orchestrator.errors import OrchestratorError
from orchestrator.forges.base import Forge
from orchestrator.job_env import deploy_environment
from orchestrator.kernel.stages import TRANSITION_EFFECTS
from orchestrator.procs.kill import kill_tree
from orchestrator.procs.spawn import PIPE, spawn
from orchestrator.settings import Settings
from orchestrator.store import Task
from orchestrator.workspace.git import Repo
from orchestrator.workspace.remote import open_repo

__all__ = ["DeployEffect", "MergeEffect", "deploy_effect", "effects_for"]

DEPLOY_TIMEOUT_S: Final = 1800.0
# The end of a deploy's (or check's) output kept and read back.
OUTPUT_KEPT_BYTES: Final = 64 * 1024
# An effect's command starts only once its owner has recorded its pid (``on_spawn``):
# an owner killed in between leaves no command running that recovery cannot wait for.
# Its pid (and start time) stay the command's own: the gate execs it.
SPAWN_GATE: Final = """\
import os, sys
if not os.read(0, 2):
    sys.exit("orchestrator: the effect's owner died before recording it; not started")
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.execvp(sys.argv[1], sys.argv[1:])
"""


def _argv(command: Sequence[str] | str) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


@dataclass
class MergeEffect:
    """Land the task branch on the default branch through the repository's forge, once.

    ``open_forge`` gives the forge for one use (its HTTP client closed after).
    """

    task: Task
    open_forge: Callable[[], AbstractContextManager[Forge]]
    name: str = "merge"

    def observe(self) -> Observation:
        try:
            with self.open_forge() as forge:
                merged, where = forge.is_merged(self.task), forge.name
        except OrchestratorError as exc:
            # The forge cannot tell now; with an intent left by an earlier epoch the
            # journal fails closed, otherwise the merge itself will say what is wrong.
            return Observation(Seen.UNKNOWN, {"error": str(exc)})
        if merged:
            return Observation(Seen.DONE, {"forge": where, "already_merged": True})
        return Observation(Seen.NOT_DONE)

    def perform(self, on_spawn: Callable[[int], None]) -> Mapping[str, Any]:
        with self.open_forge() as forge:
            outcome = forge.merge(self.task)
            where = forge.name
        return {"forge": where, "merge_sha": outcome.sha, "already_merged": outcome.already_merged}


@dataclass
class DeployEffect:
    """Run the repository's deploy command for the default branch's head, once."""

    repo: Repo
    task: Task
    command: list[str]
    check_command: list[str] | None
    name: str = "deploy"
    # The task branch whose change this deploy delivers: a deployed commit that already
    # carries it counts as done (None: only the target itself does).
    delivers: str | None = None
    # orch's secret values: kept out of the deploy command's environment.
    secrets: frozenset[str] = frozenset()

    def _target(self) -> str:
        # With a remote, the default branch as it is there now (another host may have
        # merged since this host last looked).
        return self.repo.current(self.task.base_branch)

    def _env(self, target: str) -> dict[str, str]:
        task_variables = {
            "ORCH_DEPLOY_COMMIT": target,
            "ORCH_WORK_ITEM": self.task.work_item,
            "ORCH_REPOSITORY": self.task.repository,
        }
        return deploy_environment(os.environ, secrets=self.secrets, layers=(task_variables,))

    def observe(self) -> Observation:
        if self.check_command is None:
            return Observation(Seen.UNKNOWN)
        target = self._target()
        try:
            deployed = self._run(self.check_command, target).strip()
        except RuntimeError as exc:
            # The check itself failed: the world cannot tell. With an interrupted intent
            # the journal fails closed; otherwise the deploy runs as it would have.
            return Observation(Seen.UNKNOWN, {"check_error": str(exc)})
        last = deployed.splitlines()[-1].strip() if deployed else ""
        if last and last == target:
            return Observation(Seen.DONE, {"deployed_commit": target})
        if last and self.delivers is not None and self._carries(last, self.delivers):
            # E.g. a killed server's deploy finished unrecorded, and main has moved on.
            return Observation(Seen.DONE, {"deployed_commit": last, "target": target})
        return Observation(Seen.NOT_DONE)

    def _carries(self, deployed: str, branch: str) -> bool:
        try:
            return self.repo.is_merged(branch, deployed)
        except OrchestratorError:  # an unknown commit or a deleted branch: cannot tell
            return False

    def perform(self, on_spawn: Callable[[int], None]) -> Mapping[str, Any]:
        # One deploy of a repository at a time (the merge lock): two tasks' deploys
        # started together by one server could otherwise end in either order and leave
        # the older commit live. The target is read under the lock, so the later deploy
        # ships the newer head. A killed owner's orphaned deploy does not hold the lock
        # (the command does not inherit it); the journal waits for it instead.
        with self.repo.locked():
            target = self._target()
            output = self._run(self.command, target, on_spawn)
        return {"deployed_commit": target, "output_tail": output[-500:]}

    def _run(
        self, argv: list[str], target: str, on_spawn: Callable[[int], None] | None = None
    ) -> str:
        # Output goes to an unlinked file, not a pipe: a deploy whose owner is killed
        # lives on (its own session) and must not die of SIGPIPE at its next line.
        gated = on_spawn is not None
        with tempfile.TemporaryFile() as sink:
            process = spawn(
                [sys.executable, "-c", SPAWN_GATE, *argv] if gated else argv,
                cwd=self.repo.path,
                env=self._env(target),
                output=sink,
                stdin=PIPE if gated else None,
            )
            if on_spawn is not None and process.stdin is not None:
                try:
                    on_spawn(process.pid)
                    # The pid is recorded: the command may start (see SPAWN_GATE).
                    with contextlib.suppress(OSError):
                        process.stdin.write(b"go")
                finally:  # without the word (on_spawn failed), the gate sees EOF and stops
                    with contextlib.suppress(OSError):
                        process.stdin.close()
            try:
                process.wait(timeout=DEPLOY_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                kill_tree(group=process.pid, root=process.pid)
                process.wait()
                raise RuntimeError(f"{argv[0]} timed out after {DEPLOY_TIMEOUT_S:.0f}s") from None
            sink.seek(max(0, sink.seek(0, os.SEEK_END) - OUTPUT_KEPT_BYTES))
            output = sink.read().decode("utf-8", errors="replace")
        if process.returncode != 0:
            last = output.strip().splitlines()[-1] if output.strip() else ""
            raise RuntimeError(f"{argv[0]} exited {process.returncode}: {last}")
        return output


def effects_for(settings: Settings, task: Task, expected: str, new: str) -> list[Effect]:
    """The effects of ``expected -> new`` for this task's repository, ready to run."""
    names = TRANSITION_EFFECTS.get((expected, new), ())
    if not names:
        return []
    # The wiring imports the concrete forges; imported here, not at the top, because it
    # depends on modules that depend on this one.
    from orchestrator.wiring import open_forge  # noqa: PLC0415

    built: list[Effect] = []
    for name in names:
        if name == "merge":
            built.append(MergeEffect(task, lambda: open_forge(settings, task)))
        elif name == "deploy" and (deploy := deploy_effect(settings, task)) is not None:
            built.append(replace(deploy, delivers=task.branch))
    return built


def deploy_effect(settings: Settings, task: Task, name: str = "deploy") -> DeployEffect | None:
    """The repository's deploy of its default branch's head as an effect named ``name``
    (the post-deploy rollback redeploys under its own name); None without a command."""
    config = settings.repo_config(Path(task.repository))
    if not config.deploy_command:
        return None
    check = _argv(config.deploy_check_command) if config.deploy_check_command else None
    return DeployEffect(
        open_repo(settings, task.repository),
        task,
        _argv(config.deploy_command),
        check,
        name,
        secrets=settings.secret_values,
    )
