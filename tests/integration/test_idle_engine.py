"""An idle engine asks the database nothing, and still starts work at once (issue 12).

The engine runs in a thread as in ``orch serve`` (no inline maintenance) with its slow
fallback poll set to an hour, so whatever starts a job within the test's bound is the
mechanism under test, never the poll: the store's Activity for a commit in this process
(``store/activity.py``), the database file's change stamp for another process's commit
on SQLite, and the next queued job's due time for a retry's backoff.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from support import make_repo

from orchestrator.engine.core import Engine
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store, Task

WAIT_S: Final = 30.0  # bounds on waiting, never pass criteria
NEVER_S: Final = 3600.0
POLL_S: Final = 0.02
# Long enough for a ticking engine (every 50 ms) to be seen asking the database.
LOOK_S: Final = 0.5
ONLY_DEVELOPMENT: Final = [
    "analysis",
    "brd-approval",
    "architecture",
    "testing",
    "deploy-staging",
    "deploy",
]


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {WAIT_S}s")
        time.sleep(POLL_S)


@dataclass
class World:
    settings: Settings
    store: Store
    engine: Engine
    repo: Path

    def create(self, work_item: str, through: Store | None = None) -> Task:
        service = TaskService(through or self.store, self.settings)
        return service.create_task(repo_path=self.repo, title="Idle", work_item=work_item)

    def started(self, task: Task) -> bool:
        return any(job.status != "queued" for job in self.store.task_jobs(task.id))

    def in_slow_wait(self) -> bool:
        return self.engine.waiting_s == NEVER_S


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    agent = tmp_path / "agent.sh"
    agent.write_text('echo "$ORCH_WORK_ITEM" >> code.txt\n')
    config = tmp_path / "orch.toml"
    config.write_text(
        f"database_url = {json.dumps(db_url)}\n"
        f"data_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        f"skip = {json.dumps(ONLY_DEVELOPMENT)}\n"
        f"\n[agents.sh]\ncommand = {json.dumps(['sh', str(agent)])}\n"
        '\n[stages.development]\nagent = "sh"\n'
    )
    settings = load_settings(config)
    store = Store.open(db_url)
    engine = Engine(store, settings)
    engine.inline_maintenance = False  # a supervisor runs the sweeps, as in orch serve
    engine.idle_poll_s = NEVER_S
    # PostgreSQL's commits are announced by LISTEN/NOTIFY (tests/integration/
    # test_wakeups.py); here the listener counts as up but none runs, so only this
    # process's Activity can wake the engine.
    engine.wakeups_pushed = True
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), name="engine", daemon=True)
    made = World(settings, store, engine, make_repo(tmp_path / "repo"))
    thread.start()
    try:
        yield made
    finally:
        stop.set()
        engine.wake()
        thread.join(WAIT_S)
        engine.shutdown(kill=True)
        store.close()


def test_an_idle_engine_sends_no_statement_while_it_waits(world: World) -> None:
    """Seen failing with the engine ticking every 50 ms while idle (two statements a
    tick on SQLite): dozens in the look."""
    wait_for(world.in_slow_wait, "the engine in its slow wait")
    before = world.store.statements
    time.sleep(LOOK_S)
    assert world.in_slow_wait()
    assert world.store.statements == before


def test_a_job_enqueued_in_this_process_wakes_the_idle_engine(world: World) -> None:
    """The API of ``orch serve`` enqueues through the engine's own store: its commit
    pokes the Activity the engine listens to. Seen failing without the subscription:
    the job waited for the hour-long poll."""
    wait_for(world.in_slow_wait, "the engine in its slow wait")
    task = world.create("I-1")
    wait_for(lambda: world.started(task), "the job started by the commit's poke")


def test_a_job_due_later_starts_when_it_is_due(world: World) -> None:
    """A retry's backoff: nothing announces the moment the job comes due. Seen failing
    with the idle wait not cut at the next job's due time: it slept the hour."""
    task = world.create("I-2")
    wait_for(lambda: world.started(task), "the first job started")
    wait_for(world.in_slow_wait, "the engine idle again")
    with world.store.transaction() as tx:
        tx.enqueue_job(
            task_id=task.id, stage="development", kind="agent", agent="sh", attempt=2, delay_s=1.0
        )
    wait_for(
        lambda: all(job.status != "queued" for job in world.store.task_jobs(task.id)),
        "the delayed job started when due",
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_job_enqueued_by_another_process_wakes_the_idle_engine_on_sqlite(
    world: World, db_url: str
) -> None:
    """Another process (the CLI's ``orch task create``) writes to the file: nothing in
    this process is poked, but the file's change stamp moves. Seen failing without the
    stamp watch: the job waited for the hour-long poll."""
    wait_for(world.in_slow_wait, "the engine in its slow wait")
    other = Store.open(db_url)  # its own connections and Activity, as another process
    try:
        task = world.create("I-3", through=other)
        wait_for(lambda: world.started(task), "the job started by the change stamp")
    finally:
        other.close()


class CommitsBeforeTheWait(Store):
    """A store whose next look for a due job lets ``commit`` run just after it: another
    process's commit landing after the tick read the queue and before the idle wait."""

    commit: Callable[[], None] | None = None

    def next_job_due(self, now: float) -> float | None:
        due = super().next_job_due(now)
        commit, self.commit = self.commit, None
        if commit is not None:
            commit()
        return due


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_commit_between_the_ticks_read_and_the_wait_is_not_missed(
    tmp_path: Path, db_url: str
) -> None:
    """Seen failing with the stamp taken when the wait began (it already held the
    commit, so nothing ever changed): the job waited for the hour-long poll."""
    agent = tmp_path / "agent.sh"
    agent.write_text('echo "$ORCH_WORK_ITEM" >> code.txt\n')
    config = tmp_path / "orch.toml"
    config.write_text(
        f"database_url = {json.dumps(db_url)}\n"
        f"data_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        f"skip = {json.dumps(ONLY_DEVELOPMENT)}\n"
        f"\n[agents.sh]\ncommand = {json.dumps(['sh', str(agent)])}\n"
        '\n[stages.development]\nagent = "sh"\n'
    )
    settings = load_settings(config)
    repo = make_repo(tmp_path / "repo")
    store = CommitsBeforeTheWait.open(db_url)
    other = Store.open(db_url)
    created: list[Task] = []
    store.commit = lambda: created.append(
        TaskService(other, settings).create_task(repo_path=repo, title="Race", work_item="I-4")
    )
    engine = Engine(store, settings)
    engine.inline_maintenance = False
    engine.idle_poll_s = NEVER_S
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), name="engine", daemon=True)
    thread.start()
    try:
        wait_for(lambda: bool(created), "the commit made")
        wait_for(
            lambda: any(job.status != "queued" for job in store.task_jobs(created[0].id)),
            "the job started by the change stamp",
        )
    finally:
        stop.set()
        engine.wake()
        thread.join(WAIT_S)
        engine.shutdown(kill=True)
        other.close()
        store.close()
