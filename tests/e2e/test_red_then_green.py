"""Red, then green: the real `orch` CLI, the scripted agent, the real test runner.

The demo project's recipe for RG-1 writes a buggy ``word_count`` on the first
development run; the test runner's report fails it and the task rolls back; the second
development run reads the failure report (its round expects the failing test's name in
it) and writes the fix; the runner passes it and the task is merged and done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli.demo_project import create_demo_repository, write_red_green_recipe

pytestmark = pytest.mark.e2e

CONFIG = """\
data_dir = ".orch"
retry_backoff_s = 0
max_attempts = 2
max_rollbacks = 1

[stages.analysis]
agent = "scripted"
[stages.architecture]
agent = "scripted"
[stages.development]
agent = "scripted"
"""


def orch(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"orch {' '.join(args)}: {result.stderr}"
    return result


def test_tests_red_on_the_first_development_run_green_on_the_second(tmp_path: Path) -> None:
    (tmp_path / "orch.toml").write_text(CONFIG)
    repo = create_demo_repository(tmp_path / "textkit")
    write_red_green_recipe(repo, "RG-1")
    orch(
        tmp_path,
        "task",
        "create",
        "--repo",
        str(repo),
        "--title",
        "Count words",
        "--work-item",
        "RG-1",
    )
    orch(tmp_path, "run")
    orch(tmp_path, "task", "approve", "RG-1")
    orch(tmp_path, "run")

    shown = json.loads(orch(tmp_path, "task", "show", "RG-1", "--json").stdout)
    assert shown["stage"] == "done", shown["failed_reason"]
    development = [job for job in shown["jobs"] if job["stage"] == "development"]
    assert len(development) == 2
    testing = [job for job in shown["jobs"] if job["stage"] == "testing"]
    assert [(job["agent"], job["status"]) for job in testing] == [
        ("runner:tests", "failed"),
        ("runner:tests", "done"),
    ]
    verdicts = [
        e["data"]["outcome"]
        for e in shown["events"]
        if e["kind"] == "gate.verdict" and e["to_stage"] == "testing"
    ]
    assert verdicts == ["fail", "pass"]
    rollbacks = [e for e in shown["events"] if e["kind"] == "task.rollback"]
    assert len(rollbacks) == 1
    assert "13-test-report.md: result FAIL" in rollbacks[0]["reason"]

    # The second development run read the failure report: its notes name the failing test.
    docs = repo / "docs" / "work-items" / "RG-1"
    notes = (docs / "10-dev-notes.md").read_text()
    assert "round 2" in notes
    assert "failure in `tests/test_wordcount.py::test_ignores_repeated_spaces`" in notes
    assert "result: PASS" in (docs / "13-test-report.md").read_text()
    assert "len(text.split())" in (repo / "textkit" / "wordcount.py").read_text()

    human = orch(tmp_path, "task", "show", "RG-1").stdout
    row = next(line for line in human.splitlines() if line.lstrip().startswith("development"))
    assert " 2 " in f" {row} ", row
