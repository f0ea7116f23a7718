"""The leader's rescuer (decision 0027): the running jobs of a dead instance are taken
over without waiting for a restart, but only those that ran on this host.

The dead instances are registered through ``Owner.register`` as the engine would, and
their job claimed with the engine's own compare-and-swap; the surviving engine is real
and driven tick by tick after ``request_rescue`` (what the ``rescuer`` loop does).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import make_repo

from orchestrator.effects.leases import Owner
from orchestrator.engine.core import Engine
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import load_settings
from orchestrator.store import Job, Store
from orchestrator.store.leases import LeaseStore

ONLY_DEVELOPMENT = ["analysis", "brd-approval", "architecture", "testing", "deploy-staging"]


def _world(tmp_path: Path, db_url: str, *, remote: bool) -> Iterator[tuple[Store, Engine, int]]:
    """A task whose development job is queued; with ``remote``, its repository shares
    no disk with other hosts (a bare clone as its remote, decision 0031)."""
    repo = make_repo(tmp_path / "repo")
    repos = ""
    if remote:
        bare = tmp_path / "remote.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
        subprocess.run(["git", "remote", "add", "origin", str(bare)], cwd=repo, check=True)
        repos = f'\n[repos.repo]\npath = {json.dumps(str(repo))}\nremote = "origin"\n'
    config = tmp_path / "orch.toml"
    config.write_text(
        f"database_url = {json.dumps(db_url)}\n"
        f"data_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        f"skip = {json.dumps([*ONLY_DEVELOPMENT, 'deploy'])}\n"
        '\n[agents.ok]\ncommand = ["true"]\n\n[stages.development]\nagent = "ok"\n' + repos
    )
    settings = load_settings(config)
    store = Store.open(db_url)
    task = TaskService(store, settings).create_task(repo_path=repo, title="Rescue", work_item="R-1")
    engine = Engine(store, settings)
    engine.recover_on_startup()  # the start-up recovery is done: only the rescuer acts
    yield store, engine, task.id
    engine.shutdown(kill=True)
    store.close()


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[tuple[Store, Engine, int]]:
    yield from _world(tmp_path, db_url, remote=False)


@pytest.fixture
def hosts_world(tmp_path: Path, db_url: str) -> Iterator[tuple[Store, Engine, int]]:
    yield from _world(tmp_path, db_url, remote=True)


def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def claimed_by_a_dead_instance(
    store: Store, task_id: int, host: str, *, silent_s: float = 3600
) -> Job:
    """The task's queued job, claimed by an instance of ``host`` that is dead now (its
    last heartbeat ``silent_s`` ago: dead by heartbeat too)."""
    owner = Owner(
        instance="gone", host=host, pid=dead_pid(), boot_id=f"gone-{host}", pid_start=None
    )
    owner.register(store)
    LeaseStore(store).beat(owner.boot_id, time.time() - silent_s)
    [job] = store.task_jobs(task_id)
    with store.transaction() as tx:
        assert tx.set_job_status_cas(job.id, "queued", "running", owner_boot_id=owner.boot_id)
    return store.get_job(job.id)


def test_a_dead_instance_of_this_host_has_its_job_taken_over(
    world: tuple[Store, Engine, int],
) -> None:
    store, engine, task_id = world
    job = claimed_by_a_dead_instance(store, task_id, socket.gethostname())
    engine.tick()
    assert store.get_job(job.id).status == "running"  # nobody asked for a rescue yet

    engine.request_rescue()
    engine.tick()

    assert store.get_job(job.id).status != "running"


def test_a_dead_instance_of_another_host_keeps_its_job(
    world: tuple[Store, Engine, int],
) -> None:
    """Its agent may still run over there; that host's next start decides (decision
    0027: without a remote, whatever its silence). Seen failing without
    ``this_host_only``: the job was given up as lost and run again here."""
    store, engine, task_id = world
    job = claimed_by_a_dead_instance(store, task_id, "another-host")

    engine.request_rescue()
    engine.tick()

    after = store.get_job(job.id)
    assert (after.status, after.owner_boot_id) == ("running", job.owner_boot_id)
    assert len(store.task_jobs(task_id)) == 1


def test_a_host_seen_within_host_takeover_s_keeps_its_job(
    hosts_world: tuple[Store, Engine, int],
) -> None:
    """Decision 0031: dead by heartbeat (30 s), its host not yet silent for
    ``host_takeover_s`` (120 s): its agent may still run there."""
    store, engine, task_id = hosts_world
    job = claimed_by_a_dead_instance(store, task_id, "another-host", silent_s=60)
    engine.request_rescue()
    engine.tick()
    after = store.get_job(job.id)
    assert (after.status, after.owner_boot_id) == ("running", job.owner_boot_id)


def test_the_jobs_of_a_host_silent_for_host_takeover_s_are_retried_here(
    hosts_world: tuple[Store, Engine, int],
) -> None:
    """Decision 0031: that host is gone, and its agents with it. The job is failed as
    lost, naming the host, and a new attempt is queued for any instance to claim. Seen
    failing with the rescuer left at this host's jobs only: the job stayed running."""
    store, engine, task_id = hosts_world
    job = claimed_by_a_dead_instance(store, task_id, "another-host", silent_s=600)

    engine.request_rescue()
    engine.tick()

    after = store.get_job(job.id)
    assert after.status == "failed"
    assert "lost with its host another-host" in (after.error or "")
    attempts = store.task_jobs(task_id)
    assert len(attempts) == 2
    assert attempts[-1].attempt == 2


