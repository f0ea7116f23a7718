"""The ORCH-111 class: many actors enter the same side-effectful transition.

TC-01: five actors (monitor, reaper, reconciler, webhook, cli) enter ``deploy -> done``
of the same task at once, as threads and as separate processes, round after round:
exactly one merge and one deploy per task, and no contradictory final state.

``ORCH_STRESS_ROUNDS`` sets the number of rounds (default below; `make stress` runs
1,000). Every round is a fresh task with its own branch in one real git repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import make_repo

from orchestrator.engine.core import Engine
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store
from orchestrator.store.schema import effects
from orchestrator.testing.actors import ROLES, act, prepare_deploy_task

STRESS_ROUNDS = os.environ.get("ORCH_STRESS_ROUNDS")
THREAD_ROUNDS = int(STRESS_ROUNDS or "40")
# Processes cost more to start; `make stress` runs the same number of rounds of both.
PROCESS_ROUNDS = int(STRESS_ROUNDS or "20")
# Each actor process goes through every round's task; generous, never a pass criterion.
ACTOR_TIMEOUT_S = max(600, 3 * PROCESS_ROUNDS)

# The check prints the commit THIS task's deploy shipped. A check that printed the last
# deployed commit of the repository would, with tasks crossing concurrently (the process
# test), let a task find its change already live in a later task's deploy and rightly
# skip its own: correct, but no longer "one deploy line per task".
CONFIG = """\
database_url = "{db_url}"
data_dir = ".orch"
retry_backoff_s = 0
reaper_finalize_grace_s = 0
transition_lease_enabled = {lease}

[repos.repo]
deploy_command = ["sh", "-c", "echo \\"$ORCH_WORK_ITEM $ORCH_DEPLOY_COMMIT\\" >> {deploys}"]
deploy_check_command = [
    "sh", "-c", "grep \\"^$ORCH_WORK_ITEM \\" {deploys} 2>/dev/null | tail -n 1 | cut -d' ' -f2",
]
"""


def write_config(tmp_path: Path, db_url: str, *, lease: bool = True) -> tuple[Path, Settings]:
    config = tmp_path / "orch.toml"
    config.write_text(
        CONFIG.format(db_url=db_url, deploys=tmp_path / "deploys.log", lease=str(lease).lower())
    )
    return config, load_settings(config)


def merges_per_task(repo: Path) -> Counter[str]:
    subjects = subprocess.run(
        ["git", "log", "--merges", "--format=%s", "main"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return Counter(subject.split(": ")[1].split()[0] for subject in subjects)


def deploys_per_task(tmp_path: Path) -> Counter[str]:
    log = tmp_path / "deploys.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(line.split()[0] for line in lines)


def journal_done(store: Store) -> Counter[tuple[int, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(effects.c.task_id, effects.c.effect, effects.c.result).where(
                effects.c.status == "done"
            )
        ).all()
    # A "reconciled" row records an effect found done in the world: not a second run.
    return Counter(
        (int(row.task_id), str(row.effect))
        for row in rows
        if not (row.result or {}).get("reconciled")
    )


def trail(store: Store, work_item: str) -> str:
    """The task's state and every event, for the message of a failed check."""
    task = store.find_task(work_item)
    lines = [f"{work_item}: stage {task.stage}, failed {task.failed_reason!r}"]
    lines += [f"  job {job.id} {job.status} {job.error!r}" for job in store.task_jobs(task.id)]
    lines += [
        f"  {event.kind} by {event.actor}: {event.reason}" for event in store.task_events(task.id)
    ]
    return "\n".join(lines)


def assert_exactly_once(tmp_path: Path, repo: Path, store: Store, work_items: list[str]) -> None:
    merges = merges_per_task(repo)
    deploys = deploys_per_task(tmp_path)
    for work_item in work_items:
        assert merges[work_item] == 1, (
            f"{work_item} merged {merges[work_item]} times\n{trail(store, work_item)}"
        )
        assert deploys[work_item] == 1, (
            f"{work_item} deployed {deploys[work_item]} times\n{trail(store, work_item)}"
        )
    done = journal_done(store)
    for task in store.list_tasks(limit=100_000):
        assert task.stage == "done", f"{task.work_item} ended in {task.stage}"
        assert task.failed_reason is None, task.failed_reason
        assert done[(task.id, "merge")] == 1
        assert done[(task.id, "deploy")] == 1
        kinds = [event.kind for event in store.task_events(task.id)]
        assert "task.rollback" not in kinds
        assert kinds.count("stage.changed") == 1  # deploy -> done, once
    with store.engine.connect() as conn:
        held = conn.execute(
            sa.text("SELECT count(*) FROM transition_lease WHERE owner_boot_id IS NOT NULL")
        ).scalar_one()
    assert held == 0, "a lease is left held"


