"""Agent adapters inside the engine: real processes that misbehave, budgets, missing binaries.

A small Python program stands in for ``claude`` (adapter ``claude-code``): it reads the
prompt from stdin, does the stage's work like a model would with its tools, and prints
Claude Code's stream-json events. ``$FAKE_MODE`` (from the agent's ``env``) makes it
misbehave: exit non-zero with an error result, print garbage instead of JSON, hang with
a grandchild. Each test drives the engine in-process, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from orchestrator.engine.core import Engine
from orchestrator.errors import AgentError
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store, Task

DRIVE_TIMEOUT_S: Final = 60.0
# The launcher records a job killed by a signal as the shell does: 128 + the signal.
KILLED_BY_SIGTERM: Final = 128 + signal.SIGTERM
FAKE_CLAUDE: Final = r"""
import json, os, subprocess, sys, time
from pathlib import Path

prompt = sys.stdin.read()
mode = os.environ.get("FAKE_MODE", "ok")
out = Path(os.environ["OUT"])
(out / f"argv-{os.environ['ORCH_STAGE']}.json").write_text(json.dumps(sys.argv[1:]))
model = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else "claude-x"
cost = float(os.environ.get("FAKE_COST", "0.3"))
print(json.dumps({"type": "system", "subtype": "init", "model": model, "session_id": "s-1"}))
if mode == "hang":
    child = subprocess.Popen(["sleep", "3600"])
    (out / "grandchild.pid").write_text(str(child.pid))
    time.sleep(3600)
if mode == "garbage":
    print("Hello! I am a chatty CLI, not stream-json.")
    print("{ this is not JSON either")
    sys.exit(0)
stage, docs = os.environ["ORCH_STAGE"], Path(os.environ["ORCH_ARTIFACT_DIR"])
if stage == "analysis":
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "01-brd.md").write_text("Requirements: greet the user by name, politely.\n")
elif stage == "architecture":
    (docs / "06-adr").mkdir(parents=True, exist_ok=True)
    (docs / "06-adr" / "ADR-001-x.md").write_text("# ADR-001\n")
elif stage == "development":
    with open("code.txt", "a") as handle:
        handle.write(f"x{os.environ['ORCH_ATTEMPT']}\n")
print(json.dumps({"type": "assistant", "message": {"content": [{"type": "text", "text": "ok"}]}}))
result = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "total_cost_usd": cost,
    "num_turns": 2,
    "session_id": "s-1",
    "usage": {"input_tokens": 100, "output_tokens": 20},
    "modelUsage": {model: {"costUSD": cost}},
    "result": "Done.",
}
if mode == "exit":
    result.update(subtype="error_during_execution", is_error=True, result=None,
                  errors=["the tool crashed"])
print(json.dumps(result), flush=True)
sys.exit(1 if mode == "exit" else 0)
"""
# A ``command`` agent that reports its spending as it goes, then keeps working.
SPENDER: Final = r"""
import json, os, time
with open(os.environ["ORCH_RESULT_FILE"], "w") as handle:
    json.dump({"cost_usd": 2.0, "input_tokens": 5000, "model": "spender-1"}, handle)
time.sleep(300)
"""
STAGES: Final = ("analysis", "architecture", "development")


def run_git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@localhost",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout


def make_repo(path: Path) -> Path:
    (path / "tests").mkdir(parents=True)
    (path / "tests" / "test_ok.py").write_text("def test_ok() -> None:\n    assert True\n")
    (path / ".gitignore").write_text("__pycache__/\n.pytest_cache/\n")
    run_git(path, "init", "--quiet", "-b", "main")
    run_git(path, "add", "--all")
    run_git(path, "commit", "--quiet", "-m", "initial")
    return path


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Alerts:
    """A notifier that remembers alerts."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def on_task_changed(self, task: Task, summary: str) -> None:
        pass

    def alert(self, task: Task | None, message: str) -> None:
        self.messages.append(message)


