"""The real `orch` command as a subprocess: real git, real pytest, the scripted agent."""

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli.demo_project import create_demo_repository, write_failing_recipe

pytestmark = pytest.mark.e2e

ORCH = [sys.executable, "-m", "orchestrator"]
SCRIPTED_CONFIG = """\
data_dir = ".orch"
retry_backoff_s = 0
max_attempts = 2
max_rollbacks = {max_rollbacks}

[stages.analysis]
agent = "scripted"
[stages.architecture]
agent = "scripted"
[stages.development]
agent = "scripted"
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def orch(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*ORCH, *args],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(f"orch {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "orch.toml").write_text(SCRIPTED_CONFIG.format(max_rollbacks=1))
    return tmp_path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return create_demo_repository(tmp_path / "textkit")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_task_runs_to_done_through_the_cli(workdir: Path, repo: Path) -> None:
    main_before = _git(repo, "rev-parse", "main")
    created = orch(
        workdir,
        "task",
        "create",
        "--repo",
        str(repo),
        "--title",
        "Add slugify",
        "--work-item",
        "DEMO-1",
        "--json",
    )
    assert json.loads(created.stdout)["stage"] == "analysis"

    first = orch(workdir, "run")
    assert "waits for approval: orch task approve DEMO-1" in first.stdout
    shown = json.loads(orch(workdir, "task", "show", "DEMO-1", "--json").stdout)
    assert shown["stage"] == "brd-approval"

    orch(workdir, "task", "approve", "DEMO-1")
    orch(workdir, "run")

    shown = json.loads(orch(workdir, "task", "show", "DEMO-1", "--json").stdout)
    assert shown["stage"] == "done"
    assert not shown["failed"]
    # --json shows moments as the HTTP API does: ISO 8601 UTC (decision 0018).
    iso = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
    assert iso.fullmatch(shown["created_at"])
    assert all(iso.fullmatch(e["created_at"]) for e in shown["events"])
    assert all(
        iso.fullmatch(j["enqueued_at"]) and iso.fullmatch(j["not_before"]) for j in shown["jobs"]
    )
    kinds = [event["kind"] for event in shown["events"]]
    assert kinds[0] == "task.created"
    assert "task.approved" in kinds
    moves = [e["to_stage"] for e in shown["events"] if e["kind"] == "stage.changed"]
    # architecture is entered by the approval (a task.approved event).
    assert moves == [
        "analysis",
        "brd-approval",
        "development",
        "testing",
        "deploy-staging",
        "deploy",
        "done",
    ]
    # The task's cost is the sum of its runs; the scripted agent reports a cost.
    assert shown["cost_usd"] == pytest.approx(sum(run["cost_usd"] for run in shown["runs"]))
    assert shown["cost_usd"] > 0

    # The change is merged on main, with every stage's artifact.
    assert _git(repo, "rev-parse", "main") != main_before
    assert _git(repo, "merge-base", "--is-ancestor", "orch/DEMO-1", "main") == ""
    docs = repo / "docs" / "work-items" / "DEMO-1"
    for artifact in (
        "01-brd.md",
        "13-test-report.md",
        "14-staging-report.md",
        "15-deploy-report.md",
    ):
        assert (docs / artifact).is_file(), artifact
    assert list((docs / "06-adr").glob("*.md"))
    assert (repo / "textkit" / "slugify.py").is_file()

    human = orch(workdir, "task", "show", "DEMO-1").stdout
    assert "stage:      Done" in human
    assert "task.approved" in human
    logs = orch(workdir, "task", "logs", "DEMO-1", "--stage", "testing").stdout
    assert "passed" in logs


def test_testing_gate_failing_twice_fails_the_task_with_the_reason(
    workdir: Path, repo: Path
) -> None:
    write_failing_recipe(repo, "FAIL-1")
    orch(
        workdir,
        "task",
        "create",
        "--repo",
        str(repo),
        "--title",
        "Count words",
        "--work-item",
        "FAIL-1",
    )
    orch(workdir, "run")
    orch(workdir, "task", "approve", "FAIL-1")
    # The task failed during this run: `orch run` says so and exits 1 (README: failures
    # exit 1); seen exiting 0 before.
    failing_run = orch(workdir, "run", check=False)
    assert failing_run.returncode == 1, failing_run.stderr
    assert "FAIL-1 failed: testing gate failed" in failing_run.stdout
    assert "orch task retry FAIL-1" in failing_run.stdout
    # A failure from an earlier run is not this run's: nothing ran, exit 0.
    assert orch(workdir, "run").returncode == 0

    shown = json.loads(orch(workdir, "task", "show", "FAIL-1", "--json").stdout)
    assert shown["failed"]
    assert shown["stage"] == "testing"
    reason = shown["failed_reason"]
    assert "testing gate failed" in reason
    assert "13-test-report.md" in reason
    assert shown["commands"] == {"retry": "orch task retry FAIL-1"}
    verdicts = [
        e for e in shown["events"] if e["kind"] == "gate.verdict" and e["to_stage"] == "testing"
    ]
    assert [v["data"]["outcome"] for v in verdicts] == ["fail", "fail"]
    assert [e["kind"] for e in shown["events"]].count("task.rollback") == 1
    # Nothing was merged.
    merged = subprocess.run(
        ["git", "merge-base", "--is-ancestor", "orch/FAIL-1", "main"], cwd=repo, check=False
    )
    assert merged.returncode == 1

    human = orch(workdir, "task", "show", "FAIL-1").stdout
    assert "failed at Testing" in human
    assert "failed:     testing gate failed" in human
    assert "retry:      orch task retry FAIL-1   (after fixing the cause)" in human


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _task_count(workdir: Path) -> int:
    database = workdir / ".orch" / "orch.db"
    if not database.exists():
        return 0
    with sqlite3.connect(database) as conn:
        return int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["task", "show", "NOPE-9"], ["no task 'NOPE-9'"]),
        (["task", "approve", "NOPE-9"], ["no task 'NOPE-9'"]),
        (["task", "create", "--repo", "{notgit}", "--title", "x"], ["not a git repository"]),
        (
            ["task", "create", "--repo", "{repo}", "--title", "x", "--work-item", "a/b"],
            ["work item 'a/b' is not valid"],
        ),
        (
            ["task", "create", "--repo", "{repo}", "--title", "x", "--work-item", "../etc"],
            ["is not valid"],
        ),
        (
            ["task", "create", "--repo", "{repo}", "--title", "x", "--work-item", "x;rm -rf ~"],
            ["is not valid"],
        ),
        (
            ["task", "create", "--repo", "{repo}", "--title", "x", "--work-item", "$(id)"],
            ["is not valid"],
        ),
        (["task", "create", "--repo", "{repo}", "--title", "T" * 100_000], ["title is 100000"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    workdir: Path, repo: Path, args: list[str], needles: list[str]
) -> None:
    notgit = workdir / "plain-dir"
    notgit.mkdir()
    filled = [a.replace("{repo}", str(repo)).replace("{notgit}", str(notgit)) for a in args]
    result = orch(workdir, *filled, check=False)
    _assert_one_line_error(result, *needles)
    assert _task_count(workdir) == 0
    assert _git(repo, "branch", "--list", "orch/*") == ""


def test_a_missing_agent_binary_is_reported_before_anything_is_written(
    tmp_path: Path, repo: Path
) -> None:
    (tmp_path / "orch.toml").write_text(
        '[agents.ghost]\ncommand = ["no-such-agent-binary", "-p", "{prompt}"]\n'
        '[stages.analysis]\nagent = "ghost"\n'
    )
    result = orch(tmp_path, "task", "create", "--repo", str(repo), "--title", "x", check=False)
    _assert_one_line_error(result, "no-such-agent-binary", "not found on PATH")
    assert _task_count(tmp_path) == 0
    assert _git(repo, "branch", "--list", "orch/*") == ""


def test_a_malformed_config_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "orch.toml").write_text("max_attempts = 3\nmax_rollbacks = = 2\n")
    result = orch(tmp_path, "task", "list", check=False)
    _assert_one_line_error(result, "orch.toml", "line 2")
    assert result.returncode == 2


def test_an_unknown_config_key_names_the_key_and_line(tmp_path: Path) -> None:
    (tmp_path / "orch.toml").write_text("max_attempts = 3\n\n[repos.x]\nskipp = []\n")
    result = orch(tmp_path, "config", "show", check=False)
    _assert_one_line_error(result, "orch.toml:4", "unknown key 'skipp'", "[repos.x]")
    assert result.returncode == 2


def test_config_show_says_where_values_come_from(workdir: Path) -> None:
    env_result = subprocess.run(
        [*ORCH, "config", "show", "--json"],
        cwd=workdir,
        env={**_env(), "ORCH_AGENT_TIMEOUT_S": "12"},
        capture_output=True,
        text=True,
        check=True,
    )
    shown = json.loads(env_result.stdout)
    assert shown["agent_timeout_s"]["value"] == 12.0
    assert shown["agent_timeout_s"]["source"] == "env ORCH_AGENT_TIMEOUT_S"
    assert shown["max_attempts"]["source"].endswith("orch.toml:3")
    assert shown["reaper_finalize_grace_s"]["value"] == 300.0
    assert shown["reaper_finalize_grace_s"]["source"] == "default"


def test_usage_errors_exit_2(workdir: Path) -> None:
    result = orch(workdir, "task", "create", "--title", "x", check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_orch_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    keep = tmp_path / "demo"
    result = orch(tmp_path, "demo", "--keep", str(keep))
    assert "merged on main" in result.stdout
    assert "BRD gate: auto-approved by the demo" in result.stdout
    shown = json.loads(
        orch(
            tmp_path, "--config", str(keep / "orch.toml"), "task", "show", "DEMO-1", "--json"
        ).stdout
    )
    assert shown["stage"] == "done"
