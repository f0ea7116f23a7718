"""The reaper against real git, real shell agents and real process groups.

ORCH-065 (tier 2, known outcome): a job whose exit is recorded but which is still
``finalizing`` is reaped only after ``reaper_finalize_grace_s``; the reaper claims the
job's terminal status before it acts, so a reaper that loses the claim to the monitor
(or a monitor that loses it to the reaper) performs no side effect; reaping a job whose
task already moved on changes nothing.

Tier 3 (backstop): a job running longer than ``reaper_max_running_s`` is tree-killed
with every grandchild, failed (then retried or the task failed, per ``max_attempts``)
and its task's transition lease force-released, whether the job belongs to the
reaper's own engine or to another engine instance that no longer watches it.

A "paused monitor" is an :class:`Engine` whose monitor records the job's exit and then
stops before finalizing: exactly the window in which ORCH-065's reaper used to strike.
Calling its held ``finalize`` later plays the monitor's part at a chosen moment; a hook
in ``evaluate`` (between an actor's read of the task and its claim) lets the other
actor run to completion there, so "who loses the claim" is deterministic.

How each test was seen to fail without its mechanism is noted on the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from support import make_repo

from orchestrator.engine.core import Engine
from orchestrator.kernel.failures import FailureKind
from orchestrator.kernel.gates import Verdict
from orchestrator.lifecycle.crossings import CrossingPool
from orchestrator.lifecycle.finalizer import Finalizer
from orchestrator.lifecycle.service import TaskService
from orchestrator.lifecycle.transitions import Runtime
from orchestrator.maintenance.reaper import Reaper
from orchestrator.maintenance.services import Maintenance
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Event, Job, Store, Task
from orchestrator.testing.clock import FakeClock
from orchestrator.workspace.commit_policy import CommitPlan

WAIT_S: Final = 20.0
POLL_S: Final = 0.02
BRD_TEXT: Final = "The business requirements: greet the user by name, politely."
# analysis -> development -> done: two job stages, so an advance enqueues a next job.
SKIP: Final = ["brd-approval", "architecture", "testing", "deploy-staging", "deploy"]
# What each stage writes so that its gate passes.
STAGE_WORK: Final = f"""\
case "$ORCH_STAGE" in
  analysis)
    mkdir -p "$ORCH_ARTIFACT_DIR"
    echo "{BRD_TEXT}" > "$ORCH_ARTIFACT_DIR/01-brd.md" ;;
  development)
    echo "x$ORCH_ATTEMPT" >> code.txt ;;
esac
"""
# Tier 3's hung agent: it and an inner shell record their pids, the inner shell starts
# two grandchildren that never end, and waits for them.
HANG: Final = """\
if [ "$ORCH_STAGE" = analysis ] && [ "$ORCH_ATTEMPT" = 1 ]; then
  echo $$ >> "$OUT/pids"
  sh -c 'echo $$ >> "$1"; sleep 300 & echo $! >> "$1"; sleep 300 & echo $! >> "$1"; wait' \\
    hang "$OUT/pids"