@dataclass
class World:
    tmp_path: Path
    db_url: str
    store: Store
    repo: Path
    out: Path
    settings: Settings | None = None
    alerts: Alerts = field(default_factory=Alerts)
    engines: list[Engine] = field(default_factory=list)

    def configure(
        self,
        *,
        mode: str = "ok",
        command: list[str] | None = None,
        stages: dict[str, dict[str, Any]] | None = None,
        extra: str = "",
        **top: Any,
    ) -> Settings:
        """orch.toml: the fake claude on every agent stage; ``stages`` adds stage keys."""
        fake = self.tmp_path / "fake_claude.py"
        fake.write_text(FAKE_CLAUDE)
        env = {"FAKE_MODE": mode, "OUT": str(self.out)}
        lines = [f"database_url = {json.dumps(self.db_url)}", "retry_backoff_s = 0"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in top.items()]
        lines += [
            "[agents.claude]",
            'adapter = "claude-code"',
            f"command = {json.dumps(command or [sys.executable, str(fake)])}",
            'model = "claude-sonnet-4-5"',
            "env = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items()) + " }",
        ]
        for stage in STAGES:
            lines.append(f"[stages.{stage}]")
            keys = {"agent": "claude", **(stages or {}).get(stage, {})}
            lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
        config = self.tmp_path / "orch.toml"
        config.write_text("\n".join(lines) + "\n" + extra)
        self.settings = load_settings(config)
        return self.settings

    @property
    def service(self) -> TaskService:
        assert self.settings is not None
        return TaskService(self.store, self.settings)

    def create(self, work_item: str = "T-1") -> Task:
        return self.service.create_task(repo_path=self.repo, title="Greet", work_item=work_item)

    def task(self, task: Task) -> Task:
        return self.store.get_task(task.id)

    def drive(self, task: Task, until: Callable[[Task], bool] | None = None) -> Task:
        """Run an engine (approving the BRD) until ``until`` or the task ended."""
        assert self.settings is not None
        engine = Engine(self.store, self.settings, self.alerts)
        self.engines.append(engine)
        deadline = time.monotonic() + DRIVE_TIMEOUT_S

        def approve() -> None:
            current = self.task(task)
            if current.stage == "brd-approval" and not current.failed:
                self.service.approve(current, actor="test")

        def stop() -> bool:
            current = self.task(task)
            if until is not None and until(current):
                return True
            ended = current.stage in ("done", "cancelled") or current.failed
            return (ended and engine.idle()) or time.monotonic() > deadline

        engine.run(threading.Event(), until=stop, on_tick=approve)
        assert time.monotonic() <= deadline, f"stuck: {self.task(task)}"
        return self.task(task)

    def events(self, task: Task, kind: str) -> list[Any]:
        return [e for e in self.store.task_events(task.id) if e.kind == kind]


@pytest.fixture
def world(tmp_path: Path, db_url: str, store: Store) -> Iterator[World]:
    out = tmp_path / "out"
    out.mkdir()
    made = World(tmp_path, db_url, store, make_repo(tmp_path / "repo"), out)
    yield made
    for engine in made.engines:
        engine.shutdown(kill=True)


def test_claude_code_runs_record_cost_tokens_model_turns_and_the_stream_in_the_log(
    world: World,
) -> None:
    world.configure(stages={"architecture": {"model": "claude-opus-4-1", "effort": "high"}})
    task = world.create()
    done = world.drive(task)
    assert done.stage == "done", done.failed_reason
    runs = world.store.task_runs(task.id)
    agent_runs = [run for run in runs if run.agent == "claude"]
    assert len(agent_runs) == 3
    for run in agent_runs:
        assert (run.cost_usd, run.input_tokens, run.output_tokens, run.num_turns) == (
            0.3,
            100,
            20,
            2,
        )
        log = Path(run.log_path).read_text()
        assert log.splitlines()[0].startswith('{"type": "system"')
        assert '"type": "result"' in log
    assert [run.model for run in agent_runs] == [
        "claude-sonnet-4-5",
        "claude-opus-4-1",
        "claude-sonnet-4-5",
    ]
    assert [run.effort for run in agent_runs] == ["", "high", ""]
    architecture_argv = json.loads((world.out / "argv-architecture.json").read_text())
    assert "--effort" in architecture_argv
    assert architecture_argv[architecture_argv.index("--model") + 1] == "claude-opus-4-1"
    exited = [e for e in world.events(task, "job.exited") if e.to_stage in STAGES]
    assert [(e.data["subtype"], e.data["session_id"]) for e in exited] == [("success", "s-1")] * 3
    assert sum(run.cost_usd for run in runs) == pytest.approx(0.9)


def test_an_agent_that_exits_nonzero_fails_with_its_own_error(world: World) -> None:
    world.configure(mode="exit", max_attempts=2)
    task = world.create()
    failed = world.drive(task)
    assert failed.failed
    assert failed.stage == "analysis"
    reason = failed.failed_reason or ""
    assert "max_attempts=2" in reason
    assert reason.endswith(
        "claude stopped with error_during_execution: the tool crashed (exit code 1)"
    )
    runs = world.store.task_runs(task.id)
    assert [(run.exit_code, run.cost_usd) for run in runs] == [(1, 0.3), (1, 0.3)]
    [retry] = world.events(task, "job.retry")
    assert "error_during_execution" in retry.reason


def test_garbage_instead_of_json_fails_the_run_with_the_reason_and_nothing_crashes(
    world: World,
) -> None:
    world.configure(mode="garbage", max_attempts=1)
    task = world.create()
    failed = world.drive(task)
    assert failed.failed
    reason = failed.failed_reason or ""
    assert "claude exited 0 but printed no stream-json result event" in reason
    assert reason.endswith("last line: { this is not JSON either")
    [run] = world.store.task_runs(task.id)
    assert (run.exit_code, run.cost_usd, run.model) == (0, 0.0, "claude-sonnet-4-5")
    [exited] = world.events(task, "job.exited")
    assert "printed no stream-json result event" in exited.reason
    [job] = world.store.task_jobs(task.id)
    assert job.status == "failed"


