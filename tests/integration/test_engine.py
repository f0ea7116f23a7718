"""The engine against real git, real shell agents, real runners, on SQLite and PostgreSQL.

Every test takes ``db_url`` (see conftest), so each runs once per backend. A test writes an
``orch.toml`` (database URL, limits, a shell agent for the agent stages) and a repository
with a passing pytest suite, creates tasks through :class:`TaskService`, then drives the
engine in-process (``Engine.run`` with an ``until`` predicate) under a deadline: a bug
fails the test with the task's state instead of hanging the suite.

The agent is one ``sh`` script (``agent.sh`` in ``tmp_path``) that looks at
``$ORCH_STAGE`` and writes what that stage's gate asks for; a test adds its own lines
(fail, sleep, print a Claude Code result). Files outside the worktree (``$OUT``) are how
an agent tells the test what it saw.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from orchestrator.engine import core
from orchestrator.engine.core import Engine
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import AgentConfig, Settings, load_settings
from orchestrator.store import Job, Store, Task

DRIVE_TIMEOUT_S: Final = 60.0
# The launcher records a job killed by a signal as the shell does: 128 + the signal.
KILLED_BY_SIGTERM: Final = 128 + signal.SIGTERM
POLL_INTERVAL_S: Final = 0.02
COST_USD: Final = 0.25
CLAUDE_RESULT: Final = json.dumps(
    {
        "type": "result",
        "total_cost_usd": COST_USD,
        "usage": {"input_tokens": 10, "output_tokens": 5},
        "modelUsage": {"m-1": {"costUSD": COST_USD}},
        "num_turns": 2,
    }
)
BRD_TEXT: Final = "The business requirements: greet the user by name, politely."
# What each agent stage writes so that its gate passes.
STAGE_WORK: Final = f"""\
case "$ORCH_STAGE" in
  analysis)
    mkdir -p "$ORCH_ARTIFACT_DIR"
    echo "{BRD_TEXT}" > "$ORCH_ARTIFACT_DIR/01-brd.md" ;;
  architecture)
    mkdir -p "$ORCH_ARTIFACT_DIR/06-adr"
    echo "# ADR-001: one module" > "$ORCH_ARTIFACT_DIR/06-adr/ADR-001-module.md" ;;
  development)
    echo "x$ORCH_ATTEMPT" >> code.txt ;;