fi
"""
HANG_PIDS: Final = 4


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


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {timeout_s}s")
        time.sleep(POLL_S)


def drive(engine: Engine, until: Callable[[], bool], what: str) -> None:
    """Tick ``engine`` until ``until()``; fail after a deadline instead of hanging."""
    deadline = time.monotonic() + WAIT_S
    while not until():
        if time.monotonic() > deadline:
            tasks = [(t.work_item, t.stage, t.failed_reason) for t in engine.store.list_tasks()]
            pytest.fail(f"{what}: not reached after {WAIT_S}s; tasks: {tasks}")
        if not engine.tick():
            time.sleep(POLL_S)


class PausableFinalizer(Finalizer):
    """A finalizer whose monitor can pause after recording an exit, and whose gate
    evaluation can let another actor run first (between its read and its claim)."""

    def __init__(self, runtime: Runtime, crossings: CrossingPool) -> None:
        super().__init__(runtime, crossings)
        self.hold_monitor = False
        self.held: list[tuple[Job, int | None, str | None, str]] = []
        self.during_evaluate: Callable[[], None] | None = None

    def finalize(
        self,
        job: Job,
        exit_code: int | None,
        error: str | None,
        output: str,
        *,
        actor: str = "engine",
        failure: FailureKind | None = None,
    ) -> bool:
        if actor == "engine" and self.hold_monitor:
            self.held.append((job, exit_code, error, output))
            return False  # still "finalizing": pushing, commenting, ...
        return super().finalize(job, exit_code, error, output, actor=actor, failure=failure)

    def resume_monitor(self) -> bool:
        """The paused monitor finalizes now, as it would have."""
        self.hold_monitor = False
        [(job, exit_code, error, output)] = self.held
        return self.finalize(job, exit_code, error, output)

    def evaluate(self, task: Task, job: Job, plan: CommitPlan | None = None) -> Verdict:
        verdict = super().evaluate(task, job, plan)
        hook, self.during_evaluate = self.during_evaluate, None
        if hook is not None:
            hook()
        return verdict


class Actor(Engine):
    """An engine (with its own reaper) on a fake clock, finalizing through a
    :class:`PausableFinalizer`."""

    def __init__(self, store: Store, settings: Settings, clock: FakeClock) -> None:
        super().__init__(store, settings, runtime=Runtime.create(store, settings, clock=clock))
        self.paused = PausableFinalizer(self.runtime, self.crossings)
        self.finalizer = self.paused
        self.services = Maintenance.create(self.paused, self.kill_job)

    def reaper(self) -> Reaper:
        return self.services.reaper


@dataclass
class World:
    tmp_path: Path
    db_url: str
    store: Store
    repo: Path
    out: Path
    settings: Settings | None = None
    engines: list[Engine] = field(default_factory=list)
    # Every actor's clock: tier 3 skips ahead past the ceiling instead of sleeping.
    clock: FakeClock = field(default_factory=FakeClock)

    def configure(self, agent_lines: str = "", **values: Any) -> Settings:
        script = self.tmp_path / "agent.sh"
        script.write_text(f"set -e\nOUT={self.out}\n{agent_lines}\n{STAGE_WORK}")
        lines = [
            f"database_url = {json.dumps(self.db_url)}",
            f"data_dir = {json.dumps(str(self.tmp_path / 'data'))}",
            "retry_backoff_s = 0",
            f"skip = {json.dumps(SKIP)}",
        ]
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines += ["", "[agents.sh]", f"command = {json.dumps(['sh', str(script)])}"]
        for stage in ("analysis", "development"):
            lines += ["", f"[stages.{stage}]", 'agent = "sh"']
        self.config = self.tmp_path / "orch.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.settings = load_settings(self.config)
        return self.settings

    def actor(self, **overrides: Any) -> Actor:
        assert self.settings is not None
        engine = Actor(self.store, self.settings.model_copy(update=overrides), self.clock)
        self.engines.append(engine)
        return engine

    def create(self, work_item: str = "T-1") -> Task:
        assert self.settings is not None
        service = TaskService(self.store, self.settings)
        return service.create_task(repo_path=self.repo, title="Greet", work_item=work_item)

    def task(self, task: Task) -> Task:
        return self.store.get_task(task.id)

    def events(self, task: Task) -> list[Event]:
        return self.store.task_events(task.id)

    def paused_at_finalize(self, task: Task) -> tuple[Actor, Job]:
        """Run the task's first job; its monitor records the exit, then pauses."""
        monitor = self.actor()
        monitor.paused.hold_monitor = True
        drive(monitor, lambda: bool(monitor.paused.held), "the agent's exit")
        [job] = self.store.task_jobs(task.id)
        assert job.status == "finalizing"
        run = self.store.job_run(job.id)
        assert run is not None
        assert run.exit_code == 0
        assert run.exit_recorded_at is not None
        return monitor, job


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    store = Store.open(db_url)
    out = tmp_path / "out"
    out.mkdir()
    made = World(tmp_path, db_url, store, make_repo(tmp_path / "repo"), out)
    try:
        yield made
    finally:
        for engine in made.engines:
            engine.shutdown(kill=True)
        store.close()


