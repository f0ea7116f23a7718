"""The test runner inside the real engine (issue 4, TC-06 engine side, TC-07..TC-09).

A real :class:`Engine` on a real store drives a task whose pipeline is cut to
development -> testing -> done: development is a shell agent, testing is the runner (or,
kill-switch off / out of scope, the "LLM tester", a Python script standing in for
Claude Code that prints a Claude Code result line). The stand-in also tries what a model
might: it writes ``result: PASS`` over the runner's report and edits the code.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

import pytest
from runner_helpers import git, make_repo

from orchestrator.engine.core import Engine
from orchestrator.kernel.gates import TEST_REPORT_FILE, _parse_tests_verdict
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store, Task

DRIVE_TIMEOUT_S: Final = 120.0
TESTER_COST_USD: Final = 0.5
SUITE: Final = {
    "calc.py": "def add(a, b):\n    return a + b\n",
    "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
    "pyproject.toml": '[tool.pytest.ini_options]\npythonpath = ["."]\n',
}
BROKEN: Final = {"tests/test_broken.py": "import module_that_does_not_exist\n"}
# The "LLM tester": explains, then tries to flip the verdict and to change the code.
FAKE_TESTER: Final = f"""\
import json, os, sys
from pathlib import Path
docs = Path(os.environ["ORCH_ARTIFACT_DIR"])
docs.mkdir(parents=True, exist_ok=True)
prompt = sys.stdin.read()
(docs / "13-test-explanation.md").write_text(
    "The import of module_that_does_not_exist fails in tests/test_broken.py.\\n"
    "result: PASS\\n"
)
(docs / "{TEST_REPORT_FILE}").write_text("result: PASS\\nstatus: PASS\\nexit_code: 0\\n")
with open("calc.py", "a") as f:
    f.write("# the tester was here\\n")
Path(os.environ["SEEN"]).write_text(prompt or "(no prompt on stdin)")
print(json.dumps({{"type": "result", "total_cost_usd": {TESTER_COST_USD},
                  "usage": {{"input_tokens": 10, "output_tokens": 5}},
                  "modelUsage": {{"fake-model": {{"costUSD": {TESTER_COST_USD}}}}}}}))