def test_a_hanging_agent_is_tree_killed_at_its_stage_timeout(world: World) -> None:
    # The agent and its grandchild hang for an hour: only the kill at the stage timeout
    # ends the task within the drive's deadline.
    world.configure(mode="hang", max_attempts=1, stages={"analysis": {"timeout_s": 1}})
    task = world.create()
    failed = world.drive(task)
    assert failed.failed
    assert "timed out after 1s" in (failed.failed_reason or "")
    [killed] = world.events(task, "job.killed")
    assert killed.reason == "timed out after 1s"
    [run] = world.store.task_runs(task.id)
    assert run.exit_code == KILLED_BY_SIGTERM
    [job] = world.store.task_jobs(task.id)
    assert job.pid is not None
    assert not alive(job.pid), "the agent's launcher survived the tree-kill"
    grandchild = int((world.out / "grandchild.pid").read_text())
    assert not alive(grandchild), "the agent's grandchild survived the tree-kill"


def test_a_task_over_its_cost_budget_waits_for_a_person_then_retry_resumes_it(
    world: World,
) -> None:
    world.configure(task_budget_usd=0.5)
    task = world.create()
    stopped = world.drive(task)
    # analysis ($0.30) and architecture ($0.60 in all) ran; development did not start.
    assert stopped.failed
    assert stopped.stage == "development"
    assert stopped.failed_reason == (
        "cost budget $0.50 reached ($0.60 spent); raise task_budget_usd in orch.toml, or run "
        "`orch task retry T-1` to allow another $0.50"
    )
    runs = world.store.task_runs(task.id)
    assert [run.agent for run in runs] == ["claude", "claude"]
    development_jobs = [j for j in world.store.task_jobs(task.id) if j.stage == "development"]
    assert [(j.status, j.error) for j in development_jobs] == [("failed", stopped.failed_reason)]
    [failed_event] = world.events(task, "task.failed")
    assert failed_event.data == {"budget_usd": 0.5, "spent_usd": 0.6}
    assert world.alerts.messages == [f"task stopped: {stopped.failed_reason}"]

    # A person retries: a new window with a fresh budget; runners are never held back.
    world.service.retry(stopped, actor="test")
    done = world.drive(task)
    assert done.stage == "done", done.failed_reason
    runs = world.store.task_runs(task.id)
    assert sum(run.cost_usd for run in runs) == pytest.approx(0.9)


def test_a_run_over_its_own_budget_is_tree_killed_and_its_cost_kept(world: World) -> None:
    spender = world.tmp_path / "spender.py"
    spender.write_text(SPENDER)
    world.configure(
        max_attempts=1,
        stages={"analysis": {"agent": "spender", "budget_usd": 1.0}},
        extra=f"[agents.spender]\ncommand = {json.dumps([sys.executable, str(spender)])}\n",
    )
    task = world.create()
    failed = world.drive(task)
    assert failed.failed
    [killed] = world.events(task, "job.killed")
    assert killed.reason == "spender went over its run budget of $1.00 ($2.0000 spent)"
    [run] = world.store.task_runs(task.id)
    assert (run.cost_usd, run.input_tokens, run.model) == (2.0, 5000, "spender-1")


def test_a_missing_binary_is_one_clear_line(world: World) -> None:
    world.configure(command=["no-such-claude-bin"])
    with pytest.raises(AgentError) as caught:
        world.create()
    assert str(caught.value) == (
        "agent 'claude': program 'no-such-claude-bin' not found on PATH; install Claude Code "
        "(npm install -g @anthropic-ai/claude-code, or `make agents` for "
        ".cache/agents/node_modules/.bin/claude), or set [agents.claude] command in orch.toml"
    )
    assert world.store.list_tasks() == []


def test_a_binary_gone_after_create_fails_the_run_saying_so(world: World) -> None:
    world.configure(max_attempts=1)
    task = world.create()
    world.configure(max_attempts=1, command=["/gone/claude"])
    failed = world.drive(task)
    assert failed.failed
    assert (failed.failed_reason or "").endswith(
        "cannot start '/gone/claude': No such file or directory"
    )


def test_orch_task_create_with_a_missing_claude_prints_one_line(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (tmp_path / "orch.toml").write_text(
        '[agents.claude]\nadapter = "claude-code"\ncommand = ["no-such-claude-bin"]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "task",
            "create",
            "--repo",
            str(repo),
            "--title",
            "x",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: agent 'claude': program 'no-such-claude-bin' not found on PATH")