def by(events: list[Event], kind: str, actor: str | None = None) -> list[Event]:
    return [e for e in events if e.kind == kind and (actor is None or e.actor == actor)]


# --- ORCH-065: tier 2 ------------------------------------------------------------------


def test_a_finalizing_job_inside_the_grace_window_is_not_reaped(world: World) -> None:
    """Seen failing with ``overdue_finalizing`` ignoring ``grace_s`` (the pre-ORCH-065
    "exit recorded -> reap now"): the first sweep reaped the live monitor's job."""
    world.configure(reaper_finalize_grace_s=300)
    task = world.create()
    monitor, job = world.paused_at_finalize(task)
    before = world.events(task)

    assert monitor.reaper().reap_known_outcomes() == 0

    assert world.store.get_job(job.id).status == "finalizing"
    assert world.task(task).stage == "analysis"
    assert world.events(task) == before  # not even a reaper event
    assert len(world.store.task_jobs(task.id)) == 1

    # Past the grace period (0 here) the reaper finalizes it: the task advances once.
    reaper = world.actor(reaper_finalize_grace_s=0.0)
    assert reaper.reaper().reap_known_outcomes() == 1

    assert world.store.get_job(job.id).status == "done"
    moved = world.task(task)
    assert (moved.stage, moved.failed_reason) == ("development", None)
    # The paused monitor wakes up afterwards: it loses and changes nothing.
    assert monitor.paused.resume_monitor() is False
    assert reaper.reaper().reap_known_outcomes() == 0
    events = world.events(task)
    changes = by(events, "stage.changed")
    assert [(e.from_stage, e.to_stage, e.actor) for e in changes] == [
        ("created", "analysis", "cli"),
        ("analysis", "development", "reaper"),
    ]
    assert [e.actor for e in by(events, "reaper.tier2")] == ["reaper"]
    assert [(e.to_stage, e.actor) for e in by(events, "job.enqueued")] == [
        ("analysis", "cli"),
        ("development", "reaper"),
    ]
    assert [j.stage for j in world.store.task_jobs(task.id)] == ["analysis", "development"]


@pytest.mark.parametrize("winner", ["monitor", "reaper"])
def test_the_actor_that_loses_the_claim_performs_no_side_effect(world: World, winner: str) -> None:
    """Both actors read the task while it is still in analysis; the winner runs to the
    end between the loser's read and its claim.

    Seen failing with the claim made after the act (the ORCH-065 order) and with the
    claim's result ignored in ``apply_decision``: the loser added its own gate.verdict
    and a transition.lost event; with the stage CAS also unconditional (kill-switch
    off) the loser advanced again and enqueued a second development job."""
    world.configure(reaper_finalize_grace_s=300)  # the monitor's own sweeps wait
    task = world.create()
    monitor, job = world.paused_at_finalize(task)
    reaper = world.actor(reaper_finalize_grace_s=0.0)
    outcomes: list[object] = []
    loser = "reaper" if winner == "monitor" else "engine"

    if winner == "monitor":
        reaper.paused.during_evaluate = lambda: outcomes.append(monitor.paused.resume_monitor())
        assert reaper.reaper().reap_known_outcomes() == 0
        assert outcomes == [True]
        # A reaper that comes later still (plain sequence) loses the same way.
        assert reaper.finalizer.finalize(job, 0, None, "", actor="reaper") is False
    else:
        reap = reaper.reaper().reap_known_outcomes
        monitor.paused.during_evaluate = lambda: outcomes.append(reap())
        assert monitor.paused.resume_monitor() is False
        assert outcomes == [1]

    events = world.events(task)
    winner_actor = "engine" if winner == "monitor" else "reaper"
    assert [(e.from_stage, e.to_stage, e.actor) for e in by(events, "stage.changed")] == [
        ("created", "analysis", "cli"),
        ("analysis", "development", winner_actor),
    ]
    assert [(e.to_stage, e.actor) for e in by(events, "job.enqueued")] == [
        ("analysis", "cli"),
        ("development", winner_actor),
    ]
    verdicts = by(events, "gate.verdict")
    assert [(e.job_id, e.actor) for e in verdicts] == [(job.id, winner_actor)]
    # The loser's only trace: the reaper saying why it looked (if it was the reaper).
    after_exit = [e for e in events if e.id > by(events, "job.exited")[0].id]
    loser_events = [e.kind for e in after_exit if e.actor == loser]
    assert loser_events == (["reaper.tier2"] if loser == "reaper" else [])
    assert world.store.get_job(job.id).status == "done"
    jobs = world.store.task_jobs(task.id)
    assert [(j.stage, j.status) for j in jobs] == [("analysis", "done"), ("development", "queued")]
    # One commit of the stage's work on the task branch: the loser committed nothing.
    subjects = run_git(world.repo, "log", "--format=%s", f"orch/{task.work_item}").splitlines()
    assert subjects.count(f"{task.work_item}: analysis (attempt 1)") == 1
    assert world.task(task).stage == "development"