def test_tc01_five_actor_threads_merge_and_deploy_exactly_once(tmp_path: Path, db_url: str) -> None:
    repo = make_repo(tmp_path / "repo")
    _, settings = write_config(tmp_path, db_url)
    store = Store.open(settings.effective_database_url)
    engine = Engine(store, settings)
    work_items = []
    try:
        for number in range(1, THREAD_ROUNDS + 1):
            work_item = f"R-{number}"
            work_items.append(work_item)
            task = prepare_deploy_task(store, repo, tmp_path / "wt", work_item)
            barrier = threading.Barrier(len(ROLES))
            outcomes: dict[str, str] = {}
            errors: list[BaseException] = []

            def run(
                role: str,
                task_id: int = task.id,
                barrier: threading.Barrier = barrier,
                outcomes: dict[str, str] = outcomes,
                errors: list[BaseException] = errors,
            ) -> None:
                try:
                    barrier.wait()
                    outcomes[role] = act(role, engine, task_id)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(role,)) for role in ROLES]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(ACTOR_TIMEOUT_S)
            assert not errors, errors
            if store.get_task(task.id).stage != "done":
                # Every actor deferred to a lease holder that has since finished, or lost
                # its claim: the reconciler's next sweep completes the transition.
                act("reconciler", engine, task.id)
        assert_exactly_once(tmp_path, repo, store, work_items)
    finally:
        store.close()


def test_tc01_five_actor_processes_merge_and_deploy_exactly_once(
    tmp_path: Path, db_url: str
) -> None:
    repo = make_repo(tmp_path / "repo")
    config, settings = write_config(tmp_path, db_url)
    store = Store.open(settings.effective_database_url)
    try:
        work_items = [f"P-{number}" for number in range(1, PROCESS_ROUNDS + 1)]
        task_ids = [
            str(prepare_deploy_task(store, repo, tmp_path / "wt", item).id) for item in work_items
        ]
        go = tmp_path / "go"
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "orchestrator.testing.actors",
                    role,
                    str(config),
                    str(go),
                    *task_ids,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for role in ROLES
        ]
        go.touch()
        for process in processes:
            _out, err = process.communicate(timeout=ACTOR_TIMEOUT_S)
            assert process.returncode == 0, err
            assert "Traceback" not in err, err
        engine = Engine(store, settings)
        for task_id in task_ids:
            if store.get_task(int(task_id)).stage != "done":
                act("reconciler", engine, int(task_id))
        assert_exactly_once(tmp_path, repo, store, work_items)
    finally:
        store.close()


@pytest.mark.parametrize("lease", [False], ids=["kill-switch-off"])
def test_kill_switch_off_makes_the_stage_write_unconditional(
    tmp_path: Path, db_url: str, lease: bool
) -> None:
    """ORCH_TRANSITION_LEASE_ENABLED=false: the CAS degenerates to a blind write and the
    lease is inert (no row, nothing fenced) — the documented pre-lease behaviour."""
    repo = make_repo(tmp_path / "repo")
    _, settings = write_config(tmp_path, db_url, lease=lease)
    store = Store.open(settings.effective_database_url)
    engine = Engine(store, settings)
    try:
        task = prepare_deploy_task(store, repo, tmp_path / "wt", "K-1")
        lease_held = engine.runtime.leases.acquire(task, "deploy->done", "test")
        assert lease_held is not None
        assert lease_held.inert
        # A second actor is not excluded: the lease is inert.
        assert engine.runtime.leases.acquire(task, "deploy->done", "other") is not None
        with store.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT count(*) FROM transition_lease")).scalar_one()
        assert rows == 0
        # The stage write ignores the expected stage: a stale actor overwrites.
        from orchestrator.lifecycle.transitions import advance_stage

        with store.transaction() as tx:
            assert advance_stage(tx, settings, task, "deploy", "done", actor="a", reason="x")
        with store.transaction() as tx:
            stale = store.get_task(task.id)
            assert stale.stage == "done"
            # "deploy -> development" from a task that is already done: blindly written.
            assert advance_stage(
                tx, settings, task, "deploy", "development", actor="b", reason="stale"
            )
        assert store.get_task(task.id).stage == "development"
    finally:
        store.close()


def test_with_the_lease_a_stale_stage_write_loses(tmp_path: Path, db_url: str) -> None:
    """The same stale write as above, with the lease on: the CAS refuses it."""
    repo = make_repo(tmp_path / "repo")
    _, settings = write_config(tmp_path, db_url, lease=True)
    store = Store.open(settings.effective_database_url)
    try:
        task = prepare_deploy_task(store, repo, tmp_path / "wt", "K-2")
        from orchestrator.lifecycle.transitions import advance_stage

        with store.transaction() as tx:
            assert advance_stage(tx, settings, task, "deploy", "done", actor="a", reason="x")
        with store.transaction() as tx:
            assert not advance_stage(
                tx, settings, task, "deploy", "development", actor="b", reason="stale"
            )
        assert store.get_task(task.id).stage == "done"
    finally:
        store.close()
