"""Actors that enter the same transition, for the ORCH-111 class of tests and the chaos run.

Five actors may try to move a task out of ``deploy`` at once: the **monitor** (the
engine finalizing its job), the **reaper** (tier 2, after the grace period), the
**reconciler**, a **webhook** (a forge saying "merged") and the **cli** (an operator).
Each uses the product's own path; the lease, the claims and the CAS decide who acts.

``python -m orchestrator.testing.actors ROLE CONFIG GO_FILE TASK_ID...`` runs one actor
as its own process: it waits until ``GO_FILE`` exists, then acts on every task in turn.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from orchestrator.engine.core import Engine
from orchestrator.kernel.gates import DEPLOY_REPORT_FILE
from orchestrator.lifecycle.crossings import CrossingRun
from orchestrator.lifecycle.transitions import Crossing, artifact_dir, enter_transition
from orchestrator.maintenance.reaper import Reaper
from orchestrator.maintenance.reconciler import Reconciler
from orchestrator.settings import load_settings
from orchestrator.store import Store, Task, Tx
from orchestrator.workspace.git import Repo, git

__all__ = ["ROLES", "act", "add_finalizing_deploy_job", "prepare_deploy_task"]

ROLES: Final = ("monitor", "reaper", "reconciler", "webhook", "cli")
GO_POLL_S: Final = 0.01


def prepare_deploy_task(
    store: Store,
    repo: Path,
    worktrees: Path,
    work_item: str,
    *,
    origin: Mapping[str, Any] | None = None,
) -> Task:
    """A task in ``deploy`` whose preflight job has exited 0 and awaits finalization.

    Its worktree holds a code change and a passing deploy report, committed on
    ``orch/<work_item>``; its job is ``finalizing`` with exit code 0 recorded.
    ``origin``: the tracker issue it came from, if any.
    """
    repository = Repo(repo)
    base_sha = repository.rev("main")
    worktree = worktrees / work_item
    branch = f"orch/{work_item}"
    repository.add_worktree(worktree, branch, base_sha)
    (worktree / f"{work_item.lower()}.txt").write_text(f"change of {work_item}\n")
    docs = worktree / artifact_dir(work_item)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / DEPLOY_REPORT_FILE).write_text("# Deploy report\n\nresult: PASS\n")
    git(worktree, "add", "--all")
    git(worktree, "commit", "--quiet", "-m", f"{work_item}: change and preflight")
    with store.transaction() as tx:
        task_id = tx.insert_task(
            work_item=work_item,
            repository=str(repository.path),
            title=f"Change {work_item}",
            description="",
            stage="deploy",
            branch=branch,
            base_branch="main",
            base_sha=base_sha,
            worktree=str(worktree),
            origin=origin,
        )
        add_finalizing_deploy_job(tx, tx.get_task(task_id))
        return tx.get_task(task_id)


def add_finalizing_deploy_job(tx: Tx, task: Task) -> int:
    """A deploy preflight job of ``task`` that has exited 0 and awaits finalization."""
    head = git(Path(task.worktree), "rev-parse", "HEAD").stdout.strip()
    job_id = tx.enqueue_job(
        task_id=task.id, stage="deploy", kind="runner", agent="runner:deploy", attempt=1
    )
    tx.set_job_status_cas(job_id, "queued", "running", owner_boot_id="prepared")
    tx.set_job_process(job_id, pid=None, start_sha=head)
    run_id = tx.insert_agent_run(
        job_id=job_id,
        task_id=task.id,
        agent="runner:deploy",
        model="",
        effort="",
        attempt=1,
        log_path=str(Path(task.worktree).parent / f"{task.work_item}-{job_id}.log"),
    )
    tx.record_exit(run_id, exit_code=0)
    tx.set_job_status_cas(job_id, "running", "finalizing")
    return job_id


def act(role: str, engine: Engine, task_id: int) -> str:
    """One actor's attempt at the task's ``deploy -> done``; returns what it did."""
    store = engine.store
    task = store.get_task(task_id)
    job = store.latest_job(task_id)
    if job is None:
        return "no job"
    before = engine.crossings.latest(task_id)
    if role == "monitor":
        return _outcome(engine, task_id, before, engine.finalizer.finalize(job, 0, None, ""))
    if role == "reaper":
        # Tier 2's own path: a finalizing job past the grace period, claim before act.
        if job.status != "finalizing":
            return "nothing to reap"
        won = engine.finalizer.finalize(job, 0, None, "", actor="reaper")
        return _outcome(engine, task_id, before, won)
    if role == "reconciler":
        if job.status == "finalizing" or task.stage != "deploy":
            return "nothing to repair"
        return _outcome(engine, task_id, before, Reconciler(engine.finalizer).repair(task))
    if role in ("webhook", "cli"):
        crossing = enter_transition(
            engine.runtime, task, "deploy", "done", actor=role, reason=f"{role}: merged"
        )
        return crossing.value
    raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")


def _outcome(engine: Engine, task_id: int, before: CrossingRun | None, won: bool) -> str:
    """ "won" or "lost" as when crossings ran inline: an actor that handed the task's
    crossing to the engine's pool waits for it, and won if it moved the task."""
    run = engine.crossings.latest(task_id)
    if won and run is not None and run is not before:
        won = run.wait() in (Crossing.DONE, Crossing.ROLLED_BACK)
    return "won" if won else "lost"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 4 or args[0] not in ROLES:
        print(
            "usage: python -m orchestrator.testing.actors ROLE CONFIG GO_FILE TASK_ID...",
            file=sys.stderr,
        )
        return 2
    role, config, go_file, task_ids = args[0], Path(args[1]), Path(args[2]), args[3:]
    settings = load_settings(config)
    store = Store.open(settings.effective_database_url)
    engine = Engine(store, settings)
    while not go_file.exists():
        time.sleep(GO_POLL_S)
    for task_id in task_ids:
        print(f"{task_id} {act(role, engine, int(task_id))}", flush=True)
    if role == "reaper":
        Reaper(engine.finalizer, engine.kill_job).sweep()
    engine.wait_for_crossings()  # a daemon thread would die with this process
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
