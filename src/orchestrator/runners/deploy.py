"""The deploy finalizer's preflight: can the task branch be merged and deployed?

The deploy stage's job checks, without touching the default branch, that the task
branch merges cleanly (``git merge-tree``) and writes ``15-deploy-report.md``,
committed on the task branch (that file only) so the merged history carries it. The
merge and the deploy command themselves are side effects of the ``deploy -> done``
transition: they run under the task's transition lease, through the effect journal,
exactly once (:mod:`orchestrator.effects.merge_deploy`).
"""

from __future__ import annotations

import sys

from orchestrator.errors import RepositoryError
from orchestrator.kernel.gates import DEPLOY_REPORT_FILE
from orchestrator.runners.context import TOOL_ERROR_EXIT, RunnerContext, emit_result
from orchestrator.workspace.commit_policy import CommitPolicy, commit_work
from orchestrator.workspace.git import Repo, git

__all__ = ["run"]


def run(context: RunnerContext) -> int:
    repo = Repo(context.repository)
    context.artifact_dir.mkdir(parents=True, exist_ok=True)
    try:
        head = repo.rev(context.branch)
        base = repo.rev(context.base_branch)
        check = git(context.repository, "merge-tree", "--write-tree", base, head, check=False)
    except RepositoryError as exc:
        print(f"deploy finalizer: {exc}", file=sys.stderr)
        return TOOL_ERROR_EXIT
    if check.returncode not in (0, 1):
        print(f"deploy finalizer: git merge-tree failed: {check.stderr.strip()}", file=sys.stderr)
        return TOOL_ERROR_EXIT
    clean = check.returncode == 0
    conflicts = "" if clean else check.stdout.strip()
    report = (
        f"# Deploy report: {context.work_item}\n\n"
        f"result: {'PASS' if clean else 'FAIL'}\n\n"
        f"- merge: `{context.branch}` ({head[:10]}) into `{context.base_branch}` "
        f"({base[:10]}): {'merges cleanly' if clean else 'CONFLICTS'}\n"
        "- the merge and the deploy command run once, under the transition lease, when "
        "the task moves to done\n"
    )
    if conflicts:
        report += f"\n## Conflicts\n\n```\n{conflicts[-4000:]}\n```\n"
    (context.artifact_dir / DEPLOY_REPORT_FILE).write_text(report, encoding="utf-8")
    try:
        # Its own report only: whatever else a tool left in the worktree stays out.
        only = (context.artifact_dir.relative_to(context.worktree).as_posix(),)
        commit_work(
            context.worktree, CommitPolicy(only=only), f"{context.work_item}: deploy preflight"
        )
    except RepositoryError as exc:
        print(f"deploy finalizer: {exc}", file=sys.stderr)
        return TOOL_ERROR_EXIT
    print(f"preflight: {context.branch} {'merges cleanly' if clean else 'has conflicts'}")
    emit_result(mergeable=clean)
    return 0