esac
"""
AGENT_STAGES: Final = ("analysis", "architecture", "development")
ALL_STAGES: Final = (
    "analysis",
    "brd-approval",
    "architecture",
    "development",
    "testing",
    "deploy-staging",
    "deploy",
    "done",
)


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
    """A git repository on ``main`` with one commit and a passing pytest suite."""
    (path / "tests").mkdir(parents=True)
    (path / "tests" / "test_ok.py").write_text("def test_ok() -> None:\n    assert True\n")
    (path / "pyproject.toml").write_text('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    (path / ".gitignore").write_text("__pycache__/\n.pytest_cache/\n")
    run_git(path, "init", "--quiet", "-b", "main")
    run_git(path, "add", "--all")
    run_git(path, "commit", "--quiet", "-m", "initial")
    return path


def is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    result = subprocess.run(
        ["git", "merge-base", "--is-ancestor", ancestor, descendant], cwd=repo, check=False
    )
    return result.returncode == 0


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {timeout_s}s")
        time.sleep(POLL_INTERVAL_S)


@dataclass
class World:
    """One test's orchestrator: settings, store, service, engine, repository."""

    tmp_path: Path
    db_url: str
    store: Store
    repo: Path
    out: Path
    settings: Settings | None = None
    engines: list[Engine] = field(default_factory=list)

    def configure(self, agent_lines: str = "", **limits: Any) -> Settings:
        """Write ``agent.sh`` and ``orch.toml``; returns the loaded settings."""
        script = self.tmp_path / "agent.sh"
        script.write_text(f"set -e\nOUT={self.out}\n{agent_lines}\n{STAGE_WORK}")
        lines = [f"database_url = {json.dumps(self.db_url)}", "retry_backoff_s = 0"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in limits.items()]
        lines += ["", "[agents.sh]", f"command = {json.dumps(['sh', str(script)])}"]
        for stage in AGENT_STAGES:
            lines += ["", f"[stages.{stage}]", 'agent = "sh"']
        config = self.tmp_path / "orch.toml"
        config.write_text("\n".join(lines) + "\n")
        self.settings = load_settings(config)
        assert self.settings.database_url == self.db_url
        return self.settings

    @property
    def service(self) -> TaskService:
        assert self.settings is not None, "call configure() first"
        return TaskService(self.store, self.settings)

    def engine(self, settings: Settings | None = None) -> Engine:
        engine = Engine(self.store, settings or self.settings or self.configure())
        self.engines.append(engine)
        return engine

    def create(self, work_item: str, repo: Path | None = None) -> Task:
        return self.service.create_task(
            repo_path=repo or self.repo, title=f"Build {work_item}", work_item=work_item
        )

    def task(self, task: Task) -> Task:
        return self.store.get_task(task.id)

    def drive(
        self,
        engine: Engine,
        until: Callable[[], bool],
        what: str,
        *,
        on_tick: Callable[[], None] | None = None,
        timeout_s: float = DRIVE_TIMEOUT_S,
    ) -> None:
        """Run ``engine`` until ``until()``; fail with the tasks' state after the deadline."""
        deadline = time.monotonic() + timeout_s
        timed_out = False

        def stop() -> bool:
            nonlocal timed_out
            if until():
                return True
            timed_out = time.monotonic() > deadline
            return timed_out

        engine.run(threading.Event(), until=stop, on_tick=on_tick)
        if timed_out:
            state = [
                (t.work_item, t.stage, t.attempt, t.failed_reason) for t in self.store.list_tasks()
            ]
            pytest.fail(f"the engine did not reach {what} within {timeout_s}s; tasks: {state}")

    def approve_at_the_gate(self, task: Task) -> Callable[[], None]:
        """An ``on_tick`` that approves ``task`` when it waits at brd-approval."""

        def approve() -> None:
            current = self.task(task)
            if current.stage == "brd-approval" and not current.failed:
                self.service.approve(current, actor="test")

        return approve

    def ended(self, task: Task) -> Callable[[], bool]:
        def check() -> bool:
            current = self.task(task)
            return current.stage in ("done", "cancelled") or current.failed

        return check

    def kinds(self, task: Task) -> list[str]:
        return [event.kind for event in self.store.task_events(task.id)]


@pytest.fixture
def world(tmp_path: Path, db_url: str, store: Store) -> Iterator[World]:
    out = tmp_path / "out"
    out.mkdir()
    made = World(tmp_path, db_url, store, make_repo(tmp_path / "repo"), out)
    yield made
    for engine in made.engines:
        engine.shutdown(kill=True)


def jobs_of(world: World, task: Task) -> list[Job]:
    return world.store.task_jobs(task.id)


# --- the happy path ------------------------------------------------------------------


