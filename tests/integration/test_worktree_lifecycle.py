"""The worktree lifecycle (issue 13) on SQLite and PostgreSQL, with real git.

A task's worktree goes when the task ends (done and cancelled at once, failed after its
retention), its branch stays (or goes, with ``delete_branch_on_done``, once merged);
a retried task gets it back from the branch; removal is idempotent, survives a crash
between the removal and its record, and never loses a race with a retry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from support import make_repo

from orchestrator.engine.core import Engine
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store, Task
from orchestrator.workspace.gc import collect_garbage
from orchestrator.workspace.git import Repo, git
from orchestrator.workspace.worktrees import WorktreeJanitor, release_worktree

DRIVE_TIMEOUT_S: Final = 60.0
WEEK_S: Final = 7 * 24 * 3600.0

# A pipeline with no human gate and no deploy: a no-op agent, no gates.
CONFIG = """\
database_url = "{db_url}"
data_dir = ".orch"
retry_backoff_s = 0
max_attempts = 1
skip = ["brd-approval", "deploy-staging", "deploy"]
delete_branch_on_done = {delete_branch}

[agents.noop]
command = ["sh", "-c", "echo change $ORCH_STAGE >> work.txt"]
[agents.slow]
command = ["sleep", "30"]

[stages.analysis]
agent = "{analysis_agent}"
gates = []
[stages.architecture]
agent = "noop"
gates = []
[stages.development]
agent = "noop"
gates = []
[stages.testing]
agent = "noop"
gates = []
"""


@dataclass
class World:
    root: Path
    repo: Path
    settings: Settings
    store: Store

    def service(self) -> TaskService:
        return TaskService(self.store, self.settings)

    def create(self, work_item: str) -> Task:
        return self.service().create_task(
            repo_path=self.repo, title=f"change {work_item}", work_item=work_item
        )

    def drive(self, *task_ids: int) -> None:
        """Run the engine until every task has ended (done, cancelled or failed)."""
        engine = Engine(self.store, self.settings)
        deadline = time.monotonic() + DRIVE_TIMEOUT_S

        def ended() -> bool:
            tasks = [self.store.get_task(task_id) for task_id in task_ids]
            if time.monotonic() > deadline:
                raise AssertionError(f"tasks did not end: {tasks}")
            return all(t.stage in ("done", "cancelled") or t.failed for t in tasks)

        try:
            engine.run(threading.Event(), until=ended)
        finally:
            engine.shutdown(kill=True)

    def fail(self, task: Task, reason: str = "it broke") -> Task:
        with self.store.transaction() as tx:
            assert tx.update_task_counters(task.id, expected_stage=task.stage, failed_reason=reason)
            tx.cancel_waiting_jobs(task.id, reason)
        return self.store.get_task(task.id)

    def registered_worktrees(self) -> list[str]:
        listing = git(self.repo, "worktree", "list", "--porcelain").stdout
        return [
            line.split(" ", 1)[1] for line in listing.splitlines() if line.startswith("worktree ")
        ]

    def events(self, task: Task, kind: str) -> list[str]:
        return [e.reason for e in self.store.task_events(task.id) if e.kind == kind]


def make_world(
    tmp_path: Path, db_url: str, *, delete_branch: bool = False, analysis_agent: str = "noop"
) -> World:
    repo = make_repo(tmp_path / "repo").resolve()
    config = tmp_path / "orch.toml"
    config.write_text(
        CONFIG.format(
            db_url=db_url,
            delete_branch=str(delete_branch).lower(),
            analysis_agent=analysis_agent,
        )
    )
    settings = load_settings(config)
    return World(tmp_path, repo, settings, Store.open(settings.effective_database_url))


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    built = make_world(tmp_path, db_url)
    try:
        yield built
    finally:
        built.store.close()


def test_a_done_task_loses_its_worktree_and_keeps_its_branch(world: World) -> None:
    """Seen failing before the lifecycle: the worktree of the done task stayed, with
    its git entry."""
    task = world.create("WT-1")
    worktree = Path(task.worktree)
    assert worktree.is_dir()
    world.drive(task.id)
    done = world.store.get_task(task.id)
    assert done.stage == "done"
    assert not worktree.exists()
    assert done.worktree_removed_at is not None
    assert world.registered_worktrees() == [str(world.repo)]
    # The branch keeps the agents' commits.
    assert "change development" in git(world.repo, "show", f"{task.branch}:work.txt").stdout
    (removed,) = world.events(done, "worktree.removed")
    assert str(worktree) in removed
    shown = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--config", str(world.root / "orch.toml"),
         "task", "show", "WT-1"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"(the branch {task.branch} keeps the commits)" in shown


def test_delete_branch_on_done_keeps_a_branch_that_is_not_merged(
    tmp_path: Path, db_url: str
) -> None:
    """This pipeline has no deploy stage: nothing merged the branch, so it stays. (A
    merged one goes: tests/integration/test_post_deploy.py.)"""
    built = make_world(tmp_path, db_url, delete_branch=True)
    try:
        task = built.create("WT-2")
        built.drive(task.id)
        assert built.store.get_task(task.id).stage == "done"
        assert not Path(task.worktree).exists()
        assert Repo(built.repo).has_branch(task.branch)
    finally:
        built.store.close()


def test_a_cancelled_task_loses_its_worktree_at_once(world: World) -> None:
    task = world.create("WT-4")
    world.service().cancel(task)
    assert not Path(task.worktree).exists()
    assert world.store.get_task(task.id).worktree_removed_at is not None
    assert Repo(world.repo).has_branch(task.branch)


def test_a_task_cancelled_while_its_job_runs_is_cleaned_once_the_job_stopped(
    tmp_path: Path, db_url: str
) -> None:
    """The worktree is not pulled from under a running agent: the cancel keeps it while
    the job is stopped, then the engine removes it."""
    built = make_world(tmp_path, db_url, analysis_agent="slow")
    try:
        task = built.create("WT-5")
        engine = Engine(built.store, built.settings)
        try:
            deadline = time.monotonic() + DRIVE_TIMEOUT_S
            while not engine.running_jobs():
                engine.tick()
                assert time.monotonic() < deadline
            built.service().cancel(task)
            assert Path(task.worktree).is_dir()  # the job still runs in it
            engine.run(threading.Event(), until=lambda: not engine.running_jobs())
        finally:
            engine.shutdown(kill=True)
        assert not Path(task.worktree).exists()
        assert built.store.get_task(task.id).worktree_removed_at is not None
    finally:
        built.store.close()


def test_a_failed_task_keeps_its_worktree_for_the_retention_then_retry_brings_it_back(
    world: World,
) -> None:
    task = world.create("WT-6")
    worktree = Path(task.worktree)
    (worktree / "wip.txt").write_text("committed before the failure\n")
    git(worktree, "add", "wip.txt")
    git(worktree, "commit", "--quiet", "-m", "wip")
    head = git(worktree, "rev-parse", "HEAD").stdout.strip()
    failed = world.fail(task)
    janitor = WorktreeJanitor(world.store, world.settings)

    kept = janitor.sweep(now=failed.updated_at + WEEK_S - 60)
    assert [k.work_item for k in kept.kept] == ["WT-6"]
    assert kept.released == []
    assert worktree.is_dir()

    swept = janitor.sweep(now=failed.updated_at + WEEK_S + 1)
    assert [r.work_item for r in swept.released] == ["WT-6"]
    assert swept.released[0].bytes > 0
    assert not worktree.exists()

    retried = world.service().retry(world.store.get_task(task.id))
    assert worktree.is_dir()
    assert git(worktree, "rev-parse", "HEAD").stdout.strip() == head
    assert (worktree / "wip.txt").read_text() == "committed before the failure\n"
    assert retried.worktree_removed_at is None
    assert world.events(retried, "worktree.restored")


def test_a_failed_task_rolled_back_gets_its_worktree_back(world: World) -> None:
    task = world.create("WT-7")
    with world.store.transaction() as tx:
        for stage in ("analysis", "architecture", "development", "testing"):
            current = tx.get_task(task.id)
            assert tx.update_task_stage_cas(task.id, current.stage, stage)
        tx.cancel_waiting_jobs(task.id, "test")
    failed = world.fail(world.store.get_task(task.id))
    WorktreeJanitor(world.store, world.settings).sweep(now=failed.updated_at + WEEK_S + 1)
    assert not Path(task.worktree).exists()
    world.service().rollback(world.store.get_task(task.id))
    assert Path(task.worktree).is_dir()
    assert world.store.get_task(task.id).stage == "development"


def test_retry_refuses_when_neither_worktree_nor_branch_is_left(world: World) -> None:
    task = world.create("WT-8")
    failed = world.fail(task)
    WorktreeJanitor(world.store, world.settings).sweep(now=failed.updated_at + WEEK_S + 1)
    git(world.repo, "branch", "-D", task.branch)
    with pytest.raises(Exception, match="restore the branch, or cancel the task"):
        world.service().retry(world.store.get_task(task.id))
    assert world.store.get_task(task.id).failed  # nothing written


def test_a_crash_between_the_removal_and_its_record_is_finished_by_the_next_sweep(
    world: World,
) -> None:
    """The removal ran (here: git removed it) but the mark was never written: the next
    sweep records it without error, and a second sweep does nothing."""
    task = world.create("WT-9")
    world.service().cancel(task)
    # Undo the record only: as if the process died right after `git worktree remove`.
    with world.store.transaction() as tx:
        tx.set_worktree_removed(task.id, None)
    janitor = WorktreeJanitor(world.store, world.settings)
    first = janitor.sweep()
    assert [r.work_item for r in first.released] == ["WT-9"]
    assert first.released[0].bytes == 0
    assert first.failed == []
    second = janitor.sweep()
    assert second.released == second.failed == []
    assert len(world.events(task, "worktree.removed")) == 2


def test_a_half_deleted_worktree_is_cleared(world: World) -> None:
    """A crash in the middle of deleting: the directory is there, its `.git` file gone."""
    task = world.create("WT-10")
    worktree = Path(task.worktree)
    (worktree / ".git").unlink()
    world.fail(task)
    outcome = release_worktree(
        world.store, world.settings, task.id, actor="test", now=time.time() + WEEK_S + 1
    )
    assert outcome is not None
    assert not worktree.exists()
    assert world.registered_worktrees() == [str(world.repo)]


def test_two_janitors_remove_a_worktree_once(world: World) -> None:
    tasks = [world.create(f"WT-R{n}") for n in range(4)]
    for task in tasks:
        world.fail(task)
    now = time.time() + WEEK_S + 1
    janitors = [WorktreeJanitor(world.store, world.settings) for _ in range(3)]
    barrier = threading.Barrier(len(janitors))
    errors: list[BaseException] = []

    def sweep(janitor: WorktreeJanitor) -> None:
        try:
            barrier.wait()
            assert janitor.sweep(now=now).failed == []
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sweep, args=(j,)) for j in janitors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for task in tasks:
        assert not Path(task.worktree).exists()
        assert len(world.events(task, "worktree.removed")) == 1


def test_a_retry_racing_a_sweep_ends_with_the_worktree_present(world: World) -> None:
    """Whichever wins, the retried task has its worktree: the sweep re-reads the task
    under the worktree lock, and the retry restores under it."""
    for round_ in range(3):
        task = world.create(f"WT-RACE{round_}")
        world.fail(task)
        janitor = WorktreeJanitor(world.store, world.settings)
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(
            action: str,
            task: Task = task,
            janitor: WorktreeJanitor = janitor,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                barrier.wait()
                if action == "sweep":
                    janitor.sweep(now=time.time() + WEEK_S + 1)
                else:
                    world.service().retry(world.store.get_task(task.id))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(a,)) for a in ("sweep", "retry")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        after = world.store.get_task(task.id)
        assert not after.failed
        assert Path(task.worktree).is_dir(), world.events(after, "worktree.removed")
        assert after.worktree_removed_at is None


def test_gc_removes_orphans_prunes_stale_entries_and_reports_the_bytes(world: World) -> None:
    cancelled = world.create("WT-11")
    failed = world.fail(world.create("WT-12"))
    world.service().cancel(cancelled)  # its worktree goes at once (git prunes as well)
    root = world.settings.data_dir.resolve() / "worktrees"
    # An orphan: a directory no task owns (a crash between `git worktree add` and the
    # task's insert), old enough not to be a task being created.
    orphan = root / "repo-00000000" / "GHOST-1"
    orphan.mkdir(parents=True)
    (orphan / "big.bin").write_bytes(b"x" * 200_000)
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    # A stale git entry: a worktree whose directory someone deleted.
    stray = world.root / "stray"
    git(world.repo, "worktree", "add", "--quiet", "--detach", str(stray))
    subprocess.run(["rm", "-rf", str(stray)], check=True)

    dry = collect_garbage(world.store, world.settings, dry_run=True)
    assert [o.path for o in dry.orphans] == [str(orphan)]
    assert dry.orphans[0].removed is False
    assert dry.bytes_freed >= 200_000
    assert [p.repository for p in dry.pruned] == [str(world.repo)]
    assert [k.work_item for k in dry.kept] == ["WT-12"]
    assert orphan.exists()

    report = collect_garbage(world.store, world.settings)
    assert not orphan.exists()
    assert report.bytes_freed == dry.bytes_freed
    assert report.failed == []
    assert str(stray) not in world.registered_worktrees()
    assert Path(failed.worktree).is_dir()  # within its retention

    again = collect_garbage(world.store, world.settings)
    assert (again.bytes_freed, again.orphans, again.pruned, again.released) == (0, [], [], [])


def test_the_churn_benchmark_runs_and_leaves_no_worktree_registered() -> None:
    """A smoke run of bench/worktree_churn.py (4 tasks), so the script does not rot."""
    script = Path(__file__).resolve().parents[2] / "bench" / "worktree_churn.py"
    result = subprocess.run(
        [sys.executable, str(script), "--tasks", "4", "--window", "2", "--files", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert (figures["tasks"], figures["worktrees_registered_at_end"]) == (4, 0)
    assert figures["ratio_last_to_first"] > 0


def test_adding_a_worktree_never_races_a_prune(tmp_path: Path) -> None:
    """``git worktree prune`` beside ``git worktree add`` deletes the entry the add is
    still writing ("could not open .git/worktrees/X/locked"): a merge's scratch worktree
    failed that way while another actor released a finished task's worktree (TC-01).
    Every add, remove and prune holds the repository's worktree lock."""
    repo = Repo(make_repo(tmp_path / "repo"))
    base = repo.rev("main")
    adds_done = threading.Event()
    errors: list[BaseException] = []

    def prune() -> None:
        try:
            while not adds_done.is_set():
                repo.prune_worktrees()
        except BaseException as exc:
            errors.append(exc)

    pruner = threading.Thread(target=prune)
    pruner.start()
    try:
        for number in range(40):
            repo.commit_in_scratch(tmp_path / f"scratch-{number}", base, lambda _tree: base)
    finally:
        adds_done.set()
        pruner.join()
    assert not errors, errors