def test_reaping_a_job_whose_task_already_moved_on_changes_nothing(world: World) -> None:
    """Seen failing with the "task moved" guard removed from ``Engine.finalize``: the
    reaper claimed the stale job as done (a verdict on a stage the task had left); with
    the stage CAS also unconditional it reaped it and re-advanced the task."""
    world.configure(reaper_finalize_grace_s=300)  # the monitor's own sweeps wait
    task = world.create()
    monitor, job = world.paused_at_finalize(task)
    # Someone else (an operator, another engine) moved the task on meanwhile.
    assert world.store.update_task_stage_cas(task.id, "analysis", "development")
    moved = world.task(task)
    before = world.events(task)

    reaper = world.actor(reaper_finalize_grace_s=0.0)
    assert reaper.reaper().reap_known_outcomes() == 0

    after = world.task(task)
    assert (after.stage, after.version, after.failed_reason) == ("development", moved.version, None)
    assert [j.id for j in world.store.task_jobs(task.id)] == [job.id]  # no new job
    ended = world.store.get_job(job.id)
    assert ended.status == "failed"  # closed as stale, so no one reaps it again
    assert ended.error is not None
    assert ended.error.startswith("task moved")
    new_kinds = [e.kind for e in world.events(task)[len(before) :]]
    assert "stage.changed" not in new_kinds
    assert "job.enqueued" not in new_kinds
    assert "gate.verdict" not in new_kinds
    assert "transition.lost" not in new_kinds

    # Idempotent: sweeping again, or the paused monitor waking up, changes nothing.
    settled = world.events(task)
    assert reaper.reaper().reap_known_outcomes() == 0
    assert monitor.paused.resume_monitor() is False
    assert world.events(task) == settled
    assert world.task(task) == after


# --- tier 3 ------------------------------------------------------------------------------


def hung_pids(world: World) -> list[int]:
    path = world.out / "pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def skip_until_overdue(world: World, job: Job, max_running_s: float) -> None:
    assert job.started_at is not None
    world.clock.advance(max(0.0, job.started_at + max_running_s + 0.05 - world.clock.now()))


def assert_tree_gone(pids: list[int]) -> None:
    assert len(pids) == HANG_PIDS + 1, pids
    # SIGTERM reached the whole group at once; the grandchildren may take a moment.
    wait_for(lambda: not any(alive(pid) for pid in pids), f"every process of {pids} ended", 5)