def test_a_task_runs_to_done_and_its_branch_is_merged(world: World) -> None:
    world.configure(f"echo '{CLAUDE_RESULT}'")
    task = world.create("T-1")
    assert task.stage == "analysis"
    main_before = run_git(world.repo, "rev-parse", "main").strip()
    engine = world.engine()

    world.drive(engine, world.ended(task), "done", on_tick=world.approve_at_the_gate(task))

    done = world.task(task)
    assert done.stage == "done", done.failed_reason
    assert not done.failed
    assert done.rollback_count == 0
    # Merged: main moved, the task branch is in it, and so is every agent's change.
    assert run_git(world.repo, "rev-parse", "main").strip() != main_before
    assert is_ancestor(world.repo, done.branch, "main")
    assert run_git(world.repo, "show", "main:code.txt").split() == ["x1"]
    assert run_git(world.repo, "show", "main:docs/work-items/T-1/01-brd.md").strip() == BRD_TEXT
    # The audit trail: every stage move, with both ends, in order.
    events = world.store.task_events(task.id)
    moves = [(e.kind, e.from_stage, e.to_stage) for e in events if e.from_stage is not None]
    assert moves == [
        ("stage.changed", "created", "analysis"),
        ("stage.changed", "analysis", "brd-approval"),
        ("task.approved", "brd-approval", "architecture"),
        ("stage.changed", "architecture", "development"),
        ("stage.changed", "development", "testing"),
        ("stage.changed", "testing", "deploy-staging"),
        ("stage.changed", "deploy-staging", "deploy"),
        ("stage.changed", "deploy", "done"),
    ]
    assert "job.retry" not in world.kinds(task)
    assert "task.failed" not in world.kinds(task)
    # One job per job stage, all done; one run per job, all exited 0.
    jobs = jobs_of(world, task)
    assert [job.stage for job in jobs] == [
        s for s in ALL_STAGES if s not in ("brd-approval", "done")
    ]
    assert {job.status for job in jobs} == {"done"}
    assert {job.attempt for job in jobs} == {1}
    runs = world.store.task_runs(task.id)
    assert [run.job_id for run in runs] == [job.id for job in jobs]
    assert {run.exit_code for run in runs} == {0}
    # Claude Code's result line: cost, tokens, model, turns on each agent run.
    by_stage = {job.stage: run for job, run in zip(jobs, runs, strict=True)}
    for stage in AGENT_STAGES:
        run = by_stage[stage]
        assert (run.cost_usd, run.input_tokens, run.output_tokens) == (COST_USD, 10, 5)
        assert (run.model, run.num_turns) == ("m-1", 2)
    for stage in ("testing", "deploy-staging", "deploy"):
        assert by_stage[stage].cost_usd == 0
        assert by_stage[stage].num_turns is None
    assert sum(run.cost_usd for run in runs) == pytest.approx(3 * COST_USD)
    exited = [e for e in events if e.kind == "job.exited" and e.to_stage == "analysis"]
    [data] = [e.data or {} for e in exited]
    assert (data["exit_code"], data["cost_usd"], data["model"]) == (0, COST_USD, "m-1")
    # The crossing (its own thread) moved the task to done, then released the worktree.
    assert engine.wait_for_crossings(60)
    assert engine.idle()


# --- failures and budgets ------------------------------------------------------------


def test_a_failing_agent_is_retried_then_the_task_fails_naming_the_exit_code(
    world: World,
) -> None:
    world.configure(
        'echo "attempt $ORCH_ATTEMPT of $ORCH_STAGE"; echo "ran out of ideas" >&2; exit 7',
        max_attempts=2,
    )
    task = world.create("T-1")
    engine = world.engine()

    world.drive(engine, world.ended(task), "the task's failure")

    failed = world.task(task)
    assert failed.failed
    assert failed.stage == "analysis"
    assert failed.attempt == 2
    reason = failed.failed_reason or ""
    assert "max_attempts=2" in reason
    assert "exited with code 7" in reason
    assert reason.endswith("ran out of ideas")
    jobs = jobs_of(world, task)
    assert [(job.attempt, job.status) for job in jobs] == [(1, "failed"), (2, "failed")]
    assert jobs[0].error == "sh exited with code 7: ran out of ideas"
    assert [job.failure_kind for job in jobs] == ["nonzero_exit"] * 2
    assert jobs[1].feedback == "sh exited with code 7: ran out of ideas"
    assert [run.exit_code for run in world.store.task_runs(task.id)] == [7, 7]
    kinds = world.kinds(task)
    assert kinds.count("job.retry") == 1
    assert kinds.count("task.failed") == 1
    assert kinds.index("job.retry") < kinds.index("task.failed")
    [failed_event] = [e for e in world.store.task_events(task.id) if e.kind == "task.failed"]
    assert failed_event.reason == reason
    assert engine.idle()


