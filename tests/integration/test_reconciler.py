"""The reconciler: tasks whose stage and jobs disagree after a crash are repaired.

Each test builds the state a crash leaves behind with the store's own writes (a task in
``deploy`` whose preflight job exited 0, from :func:`prepare_deploy_task`), then lets
one reconciler sweep repair it, with real git and a real deploy command:

* the job was claimed ``done`` but the stage never moved (the actor died between its
  claim and its transition): the sweep completes ``deploy -> done`` through the lease
  and the journal, one merge and one deploy, and a second sweep changes nothing;
* a live owner holds the task's lease: the sweep defers and touches nothing;
* the job ``failed`` and its decision (a retry) was never applied: the sweep applies it;
* the stage moved but its job was never enqueued: the sweep enqueues it;
* a failed job is judged by its ``failure_kind``, never its error text: a job given up
  because its task moved on is left alone, an environment failure goes to a person;
* a sweep reads what changed, not history (decision 0028): a task older than 10,000
  newer ones is repaired, a change after the last sweep is seen by the next one, and a
  change the window cannot see (stamped before it, as by a late commit or a clock
  behind) is found by the slow full pass, a keyset page of task ids a sweep.

How each test was seen to fail without its mechanism is noted on the test (mutants in a
copy of ``src/`` put first on ``PYTHONPATH``).
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
import sqlalchemy as sa
from support import make_repo

from orchestrator.engine.core import Engine
from orchestrator.kernel.failures import FailureKind
from orchestrator.lifecycle.transitions import Runtime
from orchestrator.maintenance.reconciler import Reconciler
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Event, Store, Task
from orchestrator.store.schema import jobs, tasks
from orchestrator.testing.actors import prepare_deploy_task

CONFIG: Final = """\
database_url = "{db_url}"
data_dir = ".orch"
retry_backoff_s = 0
reaper_finalize_grace_s = 0

