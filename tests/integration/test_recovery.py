"""Restart recovery: what the next engine does with what a dead one left behind.

The dead engine is always a real process (``orch run`` or ``orch serve``) killed with
SIGKILL, so nothing of it runs its shutdown; its agents run in their own sessions under
the launcher and may outlive it. The next engine (in this process, or ``orch serve``
again) then

* adopts a job whose agent still runs, and finishes it from the launcher's exit and
  tail files (the agent runs once);
* requeues, with attempt + 1, a job whose process group is gone without an exit;
* finalizes a job that ended while no engine ran, from its recorded exit (no re-run);
* reclaims the transition leases of dead owners, with an alert;
* completes an effect that was in flight when the server died exactly once: it waits
  while the effect's process still runs, then observes the world — also when the
  default branch moved on meanwhile, and when the deploy prints (no SIGPIPE);
* holds back another task's deploy in the same repository while a dead owner's deploy
  still runs; and a deploy whose owner died before recording its pid never starts.

Agents and the deploy command never sleep a fixed time: they wait for a ``release``
file the test creates once the engine is where the test wants it, so the tests are fast
and their interleaving deterministic. How each test was seen to fail without its
mechanism is noted on the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import sqlalchemy as sa

from orchestrator.engine.core import Engine
from orchestrator.lifecycle.service import TaskService
from orchestrator.lifecycle.transitions import Runtime
from orchestrator.procs.native import LAUNCHERS
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Event, Job, Store, Task
from orchestrator.store.schema import effects

WAIT_S: Final = 30.0
POLL_S: Final = 0.02
COST_USD: Final = 0.25
CLAUDE_RESULT: Final = json.dumps(
    {"type": "result", "total_cost_usd": COST_USD, "usage": {"input_tokens": 10}}
)
# created -> development -> done: one job per task.
ONLY_DEVELOPMENT: Final = [
    "analysis",
    "brd-approval",
    "architecture",
    "testing",
    "deploy-staging",
    "deploy",
]
# Waits (bounded) for the test's go-ahead.
AWAIT_RELEASE: Final = """\
i=0
while [ ! -f "$OUT/release" ]; do
  i=$((i + 1)); if [ "$i" -gt 400 ]; then break; fi
  sleep 0.05
