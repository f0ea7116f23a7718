"""What a runner knows about its job: read from the environment the engine sets."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["RESULT_PREFIX", "TOOL_ERROR_EXIT", "RunnerContext", "emit_result"]

# Exit code of a runner that could not do its work (a tool error, not a verdict).
TOOL_ERROR_EXIT: Final = 3
# A runner reports facts for the audit trail on one stdout line starting with this.
RESULT_PREFIX: Final = "ORCH-RESULT "


@dataclass(frozen=True)
class RunnerContext:
    work_item: str
    stage: str
    worktree: Path
    artifact_dir: Path
    repository: Path
    branch: str
    base_branch: str
    test_command: list[str] | None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> RunnerContext:
        env = os.environ if env is None else env
        worktree = cwd or Path.cwd()
        raw_command = env.get("ORCH_TEST_COMMAND")
        return cls(
            work_item=env["ORCH_WORK_ITEM"],
            stage=env["ORCH_STAGE"],
            worktree=worktree,
            artifact_dir=worktree / env["ORCH_ARTIFACT_DIR"],
            repository=Path(env["ORCH_REPOSITORY"]),
            branch=env["ORCH_BRANCH"],
            base_branch=env["ORCH_BASE_BRANCH"],
            test_command=json.loads(raw_command) if raw_command else None,
        )


def emit_result(**facts: Any) -> None:
    """Print the runner's facts as one line the engine adds to the job's event."""
    print(RESULT_PREFIX + json.dumps(facts, sort_keys=True), flush=True)
