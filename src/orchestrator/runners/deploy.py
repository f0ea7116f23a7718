"""The deploy finalizer: merge the task branch into the default branch, exactly once.

The report is committed on the task branch before the merge, so the merged history
carries it. The merge checks the world first: a branch already merged is not merged
again, so a re-run after a crash is harmless.
"""

from __future__ import annotations

import sys

from orchestrator.errors import RepositoryError
from orchestrator.git import Repo, commit_all
from orchestrator.kernel.gates import DEPLOY_REPORT_FILE
from orchestrator.runners.context import TOOL_ERROR_EXIT, RunnerContext, emit_result

__all__ = ["run"]


def run(context: RunnerContext) -> int:
    repo = Repo(context.repository)
    context.artifact_dir.mkdir(parents=True, exist_ok=True)
    report = context.artifact_dir / DEPLOY_REPORT_FILE
    try:
        head = repo.rev(context.branch)
        if not report.exists() or "result: PASS" not in report.read_text(encoding="utf-8"):
            report.write_text(
                f"# Deploy report: {context.work_item}\n\n"
                "result: PASS\n\n"
                f"- merged: `{context.branch}` into `{context.base_branch}`\n"
                "- deploy command: none configured (the merge is the deploy)\n",
                encoding="utf-8",
            )
            commit_all(context.worktree, f"{context.work_item}: deploy report")
            head = repo.rev(context.branch)
        scratch = context.repository / ".git" / "orch-merge" / context.work_item
        merged = repo.merge(
            context.branch,
            context.base_branch,
            f"Merge {context.branch}: {context.work_item}",
            scratch,
        )
    except RepositoryError as exc:
        print(f"deploy finalizer: {exc}", file=sys.stderr)
        return TOOL_ERROR_EXIT
    print(
        f"{'already merged' if merged.already_merged else 'merged'} {context.branch} "
        f"({head[:10]}) into {context.base_branch} at {merged.merge_sha[:10]}"
    )
    emit_result(merge_sha=merged.merge_sha, already_merged=merged.already_merged)
    return 0