def test_a_failed_gate_is_retried_with_the_verdict_as_feedback(world: World) -> None:
    # The first attempt writes no BRD (the agent exits 0 but leaves STAGE_WORK undone).
    world.configure(
        'printf %s "$ORCH_FEEDBACK" > "$OUT/feedback-$ORCH_ATTEMPT"\n'
        'if [ "$ORCH_ATTEMPT" = 1 ]; then exit 0; fi'
    )
    task = world.create("T-1")
    engine = world.engine()

    world.drive(
        engine, lambda: world.task(task).stage != "analysis" or world.task(task).failed, "BRD"
    )

    moved = world.task(task)
    assert moved.stage == "brd-approval", moved.failed_reason
    assert moved.attempt == 1  # a new stage starts its own count
    first, second = jobs_of(world, task)
    assert (first.attempt, first.status) == (1, "failed")
    assert first.error is not None
    assert "01-brd.md is missing" in first.error
    assert (first.failure_kind, second.failure_kind) == ("gate_failed", None)
    assert (second.attempt, second.status) == (2, "done")
    assert second.feedback is not None
    assert "01-brd.md is missing" in second.feedback
    assert (world.out / "feedback-1").read_text() == ""
    assert "01-brd.md is missing" in (world.out / "feedback-2").read_text()
    verdicts = [
        (e.data or {}).get("outcome")
        for e in world.store.task_events(task.id)
        if e.kind == "gate.verdict"
    ]
    assert verdicts == ["fail", "pass"]
    assert world.kinds(task).count("job.retry") == 1


def test_failing_tests_roll_back_to_development_until_max_rollbacks(world: World) -> None:
    world.configure(
        'if [ "$ORCH_STAGE" = development ]; then\n'
        '  printf "def test_bad() -> None:\\n    assert False\\n" > tests/test_bad.py\n'
        '  printf %s "$ORCH_FEEDBACK" > "$OUT/dev-feedback-$ORCH_ROLLBACK_COUNT"\n'
        "fi",
        max_rollbacks=1,
    )
    task = world.create("T-1")
    main_before = run_git(world.repo, "rev-parse", "main").strip()
    engine = world.engine()

    world.drive(
        engine, world.ended(task), "the task's end", on_tick=world.approve_at_the_gate(task)
    )

    failed = world.task(task)
    assert failed.failed
    assert failed.stage == "testing"
    assert failed.rollback_count == 1
    reason = failed.failed_reason or ""
    assert "max_rollbacks=1" in reason
    assert "13-test-report.md: result FAIL" in reason
    jobs = jobs_of(world, task)
    assert [job.stage for job in jobs] == [
        "analysis",
        "architecture",
        "development",
        "testing",
        "development",
        "testing",
    ]
    assert [job.status for job in jobs[-3:]] == ["failed", "done", "failed"]
    rollback_job = jobs[4]
    assert rollback_job.attempt == 1
    assert rollback_job.feedback is not None
    assert rollback_job.feedback.startswith("testing failed: 13-test-report.md: result FAIL")
    assert (world.out / "dev-feedback-0").read_text() == ""
    assert "result FAIL" in (world.out / "dev-feedback-1").read_text()
    events = world.store.task_events(task.id)
    rollbacks = [(e.from_stage, e.to_stage) for e in events if e.kind == "task.rollback"]
    assert rollbacks == [("testing", "development")]
    assert [e.kind for e in events].count("task.failed") == 1
    # Nothing failing reached main.
    assert run_git(world.repo, "rev-parse", "main").strip() == main_before