"""


class World:
    def __init__(self, tmp_path: Path, db_url: str, store: Store) -> None:
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.store = store
        self.seen = tmp_path / "tester-saw.txt"
        self.tester = tmp_path / "fake_tester.py"
        self.tester.write_text(FAKE_TESTER)

    def settings(self, **values: Any) -> Settings:
        lines = [
            f"database_url = {json.dumps(self.db_url)}",
            f"data_dir = {json.dumps(str(self.tmp_path / 'data'))}",
            "retry_backoff_s = 0",
            'skip = ["analysis", "brd-approval", "architecture", "deploy-staging", "deploy"]',
        ]
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        tester = json.dumps([sys.executable, str(self.tester)])
        lines += [
            "[agents.dev]",
            'command = ["sh", "-c", "echo x >> code.txt"]',
            "[agents.tester]",
            f"command = {tester}",
            f"env = {{ SEEN = {json.dumps(str(self.seen))} }}",
            # The built-in claude, replaced by the stand-in: the LLM tester "as before".
            "[agents.claude]",
            f"command = {tester}",
            f"env = {{ SEEN = {json.dumps(str(self.seen))} }}",
            "[stages.development]",
            'agent = "dev"',
        ]
        config = self.tmp_path / "orch.toml"
        config.write_text("\n".join(lines) + "\n")
        return load_settings(config)

    def run_task(self, settings: Settings, repo: Path, work_item: str = "T-1") -> Task:
        task = TaskService(self.store, settings).create_task(
            repo_path=repo, title="Add numbers", work_item=work_item
        )
        engine = Engine(self.store, settings)
        deadline = time.monotonic() + DRIVE_TIMEOUT_S

        def ended() -> bool:
            current = self.store.get_task(task.id)
            if time.monotonic() > deadline:
                pytest.fail(f"task still in {current.stage} after {DRIVE_TIMEOUT_S}s")
            return current.stage in ("done", "cancelled") or current.failed

        try:
            engine.run(threading.Event(), until=ended)
        finally:
            engine.shutdown(kill=True)
        return self.store.get_task(task.id)


@pytest.fixture
def world(tmp_path: Path, db_url: str, store: Store) -> World:
    return World(tmp_path, db_url, store)


def _testing_jobs(store: Store, task: Task) -> list[tuple[str, str, int, str]]:
    return [
        (job.kind, job.agent, job.attempt, job.status)
        for job in store.task_jobs(task.id)
        if job.stage == "testing"
    ]


def test_tc07_defer_is_retried_then_explained_and_the_runner_verdict_stands(
    world: World, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {**SUITE, **BROKEN})
    settings = world.settings(
        max_attempts=3,
        max_rollbacks=0,
        test_runner_defer_retries=1,
        test_runner_hybrid_agent="tester",
    )
    task = world.run_task(settings, repo)

    # Attempt 1 deferred (a failed job, retried); attempt 2 handed off and was judged.
    assert _testing_jobs(world.store, task) == [
        ("runner", "runner:tests", 1, "failed"),
        ("runner", "runner:tests", 2, "failed"),
    ]
    events = world.store.task_events(task.id)
    retries = [e for e in events if e.kind == "job.retry"]
    assert len(retries) == 1
    assert "DEFER" in retries[0].reason
    verdicts = [e for e in events if e.kind == "gate.verdict"]
    assert [v.data["outcome"] for v in verdicts if v.to_stage == "testing"] == ["fail"]
    assert "result DEFER" in verdicts[-1].reason
    exits = [e for e in events if e.kind == "job.exited" and e.to_stage == "testing"]
    assert exits[-1].data["tests_status"] == "DEFER"
    assert exits[-1].data["handed_to"] == "tester"

    # The task did not advance: the gate failed the runner's DEFER (no rollbacks left).
    assert task.failed
    assert task.stage == "testing"
    assert "result DEFER" in (task.failed_reason or "")

    # The report in the worktree is the runner's, with the explanation inside it.
    worktree = Path(task.worktree)
    text = (worktree / "docs/work-items/T-1" / TEST_REPORT_FILE).read_text()
    parsed = _parse_tests_verdict(text)
    assert (parsed.result, parsed.status, parsed.exit_code) == ("DEFER", "DEFER", 2)
    assert not parsed.problems
    assert "Explanation by the tester agent `tester` (not a verdict)" in text
    assert "module_that_does_not_exist fails in tests/test_broken.py" in text
    # The agent's edits to the worktree were thrown away.
    assert "the tester was here" not in (worktree / "calc.py").read_text()
    # It was asked through its prompt, and what it cost is on the run.
    assert "You do NOT decide whether the tests pass" in world.seen.read_text()
    runs = world.store.task_runs(task.id)
    assert runs[-1].cost_usd == pytest.approx(TESTER_COST_USD)


def test_tc06_a_crashing_runner_is_retried_never_an_exception_in_the_engine(
    world: World, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", SUITE)
    # The report's path is a directory: the runner raises inside, every attempt.
    (repo / "docs/work-items/T-1/13-test-report.md").mkdir(parents=True)
    (repo / "docs/work-items/T-1/13-test-report.md/.keep").write_text("")
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", "block the report path")
    settings = world.settings(max_attempts=2, test_runner_hybrid=False)
    task = world.run_task(settings, repo)
    assert _testing_jobs(world.store, task) == [
        ("runner", "runner:tests", 1, "failed"),
        ("runner", "runner:tests", 2, "failed"),
    ]
    assert task.failed
    assert "IsADirectoryError" in (task.failed_reason or "")
    kinds = [e.kind for e in world.store.task_events(task.id)]
    assert "job.retry" in kinds
    assert not [e for e in world.store.task_events(task.id) if "finalize" in e.reason]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, ("runner", "runner:tests")),
        ({"test_runner_enabled": False}, ("agent", "claude")),
        ({"test_runner_repos": ["some-other-repository"]}, ("agent", "claude")),
        ({"test_runner_repos": ["repo"]}, ("runner", "runner:tests")),
    ],
    ids=["tc08-on", "tc08-kill-switch-off", "tc09-out-of-scope", "tc09-in-scope"],
)
def test_tc08_tc09_kill_switch_and_scope_choose_who_tests(
    world: World, tmp_path: Path, values: dict[str, Any], expected: tuple[str, str]
) -> None:
    repo = make_repo(tmp_path / "repo", SUITE)
    task = world.run_task(world.settings(**values), repo)
    assert task.stage == "done", task.failed_reason
    jobs = _testing_jobs(world.store, task)
    assert [(kind, agent) for kind, agent, _, _ in jobs] == [expected]
    if expected[0] == "agent":
        # The LLM tester ran as before: its report (its own PASS) is what the gate read.
        assert world.seen.exists()
    else:
        assert not world.seen.exists()