done
"""
# The agent: says it started, waits for the release, does the stage's work, says it ran.
AGENT: Final = f"""\
set -e
echo "$ORCH_ATTEMPT" >> "$OUT/started"
{AWAIT_RELEASE}
echo "x$ORCH_ATTEMPT" >> code.txt
echo "$ORCH_ATTEMPT" >> "$OUT/ran"
echo '{CLAUDE_RESULT}'
"""
DEAD_LEASE_HOLDER: Final = """\
import sys, time
from pathlib import Path
from orchestrator.settings import load_settings
from orchestrator.store import Store
from orchestrator.lifecycle.transitions import Runtime
settings = load_settings(Path(sys.argv[1]))
store = Store.open(settings.effective_database_url)
runtime = Runtime.create(store, settings)
lease = runtime.leases.acquire(store.get_task(int(sys.argv[2])), "development->done", "doomed")
print("held" if lease is not None else "busy", flush=True)
time.sleep(120)
"""


def run_git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@localhost",
    }
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return result.stdout


def make_repo(path: Path) -> Path:
    """A repository on ``main`` with a passing pytest suite (the scripted tester runs it)."""
    (path / "tests").mkdir(parents=True)
    (path / "tests" / "test_ok.py").write_text("def test_ok() -> None:\n    assert True\n")
    (path / "pyproject.toml").write_text('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    (path / ".gitignore").write_text("__pycache__/\n.pytest_cache/\n")
    run_git(path, "init", "--quiet", "-b", "main")
    run_git(path, "add", "--all")
    run_git(path, "commit", "--quiet", "-m", "initial")
    return path


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {timeout_s}s")
        time.sleep(POLL_S)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def kinds(events: list[Event], kind: str) -> list[Event]:
    return [event for event in events if event.kind == kind]


class RecordingNotifier:
    def __init__(self) -> None:
        self.alerts: list[tuple[str | None, str]] = []

    def on_task_changed(self, task: Task, summary: str) -> None:
        pass

    def alert(self, task: Task | None, message: str) -> None:
        self.alerts.append((task.work_item if task else None, message))


@dataclass
class World:
    tmp_path: Path
    db_url: str
    store: Store
    repo: Path
    out: Path
    config: Path = Path()
    settings: Settings | None = None
    # Which launcher the jobs run under (the adoption tests run under both).
    launcher: str = "native"
    engines: list[Engine] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def configure(self, body: str, **values: Any) -> Settings:
        lines = [
            f"database_url = {json.dumps(self.db_url)}",
            f"data_dir = {json.dumps(str(self.tmp_path / 'data'))}",
            "retry_backoff_s = 0",
            f"launcher = {json.dumps(self.launcher)}",
        ]
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        self.config = self.tmp_path / "orch.toml"
        self.config.write_text("\n".join(lines) + "\n" + body)
        self.settings = load_settings(self.config)
        return self.settings

    def configure_agent(self) -> Settings:
        script = self.tmp_path / "agent.sh"
        script.write_text(f"OUT={self.out}\n{AGENT}")
        body = (
            f"\n[agents.sh]\ncommand = {json.dumps(['sh', str(script)])}\n"
            '\n[stages.development]\nagent = "sh"\n'
        )
        return self.configure(body, skip=ONLY_DEVELOPMENT)

    def create(self, work_item: str = "T-1") -> Task:
        assert self.settings is not None
        service = TaskService(self.store, self.settings)
        return service.create_task(repo_path=self.repo, title="Greet", work_item=work_item)

    def engine(self, notifier: RecordingNotifier | None = None) -> Engine:
        assert self.settings is not None
        engine = Engine(self.store, self.settings, notifier)
        self.engines.append(engine)
        return engine

    def orch(
        self, *args: str, log: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``orch --config ... ARGS`` as its own process, output into ``log``."""
        with (self.tmp_path / log).open("ab") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "--config", str(self.config), *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        self.processes.append(process)
        return process

    def job(self, task: Task) -> Job:
        [job] = self.store.task_jobs(task.id)
        return job

    def task(self, task: Task) -> Task:
        return self.store.get_task(task.id)

    def events(self, task: Task) -> list[Event]:
        return self.store.task_events(task.id)

    def crash_while_the_agent_runs(self, task: Task) -> Job:
        """``orch run`` starts the task's job; SIGKILL it while the agent runs."""
        engine = self.orch("run", log="engine-a.log")
        wait_for(lambda: lines(self.out / "started") == ["1"], "the agent started")
        wait_for(lambda: self.job(task).pid is not None, "the job's pid recorded")
        engine.send_signal(signal.SIGKILL)
        engine.wait()
        job = self.job(task)
        assert job.status == "running"
        assert job.pid is not None
        # The job runs under the launcher the settings name.
        program = Path(f"/proc/{job.pid}/exe").resolve().name
        assert program.startswith("launcher-" if self.launcher == "native" else "python")
        return job

    def drive(self, engine: Engine, until: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not until():
            if time.monotonic() > deadline:
                state = [(t.work_item, t.stage, t.failed_reason) for t in self.store.list_tasks()]
                pytest.fail(f"{what}: not reached after {WAIT_S}s; tasks: {state}")
            if not engine.tick():
                time.sleep(POLL_S)

    def done(self, task: Task) -> Callable[[], bool]:
        return lambda: self.task(task).stage == "done" or self.task(task).failed


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    store = Store.open(db_url)
    out = tmp_path / "out"
    out.mkdir()
    made = World(tmp_path, db_url, store, make_repo(tmp_path / "repo"), out)
    try:
        yield made
    finally:
        (out / "release").touch()  # let any agent still waiting end
        for process in made.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for engine in made.engines:
            engine.shutdown(kill=True)
        store.close()


# --- jobs of a dead engine ---------------------------------------------------------------


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_still_running_agent_is_adopted_and_finished_from_its_files(
    world: World, launcher: str
) -> None:
    """Seen failing with adoption disabled in ``requeue_running_jobs`` (a live pid
    treated as gone): no job.adopted event, the running agent's job given up as lost."""
    world.launcher = launcher
    world.configure_agent()
    task = world.create()
    job = world.crash_while_the_agent_runs(task)
    assert job.pid is not None
    assert alive(job.pid)  # the agent outlived its engine

    engine_b = world.engine()
    assert engine_b.boot_id != job.owner_boot_id
    engine_b.tick()  # recovery adopts the job
    adopted = kinds(world.events(task), "job.adopted")
    assert [(e.actor, e.job_id) for e in adopted] == [("recovery", job.id)]
    assert world.job(task).owner_boot_id == engine_b.boot_id
    assert [j.id for j in engine_b.running_jobs()] == [job.id]
    (world.out / "release").touch()
    world.drive(engine_b, world.done(task), "the task done")

    done = world.task(task)
    assert (done.stage, done.failed_reason) == ("done", None)
    assert lines(world.out / "started") == ["1"]
    assert lines(world.out / "ran") == ["1"]  # the agent ran exactly once
    finished = world.job(task)
    assert (finished.status, finished.attempt, finished.pid) == ("done", 1, job.pid)
    run = world.store.job_run(job.id)
    assert run is not None
    # Exit code from the launcher's exit file, cost from its tail file.
    assert (run.exit_code, run.cost_usd) == (0, COST_USD)
    events = world.events(task)
    assert kinds(events, "job.retry") == []
    assert len(kinds(events, "job.exited")) == 1
    assert run_git(world.repo, "show", f"{done.branch}:code.txt").split() == ["x1"]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_job_gone_without_an_exit_is_requeued_with_the_next_attempt(
    world: World, launcher: str
) -> None:
    """Seen failing with the "gone" branch of ``requeue_running_jobs`` skipped: the
    job stayed running forever (the drive timed out)."""
    world.launcher = launcher
    world.configure_agent()
    task = world.create()
    job = world.crash_while_the_agent_runs(task)
    assert job.pid is not None
    os.killpg(job.pid, signal.SIGKILL)  # the launcher leads the group: no exit file
    wait_for(lambda: not alive(job.pid or 0), "the launcher gone")
    run = world.store.job_run(job.id)
    assert run is not None
    assert not Path(run.log_path).with_suffix(".exit").exists()
    (world.out / "release").touch()

    engine_b = world.engine()
    world.drive(engine_b, world.done(task), "the task done")

    done = world.task(task)
    assert (done.stage, done.failed_reason) == ("done", None)
    first, second = world.store.task_jobs(task.id)
    assert (first.id, first.attempt, first.status) == (job.id, 1, "failed")
    assert first.error == "the job was lost with the previous orchestrator process"
    assert (second.attempt, second.status) == (2, "done")
    assert [r.exit_code for r in world.store.task_runs(task.id)] == [-1, 0]
    events = world.events(task)
    assert [e.actor for e in kinds(events, "job.retry")] == ["engine"]
    assert kinds(events, "job.adopted") == []
    assert lines(world.out / "started") == ["1", "2"]
    assert lines(world.out / "ran") == ["2"]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_job_that_ended_while_no_engine_ran_is_finalized_not_rerun(
    world: World, launcher: str
) -> None:
    """Seen failing with the recorded exit ignored in ``requeue_running_jobs`` (exit
    taken as -1): the job was retried and the agent's side file had two lines."""
    world.launcher = launcher
    world.configure_agent()
    task = world.create()
    job = world.crash_while_the_agent_runs(task)
    run = world.store.job_run(job.id)
    assert run is not None
    exit_file = Path(run.log_path).with_suffix(".exit")
    (world.out / "release").touch()  # the agent finishes with no engine running
    wait_for(exit_file.exists, "the launcher's exit file")
    wait_for(lambda: not alive(job.pid or 0), "the launcher gone")
    assert exit_file.read_text() == "0"

    engine_b = world.engine()
    world.drive(engine_b, world.done(task), "the task done")

    done = world.task(task)
    assert (done.stage, done.failed_reason) == ("done", None)
    assert lines(world.out / "ran") == ["1"]  # not re-run
    finished = world.job(task)
    assert (finished.status, finished.attempt) == ("done", 1)
    run = world.store.job_run(job.id)
    assert run is not None
    assert (run.exit_code, run.cost_usd) == (0, COST_USD)
    events = world.events(task)
    assert kinds(events, "job.retry") == []
    assert kinds(events, "job.adopted") == []
    [exited] = kinds(events, "job.exited")
    assert exited.actor == "engine"


# --- leases of dead owners ---------------------------------------------------------------


def test_recovery_reclaims_the_leases_of_dead_owners_only(world: World) -> None:
    """Three leases: one of a process killed with SIGKILL, one of an instance recorded
    as stopped, one of a live owner. Recovery releases the first two, with an event and
    an alert each, and leaves the live one alone.

    Seen failing with ``reclaim_stale`` removed from ``recover_on_startup`` (no event,
    no alert, leases still held) and with ``reclaim_stale`` ignoring liveness (the live
    owner's lease was released too)."""
    world.configure_agent()
    dead, stopped, live = (world.create(f"L-{n}") for n in (1, 2, 3))
    holder = subprocess.Popen(
        [sys.executable, "-c", DEAD_LEASE_HOLDER, str(world.config), str(dead.id)],
        stdout=subprocess.PIPE,
    )
    world.processes.append(holder)
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"held\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    assert world.settings is not None
    gone = Runtime.create(world.store, world.settings, boot_id="stopped-instance")
    assert gone.leases.acquire(stopped, "development->done", "stopper") is not None
    gone.owner.stopped(world.store)  # this process lives on; that instance does not
    keeper = Runtime.create(world.store, world.settings)
    assert keeper.leases.acquire(live, "development->done", "keeper") is not None
    assert len(keeper.leases.held()) == 3

    notifier = RecordingNotifier()
    engine = world.engine(notifier)
    engine.recover_on_startup()

    held = engine.runtime.leases.held()
    assert [(info.task_id, info.live) for info in held] == [(live.id, True)]
    for task in (dead, stopped):
        [released] = kinds(world.events(task), "lease.force_released")
        assert released.actor == "recovery"
        assert "owner is gone" in released.reason
        # Free for the next owner, under a new epoch.
        lease = engine.runtime.leases.acquire(task, "development->done", "next")
        assert lease is not None
        assert lease.epoch == 2
    assert kinds(world.events(live), "lease.force_released") == []
    assert sorted(work_item or "" for work_item, _ in notifier.alerts) == ["L-1", "L-2"]
    assert all("force-released by recovery" in message for _, message in notifier.alerts)


# --- an effect in flight when the server died ---------------------------------------------

DEPLOY: Final = """\
echo "$ORCH_WORK_ITEM" >> "$OUT/deploy-starts"
{await_release}
echo "$ORCH_WORK_ITEM $ORCH_DEPLOY_COMMIT" >> "$OUT/deploys.log"
"""
SCRIPTED_STAGES: Final = ("analysis", "architecture", "development", "testing")
# The scripted agents' recipe: one code change, and a test command that starts fast (the
# default, pytest, would double the pipeline's time without testing anything here).
RECIPE: Final = """\
[[files]]
path = "greet.py"
content = "def greet(name: str) -> str:\\n    return 'Hello, ' + name\\n"

[testing]
command = ["sh", "-c", "echo '1 passed'"]
"""


def deploy_intent_pid(store: Store, task: Task) -> int | None:
    """The pid the journal recorded for the task's unfinished deploy, if any."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(effects.c.result).where(
                effects.c.task_id == task.id,
                effects.c.effect == "deploy",
                effects.c.status == "intent",
            )
        ).all()
    pids = [int((row.result or {}).get("pid") or 0) for row in rows]
    return next((pid for pid in pids if pid), None)


def merges_of(repo: Path, work_item: str) -> int:
    subjects = run_git(repo, "log", "--merges", "--format=%s", "main").splitlines()
    return sum(1 for subject in subjects if f": {work_item} " in subject)


def test_an_effect_in_flight_at_sigkill_completes_exactly_once_after_restart(
    world: World,
) -> None:
    """``orch serve`` is SIGKILLed while ``deploy -> done`` runs its deploy command
    (intent journaled with the command's pid, no completion). The command lives on in
    its own session. The restarted server reclaims the lease, finds the merge done in
    the world, waits while the deploy still runs, then sees it done through
    ``deploy_check_command``: one deploy, one merge.

    Seen failing with ``self._wait_for_in_flight(...)`` commented out in
    ``Journal.run``: the restarted server ran the deploy command a second time
    (two starts, two lines in deploys.log)."""
    deploy = world.tmp_path / "deploy.sh"
    deploy.write_text(f"OUT={world.out}\n" + DEPLOY.format(await_release=AWAIT_RELEASE))
    deploys = world.out / "deploys.log"
    recipe = world.tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    # The recipe reaches the agent through its own env (orch's environment does not).
    body = (
        "\n[agents.scripted]\n"
        'command = ["{python}", "-m", "orchestrator.agents.scripted", "--stage", "{stage}"]\n'
        f"env = {{ ORCH_SCRIPTED_RECIPE = {json.dumps(str(recipe))} }}\n"
    )
    body += "".join(f'\n[stages.{stage}]\nagent = "scripted"\n' for stage in SCRIPTED_STAGES)
    check = f"tail -n 1 {deploys} 2>/dev/null | cut -d' ' -f2"
    body += (
        f"\n[repos.{world.repo.name}]\n"
        f"deploy_command = {json.dumps(['sh', str(deploy)])}\n"
        f"deploy_check_command = {json.dumps(['sh', '-c', check])}\n"
    )
    # No grace: the restarted reconciler may repair the interrupted transition at once.
    world.configure(body, skip=["brd-approval"], reaper_finalize_grace_s=0, port=free_port())
    task = world.create("D-1")

    first = world.orch("serve", log="serve-1.log")
    wait_for(lambda: lines(world.out / "deploy-starts") == ["D-1"], "the deploy started", 60)
    wait_for(lambda: deploy_intent_pid(world.store, task) is not None, "the deploy's pid")
    first.send_signal(signal.SIGKILL)
    first.wait()
    deploy_pid = deploy_intent_pid(world.store, task)
    assert deploy_pid is not None
    assert alive(deploy_pid)  # in its own session: the deploy survived the server
    assert world.task(task).stage == "deploy"
    assert merges_of(world.repo, "D-1") == 1  # merged before the deploy started

    second = world.orch("serve", log="serve-2.log")

    def waiting_or_rerun() -> bool:
        waits = [e for e in kinds(world.events(task), "transition.deferred") if "still" in e.reason]
        return bool(waits) or len(lines(world.out / "deploy-starts")) > 1

    wait_for(waiting_or_rerun, "the restarted server waiting for the deploy in flight")
    (world.out / "release").touch()
    wait_for(lambda: world.task(task).stage == "done", "the task done after the restart")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=WAIT_S) == 0

    done = world.task(task)
    assert done.failed_reason is None
    assert lines(world.out / "deploy-starts") == ["D-1"]
    assert [line.split()[0] for line in deploys.read_text().splitlines()] == ["D-1"]
    assert merges_of(world.repo, "D-1") == 1
    assert "Hello" in run_git(world.repo, "show", "main:greet.py")
    events = world.events(task)
    assert [e.actor for e in kinds(events, "lease.force_released")] == ["recovery"]
    assert [(e.from_stage, e.to_stage) for e in kinds(events, "stage.changed")][-1] == (
        "deploy",
        "done",
    )
    assert len([e for e in kinds(events, "stage.changed") if e.to_stage == "done"]) == 1
    journal = world.engine().runtime.journal.history(task.id)
    done_rows = [(row["effect"], (row["result"] or {}).get("reconciled")) for row in journal]
    assert ("merge", True) in done_rows  # found merged in the world, not merged again
    deploy_rows = [row for row in journal if row["effect"] == "deploy"]
    assert [row["status"] for row in deploy_rows] == ["interrupted", "done"]
    assert (deploy_rows[-1]["result"] or {}).get("reconciled") is True


# --- two tasks, one repository: a deploy left running holds back the next -------------------

ACTOR_DEPLOY: Final = """\
echo "$ORCH_WORK_ITEM" >> "$OUT/deploy-starts"
if [ "$ORCH_WORK_ITEM" = D-1 ]; then
{await_release}
fi
echo "$ORCH_WORK_ITEM $ORCH_DEPLOY_COMMIT" >> "$OUT/deploys.log"
"""


def test_a_deploy_left_running_by_a_killed_owner_holds_back_the_next_deploy_of_its_repo(
    world: World,
) -> None:
    """D-1's owner (an actor process entering ``deploy -> done``) is SIGKILLed while
    D-1's deploy runs; the deploy lives on. D-2, in the same repository, must not
    deploy before it ends, or D-2's newer commit would be deployed first and D-1's
    older one last: the service would run without D-2's change. D-2 defers while D-1's
    deploy runs, deploys after it; D-1's restarted transition finds its change deployed.

    Seen failing with the journal's in-flight wait limited to the task's own intents
    (the journal before this test, run from a copy of ``src/`` on ``PYTHONPATH``):
    recovery's finalization of D-2's job crossed at once, deploying D-2 while D-1's
    deploy still ran (the explicit entry then ``LOST``, not ``DEFERRED``)."""
    from orchestrator.lifecycle.transitions import Crossing, enter_transition
    from orchestrator.testing.actors import prepare_deploy_task

    deploy = world.tmp_path / "deploy.sh"
    deploy.write_text(f"OUT={world.out}\n" + ACTOR_DEPLOY.format(await_release=AWAIT_RELEASE))
    deploys = world.out / "deploys.log"
    check = f"tail -n 1 {deploys} 2>/dev/null | cut -d' ' -f2"
    world.configure(
        f"\n[repos.{world.repo.name}]\n"
        f"deploy_command = {json.dumps(['sh', str(deploy)])}\n"
        f"deploy_check_command = {json.dumps(['sh', '-c', check])}\n"
    )
    first, second = (
        prepare_deploy_task(world.store, world.repo, world.tmp_path / "wt", item)
        for item in ("D-1", "D-2")
    )
    go = world.tmp_path / "go"
    go.touch()
    owner = subprocess.Popen(
        [
            *(sys.executable, "-m", "orchestrator.testing.actors"),
            *("cli", str(world.config), str(go), str(first.id)),
        ],
        stdout=subprocess.DEVNULL,
    )
    world.processes.append(owner)
    wait_for(lambda: deploy_intent_pid(world.store, first) is not None, "D-1's deploy running")
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    orphan = deploy_intent_pid(world.store, first)
    assert orphan is not None
    assert alive(orphan)

    engine = world.engine()
    engine.recover_on_startup()  # D-1's lease: its owner is gone
    # Recovery's finalizations hand both crossings to the engine's pool: let them end.
    assert engine.wait_for_crossings(60)
    crossing = enter_transition(engine.runtime, second, "deploy", "done", actor="cli", reason="x")
    assert crossing is Crossing.DEFERRED
    # Recovery's finalization of D-2's job deferred already; the explicit entry again.
    deferred = kinds(world.events(second), "transition.deferred")
    assert deferred
    assert all("merge waits: deploy of D-1 (epoch 1)" in e.reason for e in deferred)
    assert lines(world.out / "deploy-starts") == ["D-1"]

    (world.out / "release").touch()
    wait_for(lambda: not alive(orphan), "D-1's deploy ended")
    crossing = enter_transition(engine.runtime, second, "deploy", "done", actor="cli", reason="x")
    assert crossing is Crossing.DONE
    crossing = enter_transition(engine.runtime, first, "deploy", "done", actor="cli", reason="x")
    assert crossing is Crossing.DONE

    deployed = [line.split() for line in deploys.read_text().splitlines()]
    assert [item for item, _ in deployed] == ["D-1", "D-2"]
    # D-2's deploy is the newer commit: it contains D-1's.
    run_git(world.repo, "merge-base", "--is-ancestor", deployed[0][1], deployed[1][1])
    assert lines(world.out / "deploy-starts") == ["D-1", "D-2"]
    for task in (first, second):
        assert world.task(task).stage == "done"
        assert merges_of(world.repo, task.work_item) == 1


def test_a_deploy_finished_unrecorded_is_not_rerun_after_the_default_branch_moved(
    world: World,
) -> None:
    """D-1's owner is SIGKILLed while D-1's deploy runs; the deploy finishes with no
    owner to record it. Meanwhile another change lands on ``main``. The restarted
    transition must see D-1's change deployed (the deployed commit carries it), though
    the deployed commit is no longer ``main``'s head: one deploy, not two.

    Found by ``bench/chaos.py`` (``CHAOS-3 deployed 2 times``). Seen failing with
    ``DeployEffect.observe`` comparing the deployed commit with ``main``'s head only
    (as before this test): D-1 was deployed a second time (two lines in deploys.log)."""
    from orchestrator.lifecycle.transitions import Crossing, enter_transition
    from orchestrator.testing.actors import prepare_deploy_task

    deploy = world.tmp_path / "deploy.sh"
    deploy.write_text(f"OUT={world.out}\n" + ACTOR_DEPLOY.format(await_release=AWAIT_RELEASE))
    deploys = world.out / "deploys.log"
    check = f"tail -n 1 {deploys} 2>/dev/null | cut -d' ' -f2"
    world.configure(
        f"\n[repos.{world.repo.name}]\n"
        f"deploy_command = {json.dumps(['sh', str(deploy)])}\n"
        f"deploy_check_command = {json.dumps(['sh', '-c', check])}\n"
    )
    task = prepare_deploy_task(world.store, world.repo, world.tmp_path / "wt", "D-1")
    go = world.tmp_path / "go"
    go.touch()
    owner = subprocess.Popen(
        [
            *(sys.executable, "-m", "orchestrator.testing.actors"),
            *("cli", str(world.config), str(go), str(task.id)),
        ],
        stdout=subprocess.DEVNULL,
    )
    world.processes.append(owner)
    wait_for(lambda: deploy_intent_pid(world.store, task) is not None, "D-1's deploy running")
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    orphan = deploy_intent_pid(world.store, task)
    assert orphan is not None
    (world.out / "release").touch()
    wait_for(lambda: not alive(orphan), "D-1's deploy ended, unrecorded")
    [(_, deployed)] = [line.split() for line in deploys.read_text().splitlines()]
    # Someone else's change lands on main.
    (world.repo / "other.txt").write_text("another change\n")
    run_git(world.repo, "add", "other.txt")
    run_git(world.repo, "commit", "--quiet", "-m", "another change")
    assert run_git(world.repo, "rev-parse", "main").strip() != deployed

    engine = world.engine()
    engine.recover_on_startup()  # reclaims the lease, and finalizes D-1's job
    assert engine.wait_for_crossings(60)  # the crossing recovery handed over
    if world.task(task).stage != "done":
        crossing = enter_transition(engine.runtime, task, "deploy", "done", actor="cli", reason="x")
        assert crossing is Crossing.DONE

    assert world.task(task).stage == "done"
    assert lines(world.out / "deploy-starts") == ["D-1"]
    assert [line.split()[0] for line in deploys.read_text().splitlines()] == ["D-1"]
    deploy_rows = [r for r in engine.runtime.journal.history(task.id) if r["effect"] == "deploy"]
    assert [r["status"] for r in deploy_rows] == ["interrupted", "done"]
    assert (deploy_rows[-1]["result"] or {}).get("reconciled") is True
    assert (deploy_rows[-1]["result"] or {}).get("deployed_commit") == deployed


# The deploy prints as it goes, as real deploys do.
TALKING_DEPLOY: Final = """\
echo "$ORCH_WORK_ITEM" >> "$OUT/deploy-starts"
echo "deploying $ORCH_DEPLOY_COMMIT"
{await_release}
echo "still deploying"
echo "$ORCH_WORK_ITEM $ORCH_DEPLOY_COMMIT" >> "$OUT/deploys.log"
echo "deployed"
"""


def test_a_deploy_that_prints_outlives_its_killed_owner(world: World) -> None:
    """The owner of ``deploy -> done`` is SIGKILLed while a deploy that writes to its
    stdout runs; the deploy must run to its end (not die on its next line of output),
    and the restarted transition must find it done: one start, one deploy.

    Seen failing with the deploy's stdout a pipe to its owner (as before this test):
    the orphaned deploy died of SIGPIPE at its next ``echo``, deploys.log stayed empty,
    and the restarted transition started the deploy a second time."""
    from orchestrator.lifecycle.transitions import Crossing, enter_transition
    from orchestrator.testing.actors import prepare_deploy_task

    deploy = world.tmp_path / "deploy.sh"
    deploy.write_text(f"OUT={world.out}\n" + TALKING_DEPLOY.format(await_release=AWAIT_RELEASE))
    deploys = world.out / "deploys.log"
    check = f"tail -n 1 {deploys} 2>/dev/null | cut -d' ' -f2"
    world.configure(
        f"\n[repos.{world.repo.name}]\n"
        f"deploy_command = {json.dumps(['sh', str(deploy)])}\n"
        f"deploy_check_command = {json.dumps(['sh', '-c', check])}\n"
    )
    task = prepare_deploy_task(world.store, world.repo, world.tmp_path / "wt", "D-1")
    go = world.tmp_path / "go"
    go.touch()
    owner = subprocess.Popen(
        [
            *(sys.executable, "-m", "orchestrator.testing.actors"),
            *("cli", str(world.config), str(go), str(task.id)),
        ],
        stdout=subprocess.DEVNULL,
    )
    world.processes.append(owner)
    wait_for(lambda: deploy_intent_pid(world.store, task) is not None, "D-1's deploy running")
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    orphan = deploy_intent_pid(world.store, task)
    assert orphan is not None
    (world.out / "release").touch()
    wait_for(lambda: not alive(orphan), "D-1's deploy ended")

    engine = world.engine()
    engine.recover_on_startup()
    assert engine.wait_for_crossings(60)  # the crossing recovery handed over
    if world.task(task).stage != "done":
        crossing = enter_transition(engine.runtime, task, "deploy", "done", actor="cli", reason="x")
        assert crossing is Crossing.DONE

    assert world.task(task).stage == "done"
    assert lines(world.out / "deploy-starts") == ["D-1"]
    assert [line.split()[0] for line in deploys.read_text().splitlines()] == ["D-1"]


# An owner that dies right after starting the deploy, before the journal records the
# deploy's process: it prints the pid it was given, then exits at once.
DIES_AT_SPAWN: Final = """\
import os, sys
from pathlib import Path
from orchestrator.settings import load_settings
from orchestrator.effects.merge_deploy import effects_for
from orchestrator.store import Store
settings = load_settings(Path(sys.argv[1]))
store = Store.open(settings.effective_database_url)
task = store.get_task(int(sys.argv[2]))
[deploy] = [e for e in effects_for(settings, task, "deploy", "done") if e.name == "deploy"]
def die(pid):
    print(pid, flush=True)
    os._exit(3)
deploy.perform(die)
"""


def test_an_owner_dead_before_recording_the_deploys_process_leaves_no_deploy(
    world: World,
) -> None:
    """Between starting the deploy command and recording its pid in the journal there
    is a moment in which a SIGKILL leaves a deploy running that recovery cannot wait
    for: the restarted server would start a second one beside it. The deploy therefore
    waits, before it does anything, for its owner's word that its pid is recorded; an
    owner that dies first leaves no deploy behind.

    Seen failing with the deploy started directly (as before this test): the orphan
    ran and deploys.log had its line."""
    deploys = world.out / "deploys.log"
    deploy = ["sh", "-c", f'echo "$ORCH_WORK_ITEM $ORCH_DEPLOY_COMMIT" >> {deploys}']
    world.configure(f"\n[repos.{world.repo.name}]\ndeploy_command = {json.dumps(deploy)}\n")
    from orchestrator.testing.actors import prepare_deploy_task

    task = prepare_deploy_task(world.store, world.repo, world.tmp_path / "wt", "D-1")
    owner = subprocess.run(
        [sys.executable, "-c", DIES_AT_SPAWN, str(world.config), str(task.id)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert owner.returncode == 3, owner.stderr
    pid = int(owner.stdout)
    wait_for(lambda: not alive(pid), "the deploy's process ended")
    assert not deploys.exists()
