"""The engine never blocks (issue 11, decision 0014), with real git, real subprocesses,
on SQLite and PostgreSQL.

* While one task's ``deploy -> done`` crossing runs its deploy command, the engine
  dispatches another task's job, and it is not idle until the crossing has ended.
* An agent that ignores SIGTERM is stopped at its timeout without holding the engine:
  another task's job is dispatched before the stubborn one is SIGKILLed.
* A job adopted after a restart keeps the limits it started with (stored with the job):
  its agent's ``timeout_s`` and its run budget.

The deploy command and the agents never sleep a fixed time: they wait for files the
test writes, and every wait has a generous deadline that is never the pass criterion.
"""

from __future__ import annotations

import json
import sys
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
from orchestrator.store import Event, Job, Store, Task
from orchestrator.testing.actors import prepare_deploy_task

WAIT_S: Final = 60.0
AGENT_STAGES: Final = ("analysis", "architecture", "development")
POLL_S: Final = 0.02

DEPLOY: Final = """\
touch "$OUT/deploying"
while [ ! -e "$OUT/release-deploy" ]; do sleep 0.02; done
echo "$ORCH_WORK_ITEM $ORCH_DEPLOY_COMMIT" >> "$OUT/deploys.log"
"""
# The analysis agent of the other task: writes what its gate asks for, at once.
AGENT: Final = """\
set -e
touch "$OUT/started-$ORCH_WORK_ITEM"
mkdir -p "$ORCH_ARTIFACT_DIR"
echo "The business requirements: greet the user by name." > "$ORCH_ARTIFACT_DIR/01-brd.md"
"""
# An agent that ignores SIGTERM: it marks each one and keeps going (its sleeps die).
STUBBORN: Final = """\
trap 'echo term >> "$OUT/termed"' TERM
touch "$OUT/stubborn-started"
while :; do sleep 0.05; done
"""
# Spends $2 at once (as its result file says), then works on for five minutes.
SPENDER: Final = r"""
import json, os, time
with open(os.environ["ORCH_RESULT_FILE"], "w") as handle:
    json.dump({"cost_usd": 2.0, "input_tokens": 5000, "model": "spender-1"}, handle)
time.sleep(300)
"""
# Long enough that the test's next steps always fit in it; only a stubborn job waits it.
KILL_GRACE_S: Final = 10


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {timeout_s}s")
        time.sleep(POLL_S)


@dataclass
class World:
    tmp_path: Path
    db_url: str
    store: Store
    settings: Settings
    repo: Path
    out: Path

    def create(self, work_item: str, repo: Path | None = None) -> Task:
        return TaskService(self.store, self.settings).create_task(
            repo_path=repo or self.repo, title=f"Build {work_item}", work_item=work_item
        )

    def run_engine(
        self, engine: Engine, stop: threading.Event
    ) -> tuple[threading.Thread, list[BaseException]]:
        """``engine.run(stop)`` on a thread of its own; the list gets what it raised."""
        failures: list[BaseException] = []

        def loop() -> None:
            try:
                engine.run(stop)
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=loop, name="test-engine", daemon=True)
        thread.start()
        return thread, failures

    def events(self, task: Task, kind: str) -> list[Event]:
        return [e for e in self.store.task_events(task.id) if e.kind == kind]