[repos.repo]
deploy_command = ["sh", "-c", "echo \\"$ORCH_WORK_ITEM $ORCH_DEPLOY_COMMIT\\" >> {deploys}"]
deploy_check_command = [
    "sh", "-c", "grep \\"^$ORCH_WORK_ITEM \\" {deploys} 2>/dev/null | tail -n 1 | cut -d' ' -f2",
]
"""


class World:
    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.tmp_path = tmp_path
        self.repo = make_repo(tmp_path / "repo")
        self.deploys = tmp_path / "deploys.log"
        config = tmp_path / "orch.toml"
        config.write_text(CONFIG.format(db_url=db_url, deploys=self.deploys))
        self.settings: Settings = load_settings(config)
        self.store = Store.open(self.settings.effective_database_url)
        self.engine = Engine(self.store, self.settings)

    def task(self, work_item: str = "R-1") -> Task:
        return prepare_deploy_task(self.store, self.repo, self.tmp_path / "wt", work_item)

    def job_to(
        self,
        task: Task,
        status: str,
        error: str | None = None,
        kind: FailureKind | None = None,
    ) -> None:
        job = self.store.latest_job(task.id)
        assert job is not None
        with self.store.transaction() as tx:
            assert tx.set_job_status_cas(
                job.id, "finalizing", status, error=error, failure_kind=kind
            )

    def events(self, task: Task, kind: str) -> list[Event]:
        return [event for event in self.store.task_events(task.id) if event.kind == kind]

    def merges(self, work_item: str) -> int:
        subjects = subprocess.run(
            ["git", "log", "--merges", "--format=%s", "main"],
            cwd=self.repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        return sum(1 for subject in subjects if f": {work_item} " in subject)

    def deployed(self) -> list[str]:
        text = self.deploys.read_text() if self.deploys.exists() else ""
        return [line.split()[0] for line in text.splitlines()]


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    made = World(tmp_path, db_url)
    yield made
    made.engine.shutdown(kill=True)
    made.store.close()


def test_a_done_job_whose_stage_never_moved_is_advanced_once(world: World) -> None:
    """Seen failing with the ``done`` branch of ``Reconciler.repair`` skipped: the
    sweep repaired nothing and the task stayed in ``deploy``, unmerged."""
    task = world.task()
    world.job_to(task, "done")  # claimed; the claimer died before its transition

    assert Reconciler(world.engine.finalizer).sweep() == 1
    assert world.engine.wait_for_crossings(60)  # the crossing runs in the engine's pool

    done = world.store.get_task(task.id)
    assert (done.stage, done.failed_reason) == ("done", None)
    assert world.merges("R-1") == 1
    assert world.deployed() == ["R-1"]
    assert [e.actor for e in world.events(task, "reconciler.advance")] == ["reconciler"]
    # Idempotent: nothing left to repair, nothing written.
    before = world.store.task_events(task.id)
    assert Reconciler(world.engine.finalizer).sweep() == 0
    assert world.store.task_events(task.id) == before
    assert world.merges("R-1") == 1
    assert world.deployed() == ["R-1"]


def test_the_reconciler_defers_while_a_live_owner_holds_the_lease(world: World) -> None:
    """Seen failing with the live-lease check removed from ``Reconciler.sweep``: no
    ``reconciler.deferred`` event; the sweep went on to the transition (which the lease
    itself then deferred)."""
    task = world.task()
    world.job_to(task, "done")
    holder = Runtime.create(world.store, world.settings)  # this process: a live owner
    lease = holder.leases.acquire(task, "deploy->done", "holder")
    assert lease is not None

    assert Reconciler(world.engine.finalizer).sweep() == 0

    assert world.store.get_task(task.id).stage == "deploy"
    assert [e.reason for e in world.events(task, "reconciler.deferred")] == [
        "a live owner holds the lease"
    ]
    assert world.events(task, "transition.deferred") == []
    assert world.merges("R-1") == 0
    assert world.deployed() == []

    holder.leases.release(lease)
    assert Reconciler(world.engine.finalizer).sweep() == 1
    assert world.engine.wait_for_crossings(60)
    assert world.store.get_task(task.id).stage == "done"
    assert world.merges("R-1") == 1
    assert world.deployed() == ["R-1"]


def test_a_failed_job_whose_retry_was_never_queued_is_retried(world: World) -> None:
    """Seen failing with the ``failed`` branch of ``Reconciler.repair`` skipped: no
    second attempt was queued and the task waited forever."""
    task = world.task()
    job = world.store.latest_job(task.id)
    assert job is not None
    run = world.store.job_run(job.id)
    assert run is not None
    with world.store.transaction() as tx:
        tx.record_exit(run.id, exit_code=1)
    world.job_to(task, "failed", error="exit code 1", kind=FailureKind.NONZERO_EXIT)

    assert Reconciler(world.engine.finalizer).sweep() == 1

    jobs = world.store.task_jobs(task.id)
    assert [(j.stage, j.attempt, j.status) for j in jobs] == [
        ("deploy", 1, "failed"),
        ("deploy", 2, "queued"),
    ]
    assert world.store.get_task(task.id).stage == "deploy"
    assert len(world.events(task, "reconciler.decide")) == 1
    assert Reconciler(world.engine.finalizer).sweep() == 0  # a job is pending now
    assert len(world.store.task_jobs(task.id)) == 2


def test_a_stage_whose_job_was_never_enqueued_gets_its_job(world: World) -> None:
    """The stage moved (here back to development) but no job was enqueued for it.

    Seen failing with the "no job for this stage" branch of ``Reconciler.repair``
    skipped: the sweep repaired nothing and the task had no job to run."""
    task = world.task()
    world.job_to(task, "done")
    assert world.store.update_task_stage_cas(task.id, "deploy", "development")

    assert Reconciler(world.engine.finalizer).sweep() == 1

    latest = world.store.latest_job(task.id)
    assert latest is not None
    assert (latest.stage, latest.status) == ("development", "queued")
    [enqueued] = world.events(task, "reconciler.enqueued")
    assert enqueued.to_stage == "development"
    assert Reconciler(world.engine.finalizer).sweep() == 0
    assert len(world.store.task_jobs(task.id)) == 2


def _failed_run(world: World, task: Task, exit_code: int) -> None:
    job = world.store.latest_job(task.id)
    assert job is not None
    run = world.store.job_run(job.id)
    assert run is not None
    with world.store.transaction() as tx:
        tx.record_exit(run.id, exit_code=exit_code)


@pytest.mark.parametrize("kind", [FailureKind.LOST_RACE, FailureKind.CANCELLED])
def test_a_job_given_up_because_its_task_moved_on_is_left_alone(
    world: World, kind: FailureKind
) -> None:
    """The kind alone says so: no ``job.lost_race`` event, and an error text that reads
    like any failure. Seen failing with the kind check removed from
    ``Reconciler._repair`` (the sweep retried the job: a second attempt was queued), and
    before migration 0009 (the reconciler looked for the event, found none, retried)."""
    task = world.task()
    _failed_run(world, task, 1)
    world.job_to(task, "failed", error="exit code 1", kind=kind)

    assert Reconciler(world.engine.finalizer).sweep() == 0

    assert [(j.attempt, j.status) for j in world.store.task_jobs(task.id)] == [(1, "failed")]
    assert world.events(task, "reconciler.decide") == []


def test_an_environment_failure_redecided_after_a_crash_goes_to_a_person(world: World) -> None:
    """The decision lost in the crash is applied as it would have been: the task fails
    for a person (no retry), because the stored kind says ``environment``. Seen failing
    without the kind read in ``Reconciler._repair``: the cause was lost with the crash,
    and the sweep queued a second attempt of a job that could not start."""
    task = world.task()
    _failed_run(world, task, -1)
    world.job_to(task, "failed", error="unknown agent 'nope'", kind=FailureKind.ENVIRONMENT)

    assert Reconciler(world.engine.finalizer).sweep() == 1

    failed = world.store.get_task(task.id)
    assert failed.failed_reason is not None
    assert "needs a person" in failed.failed_reason
    assert [(j.attempt, j.status) for j in world.store.task_jobs(task.id)] == [(1, "failed")]


def _ended_tasks(store: Store, count: int) -> None:
    """``count`` tasks that ended long ago (``done``), written in one statement."""
    long_ago = time.time() - 30 * 86_400
    rows = [
        {
            "work_item": f"OLD-{number}",
            "repository": "/nowhere",
            "title": "ended long ago",
            "description": "",
            "stage": "done",
            "branch": f"orch/OLD-{number}",
            "base_branch": "main",
            "base_sha": "0" * 40,
            "worktree": f"/nowhere/OLD-{number}",
            "created_at": long_ago,
            "updated_at": long_ago,
        }
        for number in range(count)
    ]
    with store.engine.begin() as conn:
        conn.execute(sa.insert(tasks), rows)


def _stamp_long_ago(store: Store, task: Task) -> None:
    """The task's row and jobs as if written an hour ago: what a transaction that
    committed late, or a host whose clock is behind, leaves before a window's start."""
    with store.engine.begin() as conn:
        for table, key in ((tasks, tasks.c.id), (jobs, jobs.c.task_id)):
            conn.execute(
                sa.update(table).where(key == task.id).values(updated_at=table.c.updated_at - 3600)
            )