def test_a_restarted_instance_leaves_the_jobs_of_another_live_host(
    hosts_world: tuple[Store, Engine, int],
) -> None:
    """With a remote, the start-up recovery judges another host's job as the rescuer
    does: by that host's heartbeat, never by a pid of this host. Seen failing with the
    start-up recovery judging every dead instance's job here: it was failed as lost."""
    store, engine, task_id = hosts_world
    job = claimed_by_a_dead_instance(store, task_id, "another-host", silent_s=60)
    restarted = Engine(store, engine.settings)
    try:
        restarted.recover_on_startup()
    finally:
        restarted.shutdown(kill=True)
    after = store.get_job(job.id)
    assert (after.status, after.owner_boot_id) == ("running", job.owner_boot_id)


def test_a_job_that_ran_on_another_host_is_never_judged_from_this_hosts_copy(
    hosts_world: tuple[Store, Engine, int],
) -> None:
    """With a remote, the job's result is in that host's worktree. This host's copy
    holds a stray change: judged here (the reaper's tier 2, the reconciler), it would
    be committed, pushed and recorded as a stage nobody ran. Seen failing without
    ``Finalizer.ran_elsewhere``: the task went to done with the stray file on the
    remote."""
    store, engine, task_id = hosts_world
    job = claimed_by_a_dead_instance(store, task_id, "another-host", silent_s=60)
    task = store.get_task(task_id)
    (Path(task.worktree) / "stray.py").write_text("print('not the job')\n")
    remote = Path(task.repository).parent / "remote.git"
    before = subprocess.run(
        ["git", "rev-parse", task.branch], cwd=remote, capture_output=True, text=True, check=True
    ).stdout

    with store.transaction() as tx:
        tx.set_job_status_cas(job.id, "running", "finalizing")
    engine.finalizer.finalize(store.get_job(job.id), 0, None, "", actor="reaper")

    after = store.get_job(job.id)
    assert after.status == "failed"
    assert after.failure_kind == "lost"
    assert "ran on host another-host" in (after.error or "")
    assert store.get_task(task_id).stage == "development"
    assert [j.attempt for j in store.task_jobs(task_id)] == [1, 2]
    now = subprocess.run(
        ["git", "rev-parse", task.branch], cwd=remote, capture_output=True, text=True, check=True
    ).stdout
    assert now == before  # nothing pushed from this host's copy