def write_config(path: Path, db_url: str, tmp_path: Path, *, hang_timeout: bool = True) -> Path:
    """``orch.toml``: a quick agent (repository ``repo``, which deploys through a
    deploy command the test releases), a stubborn one (``stubborn``), one that hangs
    (``hang``, with a 2 s timeout unless ``hang_timeout`` is False) and one that
    overspends its run budget (``spender``)."""
    out = tmp_path / "out"
    check = f"tail -n 1 {out}/deploys.log 2>/dev/null | cut -d' ' -f2"
    agents = {
        "sh": ["sh", str(tmp_path / "agent.sh")],
        "stubborn": ["sh", str(tmp_path / "stubborn.sh")],
        "hang": ["sh", "-c", "exec sleep 3600"],
        "spender": [sys.executable, str(tmp_path / "spender.py")],
    }
    limits = {"stubborn": "timeout_s = 1\n", "hang": "timeout_s = 2\n" if hang_timeout else ""}
    path.write_text(
        f"database_url = {json.dumps(db_url)}\n"
        "retry_backoff_s = 0\n"
        "reaper_finalize_grace_s = 0\n"
        "max_attempts = 1\n"
        f"kill_grace_s = {KILL_GRACE_S}\n"
        + "".join(
            f"\n[agents.{name}]\ncommand = {json.dumps(command)}\n{limits.get(name, '')}"
            for name, command in agents.items()
        )
        + "".join(f'\n[stages.{stage}]\nagent = "sh"\n' for stage in AGENT_STAGES)
        + "\n[repos.repo]\n"
        f"deploy_command = {json.dumps(['sh', str(tmp_path / 'deploy.sh')])}\n"
        f"deploy_check_command = {json.dumps(['sh', '-c', check])}\n"
        + "".join(
            f'\n[repos.{name}.stages.analysis]\nagent = "{name}"\n' for name in ("stubborn", "hang")
        )
        + '\n[repos.spender.stages.analysis]\nagent = "spender"\nbudget_usd = 1.0\n'
    )
    return path


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    out = tmp_path / "out"
    out.mkdir()
    repo = make_repo(tmp_path / "repo")
    for name in ("stubborn", "hang", "spender"):
        make_repo(tmp_path / name)
    (tmp_path / "stubborn.sh").write_text(f"OUT={out}\n{STUBBORN}")
    (tmp_path / "deploy.sh").write_text(f"OUT={out}\n{DEPLOY}")
    (tmp_path / "agent.sh").write_text(f"OUT={out}\n{AGENT}")
    (tmp_path / "spender.py").write_text(SPENDER)
    settings = load_settings(write_config(tmp_path / "orch.toml", db_url, tmp_path))
    store = Store.open(db_url)
    try:
        yield World(tmp_path, db_url, store, settings, repo, out)
    finally:
        (out / "release-deploy").touch()
        store.close()


def test_another_tasks_job_is_dispatched_while_a_deploy_runs(world: World) -> None:
    """Seen failing with the crossing run inline in ``Engine._act``: the engine thread
    sat in the deploy command and the other task's analysis job never started."""
    deploying = prepare_deploy_task(world.store, world.repo, world.tmp_path / "wt", "D-1")
    engine = Engine(world.store, world.settings)
    stop = threading.Event()
    # Recovery finalizes D-1's job (its owner is gone): the crossing starts.
    thread, failures = world.run_engine(engine, stop)
    try:
        wait_for((world.out / "deploying").exists, "D-1's deploy command running")
        other = world.create("A-1")
        wait_for(
            lambda: world.store.get_task(other.id).stage == "brd-approval",
            "A-1's analysis job run and finalized while D-1 deploys",
        )
        assert world.store.get_task(deploying.id).stage == "deploy"
        assert not (world.out / "deploys.log").exists()  # the deploy still waits
        # Nothing queued or running, but a crossing in flight: not idle (orch run).
        assert not engine.idle()

        (world.out / "release-deploy").touch()
        wait_for(lambda: world.store.get_task(deploying.id).stage == "done", "D-1 done")
        wait_for(engine.idle, "the engine idle once the crossing ended")
    finally:
        (world.out / "release-deploy").touch()
        stop.set()
        thread.join(WAIT_S)
        engine.shutdown(kill=True)
    assert not failures, failures

    [started] = world.events(other, "job.started")
    [moved] = [
        e
        for e in world.events(deploying, "stage.changed")
        if (e.from_stage, e.to_stage)
        == (
            "deploy",
            "done",
        )
    ]
    assert started.id < moved.id  # dispatched while D-1's crossing ran
    assert (world.out / "deploys.log").read_text().split()[0] == "D-1"