def test_an_agent_past_its_timeout_is_killed_retried_then_failed(world: World) -> None:
    # The agent sleeps for an hour: only the kill at its timeout ends the task within
    # the drive's deadline, and the exit codes below say it died of the SIGTERM.
    world.configure("exec sleep 3600", max_attempts=2, agent_timeout_s=1)
    task = world.create("T-1")
    engine = world.engine()

    world.drive(engine, world.ended(task), "the task's failure")

    failed = world.task(task)
    assert failed.failed
    assert failed.failed_reason is not None
    assert "max_attempts=2" in failed.failed_reason
    assert "timed out after 1s" in failed.failed_reason
    jobs = jobs_of(world, task)
    assert [(job.attempt, job.status) for job in jobs] == [(1, "failed"), (2, "failed")]
    assert all(job.error == "timed out after 1s" for job in jobs)
    assert [job.failure_kind for job in jobs] == ["timeout"] * 2
    assert [run.exit_code for run in world.store.task_runs(task.id)] == [KILLED_BY_SIGTERM] * 2
    kinds = world.kinds(task)
    assert kinds.count("job.killed") == 2
    assert kinds.count("job.retry") == 1
    assert kinds.count("task.failed") == 1
    for job in jobs:
        assert job.pid is not None
        assert group_gone(job.pid), f"the process group of job {job.id} survived"


def test_cancel_kills_the_running_agent_and_merges_nothing(world: World) -> None:
    # An hour's sleep: only the cancel's kill ends the job within the drive's deadline.
    world.configure('sleep 3600 & echo $! > "$OUT/sleep"; wait')
    task = world.create("T-1")
    main_before = run_git(world.repo, "rev-parse", "main").strip()
    engine = world.engine()

    def agent_running() -> bool:
        jobs = jobs_of(world, task)
        return bool(jobs) and jobs[-1].status == "running" and (world.out / "sleep").is_file()

    world.drive(engine, agent_running, "the agent running")
    [job] = jobs_of(world, task)
    assert job.pid is not None
    world.service.cancel(world.task(task), actor="test", reason="not needed")
    world.drive(
        engine,
        lambda: world.store.get_job(job.id).status not in ("running", "finalizing"),
        "the cancelled job's end",
    )

    ended = world.store.get_job(job.id)
    assert ended.status == "failed"
    assert ended.error is not None
    assert "cancelled" in ended.error
    assert ended.failure_kind == "lost_race"  # the task moved on: nothing to repair
    final = world.task(task)
    assert final.stage == "cancelled"
    assert not final.failed
    kinds = world.kinds(task)
    assert "task.cancelled" in kinds
    assert "job.killed" in kinds
    assert "job.retry" not in kinds
    [run] = world.store.task_runs(task.id)
    assert run.exit_code == KILLED_BY_SIGTERM
    wait_for(lambda: group_gone(job.pid or 0), "the agent's process group is gone")
    grandchild = int((world.out / "sleep").read_text())
    wait_for(lambda: not Path(f"/proc/{grandchild}").exists(), "the agent's sleep is gone")
    # Nothing merged, and the killed job's half-work was not even committed.
    assert run_git(world.repo, "rev-parse", "main").strip() == main_before
    assert run_git(world.repo, "rev-parse", final.branch).strip() == final.base_sha
    assert world.store.jobs_by_status(("queued", "deferred", "running", "finalizing")) == []
    assert engine.idle()


