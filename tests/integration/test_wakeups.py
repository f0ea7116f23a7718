"""LISTEN/NOTIFY wake-ups (``engine/wakeups.py``, decision 0027), on a real PostgreSQL.

An engine runs in a thread beside its :class:`JobWakeups` loop under a real supervisor,
as in ``orch serve``; tasks are created through another store (another connection, as
another instance would). The engine's fallback poll is set far beyond the test's bound
where the test is about the notification, and short where it is about the fallback, so
which mechanism started a job is never a matter of timing luck.
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
import sqlalchemy as sa
from support import make_repo

from orchestrator.engine.core import Engine
from orchestrator.engine.wakeups import JobWakeups
from orchestrator.lifecycle.service import TaskService
from orchestrator.maintenance.supervisor import Loop, Supervisor
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store, Task

pytestmark = pytest.mark.postgres

# Bounds on waiting, never pass criteria; the notification test's fallback poll is
# longer than its bound, so only a notification can start the job within it.
WAIT_S: Final = 30.0
NEVER_S: Final = 3600.0
POLL_S: Final = 0.02
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
    other: Store  # another connection pool: "another instance" enqueues through it
    engine: Engine
    wakeups: JobWakeups
    repo: Path

    def create(self, work_item: str) -> Task:
        service = TaskService(self.other, self.settings)
        return service.create_task(repo_path=self.repo, title="Wake", work_item=work_item)

    def started(self, task: Task) -> bool:
        return any(job.status != "queued" for job in self.store.task_jobs(task.id))

    def idle_and_listening(self) -> bool:
        """The engine is in its slow wait (listened to, nothing running)."""
        return self.engine.waiting_s == self.engine.idle_poll_s


@pytest.fixture
def backoff_s() -> float:
    """The supervisor's restart backoff for the wakeups loop (a test may hold it off)."""
    return 0.05


@pytest.fixture
def world(tmp_path: Path, pg_database: str, backoff_s: float) -> Iterator[World]:
    agent = tmp_path / "agent.sh"
    agent.write_text('echo "$ORCH_WORK_ITEM" >> code.txt\n')
    config = tmp_path / "orch.toml"
    config.write_text(
        f"database_url = {json.dumps(pg_database)}\n"
        f"data_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        f"skip = {json.dumps(ONLY_DEVELOPMENT)}\n"
        f"\n[agents.sh]\ncommand = {json.dumps(['sh', str(agent)])}\n"
        '\n[stages.development]\nagent = "sh"\n'
    )
    settings = load_settings(config)
    store, other = Store.open(pg_database), Store.open(pg_database)
    engine = Engine(store, settings)
    engine.inline_maintenance = False
    wakeups = JobWakeups(store, engine)
    supervisor = Supervisor([Loop("wakeups", wakeups.run)], backoff_s=backoff_s)
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), name="engine", daemon=True)
    made = World(settings, store, other, engine, wakeups, make_repo(tmp_path / "repo"))
    supervisor.start()
    thread.start()
    try:
        yield made
    finally:
        stop.set()
        engine.wake()
        thread.join(WAIT_S)
        supervisor.stop(WAIT_S)
        engine.shutdown(kill=True)
        other.close()
        store.close()


def test_a_job_enqueued_elsewhere_wakes_the_idle_engine(world: World) -> None:
    """Seen failing without the NOTIFY in ``enqueue_job``: the job waited for the
    hour-long fallback poll and the wait gave up."""
    world.engine.idle_poll_s = NEVER_S
    wait_for(world.idle_and_listening, "the engine idle and listening")
    task = world.create("W-1")
    wait_for(lambda: world.started(task), "the job started by the notification")
    assert world.wakeups.received >= 1


@pytest.mark.parametrize("backoff_s", [NEVER_S])  # the listener does not come back
def test_a_notification_lost_with_its_connection_is_recovered_by_polling(world: World) -> None:
    """The listener's connection is cut (a server restart, a network drop) and stays
    down: the notification of a job enqueued meanwhile is lost, and the job still starts
    because the engine polls again. Seen failing with the engine left in its slow wait
    (no wake when the listener drops, no fallback poll): the job was never started."""
    world.engine.idle_poll_s = 0.5
    wait_for(world.idle_and_listening, "the engine idle and listening")
    pid = world.wakeups.listener.backend_pid()
    assert pid is not None
    with world.other.engine.connect() as admin:
        [(cut,)] = admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        admin.commit()
    assert cut is True
    wait_for(lambda: not world.engine.wakeups_pushed, "the listener gone")
    task = world.create("W-2")
    wait_for(lambda: world.started(task), "the job started after the lost notification")
    assert world.wakeups.received == 0
