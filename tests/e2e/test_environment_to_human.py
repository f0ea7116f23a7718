"""A configuration problem goes to a person, never to the coding agent.

The real ``orch`` CLI, real git, the real test runner. The repository's ``test_command``
names a program that does not exist: the runner cannot start it. That is the
environment's fault, not the code's, so the task must wait for a person (failed, with
the reason and the retry command, in ``task show`` / ``task list`` / ``--json``) without
a retry, a hybrid hand-off or a rollback: development runs once. After the person fixes
``orch.toml``, ``orch task retry`` finishes the task.

Also: ``orch task create`` refuses a task whose hybrid explainer cannot start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

pytestmark = pytest.mark.e2e

GIT_ENV: Final = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@localhost",
}
FILES: Final = {
    ".gitignore": "__pycache__/\n",
    "pyproject.toml": '[tool.pytest.ini_options]\npythonpath = ["."]\n',
    "calc.py": "def add(a, b):\n    return a + b\n",
    "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
}
MISSING_TOOL: Final = "no-such-test-tool-3f9c"


def _repo(path: Path) -> Path:
    for name, text in FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    for args in (
        ["init", "--quiet", "--initial-branch=main"],
        ["add", "--all"],
        ["commit", "--quiet", "-m", "calc"],
    ):
        subprocess.run(
            ["git", "-c", "commit.gpgsign=false", *args],
            cwd=path,
            env={**os.environ, **GIT_ENV},
            capture_output=True,
            check=True,
        )
    return path


def orch(workdir: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if ok:
        assert result.returncode == 0, f"orch {' '.join(args)}: {result.stderr}"
    return result


def _config(developer: Path, *extra: str) -> str:
    return (
        "\n".join(
            [
                'data_dir = ".orch"',
                "retry_backoff_s = 0",
                'skip = ["analysis", "brd-approval", "architecture", "deploy-staging", "deploy"]',
                # Hybrid on (the default) and its hand-off on the first DEFER: before the
                # fix, the hand-off rolled a configuration problem back to development.
                "test_runner_defer_retries = 0",
                *extra,
                "[agents.dev]",
                f"command = {json.dumps([sys.executable, str(developer)])}",
                "[stages.development]",
                'agent = "dev"',
            ]
        )
        + "\n"
    )


DEVELOPER: Final = """\
import sys
from pathlib import Path
sys.stdin.read()
with Path("calc.py").open("a") as f:
    f.write("# developed\\n")
"""


def test_a_test_command_that_cannot_start_waits_for_a_person_then_retry_finishes(
    tmp_path: Path,
) -> None:
    repo = _repo(tmp_path / "calc-repo")
    developer = tmp_path / "developer.py"
    developer.write_text(DEVELOPER)
    config = tmp_path / "orch.toml"
    broken = f'[repos.calc-repo]\ntest_command = [{json.dumps(MISSING_TOOL)}, "-q"]'
    config.write_text(_config(developer) + broken + "\n")
    orch(tmp_path, "task", "create", "--repo", str(repo), "--title", "Add", "--work-item", "ENV-1")
    orch(tmp_path, "run", ok=False)  # a failed task: `orch run` may say so with exit 1

    shown = json.loads(orch(tmp_path, "task", "show", "ENV-1", "--json").stdout)
    assert shown["failed"] is True
    assert shown["stage"] == "testing"
    reason = shown["failed_reason"]
    assert MISSING_TOOL in reason
    assert "could not start" in reason
    assert "not the code" in reason
    assert "orch task retry ENV-1" in reason
    stages = [job["stage"] for job in shown["jobs"]]
    assert stages == ["development", "testing"]  # no retry, no hand-off, no rollback
    kinds = [event["kind"] for event in shown["events"]]
    assert "task.rollback" not in kinds
    assert "job.retry" not in kinds
    failed = next(event for event in shown["events"] if event["kind"] == "task.failed")
    assert failed["data"] == {"cause": "environment"}

    human = orch(tmp_path, "task", "show", "ENV-1").stdout
    assert MISSING_TOOL in human
    assert "orch task retry ENV-1" in human
    listed = orch(tmp_path, "task", "list").stdout
    assert "failed" in listed

    # The person fixes the configuration and retries: the task finishes.
    config.write_text(_config(developer))
    orch(tmp_path, "task", "retry", "ENV-1")
    orch(tmp_path, "run")
    shown = json.loads(orch(tmp_path, "task", "show", "ENV-1", "--json").stdout)
    assert shown["stage"] == "done", shown["failed_reason"]
    assert [job["stage"] for job in shown["jobs"]].count("development") == 1


def test_create_refuses_a_hybrid_explainer_that_cannot_start(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "calc-repo")
    developer = tmp_path / "developer.py"
    developer.write_text(DEVELOPER)
    (tmp_path / "orch.toml").write_text(
        _config(developer, 'test_runner_hybrid_agent = "explainer"')
        + '[agents.explainer]\ncommand = ["/nonexistent/explainer-cli"]\n'
    )
    refused = orch(tmp_path, "task", "create", "--repo", str(repo), "--title", "A", ok=False)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, refused.stderr
    assert "hybrid test explainer" in lines[0]
    assert "/nonexistent/explainer-cli" in lines[0]
    assert "test_runner_hybrid = false" in lines[0]
    assert not (tmp_path / ".orch" / "worktrees").exists() or not any(
        (tmp_path / ".orch" / "worktrees").rglob("*")
    )

    # Hybrid off: the explainer is not needed, the task is created.
    (tmp_path / "orch.toml").write_text(
        _config(developer, 'test_runner_hybrid_agent = "explainer"', "test_runner_hybrid = false")
        + '[agents.explainer]\ncommand = ["/nonexistent/explainer-cli"]\n'
    )
    orch(tmp_path, "task", "create", "--repo", str(repo), "--title", "A")