def test_a_watch_pass_asks_as_much_for_four_running_jobs_as_for_one(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a running job's task moved (cancelled, rolled back) is learnt by one
    query for every running job's task (decision 0028): a pass costs no more statements
    with four jobs running than with one, and a cancelled task's job is still stopped,
    alone. Seen failing with a ``get_task`` per running job (SQLite: 4 statements a pass
    with one job running, 10 with four)."""
    world.configure("sleep 3600", max_running_jobs=4, max_running_jobs_per_repo=4)
    monkeypatch.setattr(core, "STAGE_CHECK_INTERVAL_S", 0.0)  # every pass checks
    engine = world.engine()
    engine.inline_maintenance = False  # the reaper's and reconciler's sweeps aside

    def one_pass() -> int:
        before = world.store.statements
        engine.tick()
        return world.store.statements - before

    first = world.create("T-1")
    world.drive(engine, lambda: len(engine.running_jobs()) == 1, "one job running")
    with_one = one_pass()
    others = [world.create(f"T-{n}") for n in range(2, 5)]
    world.drive(engine, lambda: len(engine.running_jobs()) == 4, "four jobs running")
    with_four = one_pass()
    # Fewer with four: every slot is taken, so the pass does not even read the queue.
    assert with_four <= with_one

    cancelled = others[0]
    world.service.cancel(world.task(cancelled), actor="test", reason="not needed")
    [job] = jobs_of(world, cancelled)
    world.drive(
        engine, lambda: world.store.get_job(job.id).status == "failed", "the cancelled job's end"
    )
    assert world.store.get_job(job.id).failure_kind == "lost_race"
    running = {live.task_id for live in engine.running_jobs()}
    assert running == {first.id, others[1].id, others[2].id}


# --- limits --------------------------------------------------------------------------


def test_max_running_jobs_holds_across_tasks(world: World) -> None:
    world.configure("sleep 0.5", max_running_jobs=1)
    tasks = [world.create(f"T-{n}") for n in range(1, 4)]
    engine = world.engine()
    peak = 0

    def sample() -> None:
        nonlocal peak
        peak = max(peak, len(world.store.jobs_by_status(("running", "finalizing"))))

    world.drive(
        engine,
        lambda: all(world.task(t).stage == "brd-approval" for t in tasks),
        "brd-approval for all three",
        on_tick=sample,
    )

    assert peak == 1
    jobs = sorted((job for t in tasks for job in jobs_of(world, t)), key=lambda j: j.id)
    assert [job.status for job in jobs] == ["done"] * 3
    spans = sorted((job.started_at or 0.0, job.finished_at or 0.0) for job in jobs)
    for (_, finished), (started, _) in itertools.pairwise(spans):
        assert started >= finished, f"jobs overlapped: {spans}"


def test_max_running_jobs_per_repo_holds_while_repos_run_side_by_side(
    world: World, tmp_path: Path
) -> None:
    world.configure("sleep 0.5", max_running_jobs=4, max_running_jobs_per_repo=1)
    other = make_repo(tmp_path / "other")
    tasks = [world.create(f"A-{n}") for n in (1, 2)] + [
        world.create(f"B-{n}", repo=other) for n in (1, 2)
    ]
    engine = world.engine()
    peak_total = 0
    peak_per_repo: dict[str, int] = {}

    def sample() -> None:
        nonlocal peak_total
        active = world.store.jobs_by_status(("running", "finalizing"))
        peak_total = max(peak_total, len(active))
        for repository in {task.repository for _, task in active}:
            count = sum(1 for _, task in active if task.repository == repository)
            peak_per_repo[repository] = max(peak_per_repo.get(repository, 0), count)

    world.drive(
        engine,
        lambda: all(world.task(t).stage == "brd-approval" for t in tasks),
        "brd-approval for all four",
        on_tick=sample,
    )

    assert set(peak_per_repo.values()) == {1}
    assert len(peak_per_repo) == 2
    assert peak_total == 2  # the two repositories did run side by side


# --- start failures, logs, retry -----------------------------------------------------


def test_a_missing_agent_binary_is_recorded_retried_then_fails_the_task(world: World) -> None:
    settings = world.configure(max_attempts=2)
    task = world.create("T-1")  # created while `sh` exists
    broken = settings.model_copy(
        update={"agents": {"sh": AgentConfig(command=["/nonexistent/bin/agent"])}}
    )
    engine = world.engine(broken)

    world.drive(engine, world.ended(task), "the task's failure")

    failed = world.task(task)
    assert failed.failed
    assert failed.failed_reason is not None
    assert "cannot start '/nonexistent/bin/agent'" in failed.failed_reason
    assert "max_attempts=2" in failed.failed_reason
    jobs = jobs_of(world, task)
    assert [(job.attempt, job.status) for job in jobs] == [(1, "failed"), (2, "failed")]
    assert all(job.error and job.error.startswith("cannot start") for job in jobs)
    assert [job.failure_kind for job in jobs] == ["launch_failed"] * 2
    runs = world.store.task_runs(task.id)
    assert [run.job_id for run in runs] == [job.id for job in jobs]
    assert [run.exit_code for run in runs] == [-1, -1]
    for run in runs:
        assert "[orch: cannot start '/nonexistent/bin/agent'" in Path(run.log_path).read_text()
    exited = [e.reason for e in world.store.task_events(task.id) if e.kind == "job.exited"]
    assert len(exited) == 2
    assert all(reason.startswith("cannot start") for reason in exited)
    kinds = world.kinds(task)
    assert kinds.count("job.retry") == 1
    assert kinds.count("task.failed") == 1
    assert engine.idle()


def test_an_agent_the_configuration_no_longer_knows_waits_for_a_person(world: World) -> None:
    settings = world.configure(max_attempts=3)
    task = world.create("T-1")  # created while [agents.sh] exists
    broken = settings.model_copy(update={"agents": {}})
    engine = world.engine(broken)

    world.drive(engine, world.ended(task), "the task's failure")

    failed = world.task(task)
    assert failed.failed
    reason = failed.failed_reason or ""
    assert "needs a person" in reason
    assert "'sh'" in reason
    assert "`orch task retry T-1`" in reason
    assert [(j.status, j.failure_kind) for j in jobs_of(world, task)] == [("failed", "environment")]
    kinds = world.kinds(task)
    assert "job.retry" not in kinds
    failure = next(e for e in world.store.task_events(task.id) if e.kind == "task.failed")
    assert failure.data == {"cause": "environment"}


def test_a_huge_output_is_capped_in_the_log_but_the_result_line_is_kept(world: World) -> None:
    cap = 2048
    world.configure(
        f"head -c 1048576 /dev/zero | tr '\\0' x; echo\necho '{CLAUDE_RESULT}'",
        log_max_bytes=cap,
    )
    task = world.create("T-1")
    engine = world.engine()

    world.drive(
        engine, lambda: world.task(task).stage != "analysis" or world.task(task).failed, "BRD"
    )

    assert world.task(task).stage == "brd-approval"
    [run] = world.store.task_runs(task.id)
    marker = f"\n[orch: log capped at {cap} bytes]\n".encode()
    logged = Path(run.log_path).read_bytes()
    assert len(logged) <= cap + len(marker)
    assert logged.endswith(marker)
    assert (run.cost_usd, run.input_tokens, run.output_tokens) == (COST_USD, 10, 5)
    assert (run.model, run.num_turns) == ("m-1", 2)


def test_retry_resumes_a_failed_task_at_its_stage_with_attempt_1(world: World) -> None:
    ready = world.out / "ready"
    world.configure(
        f'if [ ! -f "{ready}" ]; then echo "the tool is not ready"; exit 4; fi', max_attempts=1
    )
    task = world.create("T-1")
    engine = world.engine()
    world.drive(engine, world.ended(task), "the task's failure")
    failed = world.task(task)
    assert failed.failed
    assert failed.failed_reason is not None
    assert "the tool is not ready" in failed.failed_reason

    ready.touch()
    retried = world.service.retry(failed, actor="test")
    assert not retried.failed
    assert (retried.stage, retried.attempt, retried.rollback_count) == ("analysis", 1, 0)
    world.drive(
        engine, world.ended(task), "done after the retry", on_tick=world.approve_at_the_gate(task)
    )

    done = world.task(task)
    assert done.stage == "done", done.failed_reason
    assert not done.failed
    first, second = jobs_of(world, task)[:2]
    assert (first.stage, first.attempt, first.status) == ("analysis", 1, "failed")
    assert (second.stage, second.attempt, second.status) == ("analysis", 1, "done")
    assert second.feedback is not None
    assert "the tool is not ready" in second.feedback
    kinds = world.kinds(task)
    assert kinds.count("task.failed") == 1
    assert kinds.count("task.retried") == 1
    assert is_ancestor(world.repo, done.branch, "main")
