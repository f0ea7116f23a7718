"""What a runner knows about its job: read from the environment the engine sets.

The ``ORCH_*`` variables name the task and its worktree; ``ORCH_RUNNER_CONFIG`` carries
the repository's runner settings (:class:`~orchestrator.runners.config.RunnerConfig`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from orchestrator.runners.config import RUNNER_CONFIG_ENV, RunnerConfig

__all__ = [
    "ENVIRONMENT_CAUSE",
    "RESULT_PREFIX",
    "TOOL_ERROR_EXIT",
    "RunnerContext",
    "defer_for_environment",
    "emit_result",
]

# Exit code of a runner that could not do its work (a tool error, not a verdict).
TOOL_ERROR_EXIT: Final = 3
# A runner reports facts for the audit trail on one stdout line starting with this.
RESULT_PREFIX: Final = "ORCH-RESULT "
# ``defer_cause`` of a DEFER a person must fix (the same value as kernel ENVIRONMENT; not
# imported, so that a runner starts without the kernel).
ENVIRONMENT_CAUSE: Final = "environment"


@dataclass(frozen=True)
class RunnerContext:
    work_item: str
    stage: str
    worktree: Path
    artifact_dir: Path
    repository: Path
    branch: str
    base_branch: str
    attempt: int = 1
    config: RunnerConfig = field(default_factory=RunnerConfig)
    # The runner's own environment, handed on (without ORCH_*) to the commands it runs.
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> RunnerContext:
        """Read the context; raises ``KeyError`` for a missing variable and
        ``ValueError`` for a malformed one (the runner turns both into a DEFER)."""
        env = os.environ if env is None else env
        worktree = cwd or Path.cwd()
        return cls(
            work_item=env["ORCH_WORK_ITEM"],
            stage=env["ORCH_STAGE"],
            worktree=worktree,
            artifact_dir=worktree / env["ORCH_ARTIFACT_DIR"],
            repository=Path(env["ORCH_REPOSITORY"]),
            branch=env["ORCH_BRANCH"],
            base_branch=env["ORCH_BASE_BRANCH"],
            attempt=int(env.get("ORCH_ATTEMPT") or 1),
            config=RunnerConfig.from_json(env.get(RUNNER_CONFIG_ENV)),
            env=dict(env),
        )

    def child_env(self, **extra: str) -> dict[str, str]:
        """The environment of a command the runner starts: the runner's own, less the
        orchestrator's ``ORCH_*`` variables (a test suite must not see them)."""
        env = {k: v for k, v in self.env.items() if not k.startswith("ORCH_")}
        env.update(extra)
        return env


def emit_result(**facts: Any) -> None:
    """Print the runner's facts as one line the engine adds to the job's event."""
    print(RESULT_PREFIX + json.dumps(facts, sort_keys=True), flush=True)


def defer_for_environment(reason: str, **facts: Any) -> int:
    """Report a DEFER whose cause is the environment (a command not found, a failed setup
    or hook, a missing agent) and return the runner's exit code for it.

    The engine reads ``defer_cause`` from the result line and fails the task for a
    person with ``reason`` and the retry command: no retry, never a rollback.
    """
    emit_result(defer_cause=ENVIRONMENT_CAUSE, defer_reason=reason, **facts)
    print(f"runner: DEFER (environment): {reason}", file=sys.stderr, flush=True)
    return TOOL_ERROR_EXIT