def test_an_agent_that_ignores_sigterm_does_not_hold_up_another_tasks_dispatch(
    world: World,
) -> None:
    """Seen failing with the kill waiting out the grace in the engine's tick
    (``RunningProcess.kill``): the other task's job started only after the stubborn
    job had been SIGKILLed and recorded."""
    stubborn = world.create("S-1", world.tmp_path / "stubborn")
    engine = Engine(world.store, world.settings)
    stop = threading.Event()
    thread, failures = world.run_engine(engine, stop)
    try:
        # Its 1 s timeout fires: SIGTERM, which it outlives for the whole grace.
        wait_for((world.out / "termed").exists, "S-1's agent got its SIGTERM")
        other = world.create("A-1")
        wait_for(lambda: world.events(other, "job.started") != [], "A-1's job started")
        wait_for(lambda: world.store.get_task(stubborn.id).failed, "S-1 stopped and failed")
    finally:
        stop.set()
        thread.join(WAIT_S)
        engine.shutdown(kill=True)
    assert not failures, failures

    [started] = world.events(other, "job.started")
    [killed] = world.events(stubborn, "job.killed")
    assert killed.reason == "timed out after 1s"
    assert started.id < killed.id  # dispatched while the stubborn one outlived SIGTERM
    [run] = world.store.task_runs(stubborn.id)
    assert run.exit_code == 128 + 9  # it took the SIGKILL to end it


# --- a job's limits survive a restart --------------------------------------------------------


def launched_then_orphaned(world: World, task: Task) -> tuple[Engine, Job]:
    """A first engine launches ``task``'s job, then its boot is marked dead (as after a
    SIGKILL): the job runs on with nobody watching it. (The first engine is returned to
    reap its child, the launcher, at the end.)"""
    first = Engine(world.store, world.settings)
    first.recover_on_startup()
    assert first.launch_job(world.store.latest_job(task.id) or pytest.fail("no job"))
    first.runtime.owner.stopped(world.store)
    job = world.store.latest_job(task.id)
    assert job is not None
    assert job.status == "running"
    assert job.pid is not None
    return first, job


def adopt_until_failed(world: World, settings: Settings, task: Task, job: Job) -> Task:
    """A second engine adopts ``job`` and runs until ``task`` failed."""
    engine = Engine(world.store, settings)
    stop = threading.Event()
    thread, failures = world.run_engine(engine, stop)
    try:
        wait_for(lambda: world.store.get_task(task.id).failed, f"{task.work_item} stopped")
    finally:
        stop.set()
        thread.join(WAIT_S)
        engine.shutdown(kill=True)
    assert not failures, failures
    [adopted] = world.events(task, "job.adopted")
    assert (adopted.actor, adopted.job_id) == ("recovery", job.id)
    return world.store.get_task(task.id)


def test_an_adopted_job_is_killed_at_its_own_timeout_not_the_global_one(world: World) -> None:
    """The operator dropped the agent's ``timeout_s`` from orch.toml before the restart;
    the job still runs under the 2 s it started with. Seen failing with the timeout
    resolved again at adoption (``Engine._timeout_of``): the adopted job was watched
    with the global ``agent_timeout_s`` (an hour) and never killed."""
    task = world.create("H-1", world.tmp_path / "hang")
    first, job = launched_then_orphaned(world, task)
    assert (job.timeout_s, job.budget_usd) == (2.0, 0.0)
    relaxed = load_settings(
        write_config(
            world.tmp_path / "restart.toml", world.db_url, world.tmp_path, hang_timeout=False
        )
    )
    assert relaxed.agent_timeout_s == 3600

    try:
        failed = adopt_until_failed(world, relaxed, task, job)
    finally:
        first.shutdown(kill=True)

    [killed] = world.events(task, "job.killed")
    assert killed.reason == "timed out after 2s"
    assert "timed out after 2s" in (failed.failed_reason or "")


def test_an_adopted_job_is_still_stopped_at_its_run_budget(world: World) -> None:
    """Seen failing with no budget watch on adopted jobs (as before 0007): the spender
    ran on past its $1 budget until the test's deadline."""
    task = world.create("B-1", world.tmp_path / "spender")
    first, job = launched_then_orphaned(world, task)
    assert job.budget_usd == 1.0

    try:
        adopt_until_failed(world, world.settings, task, job)
    finally:
        first.shutdown(kill=True)

    [killed] = world.events(task, "job.killed")
    assert killed.reason == "spender went over its run budget of $1.00 ($2.0000 spent)"