def test_tier3_tree_kills_a_hung_job_of_its_own_engine_and_releases_the_lease(
    world: World,
) -> None:
    """Seen failing with ``reap_overdue`` disabled (nothing reaped) and with its
    ``force_release`` removed (the lease stayed held by its live owner)."""
    world.configure(HANG, reaper_max_running_s=600, agent_timeout_s=3600, max_attempts=2)
    task = world.create()
    engine = world.actor()
    drive(engine, lambda: len(hung_pids(world)) == HANG_PIDS, "the hung agent's grandchildren")
    [job] = world.store.task_jobs(task.id)
    assert job.status == "running"
    assert job.pid is not None
    lease = engine.runtime.leases.acquire(world.task(task), "analysis->development", "test")
    assert lease is not None
    assert not lease.inert
    skip_until_overdue(world, job, 600)

    assert engine.reaper().reap_overdue() == 1

    assert_tree_gone([job.pid, *hung_pids(world)])
    assert engine.runtime.leases.held() == []
    # The engine collects the killed job at its next tick: failed, then retried.
    drive(engine, lambda: bool(by(world.events(task), "job.retry")), "the retry")
    first, retry = world.store.task_jobs(task.id)
    assert first.status == "failed"
    assert first.error is not None
    assert first.error.startswith("reaper tier 3: running")
    assert (retry.stage, retry.attempt) == ("analysis", 2)
    assert not world.task(task).failed
    events = world.events(task)
    assert [e.job_id for e in by(events, "reaper.tier3", "reaper")] == [first.id]
    assert len(by(events, "job.killed")) == 1
    assert [e.to_stage for e in by(events, "job.retry")] == ["analysis"]
    [released] = by(events, "lease.force_released", "reaper")
    assert "reaper tier 3" in released.reason
    assert by(events, "task.failed") == []


def test_tier3_tree_kills_the_hung_job_of_another_engine_instance(
    world: World, tmp_path: Path
) -> None:
    """The job belongs to engine A (``orch run``, its own process), which stops
    ticking for good (SIGKILL); engine B, another boot id in this process, never ticks
    either: only B's reaper acts. It kills the group itself (not its child, so not via
    ``kill_job``), fails the job and, with ``max_attempts = 1``, the task.

    Seen failing with the foreign-job branch of ``reap_overdue`` skipped (only
    ``kill_job``): nothing was reaped; and with only its ``kill_group`` removed: every
    process of the tree was still running."""
    world.configure(HANG, reaper_max_running_s=600, agent_timeout_s=3600, max_attempts=1)
    task = world.create()
    with (tmp_path / "engine-a.log").open("w") as log:
        engine_a = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "--config", str(world.config), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            # A's own reaper must not get there first, however slow this machine is.
            env={**os.environ, "ORCH_REAPER_MAX_RUNNING_S": "3600"},
        )
    try:
        wait_for(lambda: len(hung_pids(world)) == HANG_PIDS, "engine A's hung agent")
        wait_for(lambda: world.store.task_jobs(task.id)[0].pid is not None, "the pid recorded")
    finally:
        engine_a.send_signal(signal.SIGKILL)
        engine_a.wait()
    [job] = world.store.task_jobs(task.id)
    assert job.pid is not None
    assert job.status == "running"
    assert alive(job.pid)  # the agent outlives its engine
    engine_b = world.actor()
    assert engine_b.boot_id != job.owner_boot_id
    lease = engine_b.runtime.leases.acquire(world.task(task), "analysis->development", "test")
    assert lease is not None
    skip_until_overdue(world, job, 600)

    assert engine_b.reaper().reap_overdue() == 1

    assert_tree_gone([job.pid, *hung_pids(world)])
    ended = world.store.get_job(job.id)
    assert ended.status == "failed"
    assert ended.error is not None
    assert ended.error.startswith("reaper tier 3: running")
    run = world.store.job_run(job.id)
    assert run is not None
    assert run.exit_code == -1
    failed = world.task(task)
    assert failed.stage == "analysis"
    assert failed.failed_reason is not None
    assert "max_attempts=1" in failed.failed_reason
    assert engine_b.runtime.leases.held() == []
    events = world.events(task)
    assert len(by(events, "reaper.tier3", "reaper")) == 1
    assert len(by(events, "lease.force_released", "reaper")) == 1
    assert [e.actor for e in by(events, "task.failed")] == ["reaper"]
    assert by(events, "job.retry") == []
    assert [j.id for j in world.store.task_jobs(task.id)] == [job.id]
