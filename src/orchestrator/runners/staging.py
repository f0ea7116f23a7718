"""The staging runner: with no staging command configured, the stage is skipped."""

from __future__ import annotations

from orchestrator.kernel.gates import STAGING_REPORT_FILE
from orchestrator.runners.context import RunnerContext, emit_result

__all__ = ["run"]


def run(context: RunnerContext) -> int:
    context.artifact_dir.mkdir(parents=True, exist_ok=True)
    (context.artifact_dir / STAGING_REPORT_FILE).write_text(
        f"# Staging report: {context.work_item}\n\n"
        "result: SKIPPED\n\n"
        "No staging command is configured for this repository, so nothing was started.\n",
        encoding="utf-8",
    )
    emit_result(staging="skipped")
    return 0