def test_a_task_older_than_ten_thousand_newer_ones_is_repaired(world: World) -> None:
    """Seen failing before decision 0028: the sweep read the newest 10,000 tasks
    (``list_tasks(limit=10_000)``), never this one, and repaired nothing."""
    task = world.task()
    world.job_to(task, "done")
    _ended_tasks(world.store, 10_000)

    assert Reconciler(world.engine.finalizer).sweep() == 1
    assert world.engine.wait_for_crossings(60)
    assert world.store.get_task(task.id).stage == "done"
    assert world.merges("R-1") == 1


def test_a_change_after_the_last_sweep_is_seen_by_the_next(world: World) -> None:
    """The same reconciler sweeps before and after the crash's leftover: its change
    window, not a fresh start, finds it (a page of 1 task id, so the full pass alone
    would take a sweep per task). Seen failing with the window's two terms removed
    from ``ReconcilerStore.candidates``: the sweep after the change repaired nothing."""
    task = world.task()
    _ended_tasks(world.store, 20)
    reconciler = Reconciler(world.engine.finalizer, page=1)
    assert reconciler.sweep() == 0  # the job is still finalizing: nothing to repair
    reconciler.sweep()  # the full pass moves on past the task

    world.job_to(task, "done")
    assert reconciler.sweep() == 1
    assert world.engine.wait_for_crossings(60)
    assert world.store.get_task(task.id).stage == "done"


def test_a_change_the_window_cannot_see_is_found_by_the_full_pass(world: World) -> None:
    """A leftover stamped before the reconciler's window (a late commit, a clock behind)
    is repaired once the full pass's page reaches it, within a round of pages. Seen
    failing with the page left out of ``Reconciler.sweep``: no sweep ever repaired it."""
    task = world.task()
    _ended_tasks(world.store, 9)
    page = 3
    reconciler = Reconciler(world.engine.finalizer, page=page)
    assert reconciler.sweep() == 0  # the first page (the task among it) while finalizing

    world.job_to(task, "done")
    _stamp_long_ago(world.store, task)
    repaired = [reconciler.sweep() for _ in range(math.ceil(10 / page) + 1)]

    assert repaired[0] == 0  # the window did not see it: its rows predate the window
    assert sum(repaired) == 1
    assert world.engine.wait_for_crossings(60)
    assert world.store.get_task(task.id).stage == "done"
    assert world.merges("R-1") == 1
