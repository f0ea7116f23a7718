"""Development breaks the tests: the next development run is told which, usably.

The real ``orch`` CLI, the real test runner, real git and pytest. The development agent
is a command agent (a Python script) that breaks ``add`` on its first run. On its second
run it records its prompt and ``$ORCH_FEEDBACK``, runs ``python -m pytest <id>`` in its
worktree for every node id the feedback names (recording the exit codes), then fixes the
code. The test checks the ids are real pytest node ids (pytest exits 1, a failing test,
not 4 or 5, an unknown id), that the assertion messages and the report's path are there,
and that the task then reaches ``done``.
"""

from __future__ import annotations

import json
import os
import re
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
    "calc/__init__.py": "",
    "calc/ops.py": "def add(a, b):\n    return a + b\n",
    "tests/__init__.py": "",
    "tests/unit/__init__.py": "",
    "tests/unit/test_ops.py": """\
import pytest

from calc.ops import add


class TestAdd:
    class TestSmall:
        @pytest.mark.parametrize(("a", "b", "total"), [(2, 3, 5), (1, 1, 2)])
        def test_add(self, a, b, total):
            assert add(a, b) == total, f"add({a}, {b}) should be {total}"


def test_zero():
    assert add(0, 0) == 0
""",
}
DEVELOPER: Final = """\
import json, os, re, subprocess, sys
from pathlib import Path

record = Path(os.environ["RECORD"])
prompt = sys.stdin.read()
ops = Path("calc/ops.py")
if os.environ["ORCH_ROLLBACK_COUNT"] == "0":
    ops.write_text("def add(a, b):\\n    return a - b\\n")
    sys.exit(0)
feedback = os.environ.get("ORCH_FEEDBACK", "")
(record / "prompt.md").write_text(prompt)
(record / "feedback.txt").write_text(feedback)
ids = re.findall(r"`([^`\\s]+\\.py::[^`]+)`", feedback)
codes = {}
for node in ids:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
        capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    codes[node] = [done.returncode, done.stdout[-2000:]]
(record / "pytest.json").write_text(json.dumps(codes))
ops.write_text("def add(a, b):\\n    return a + b\\n")
"""


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        check=True,
    )


def _repo(path: Path) -> Path:
    for name, text in FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    _git(path, "init", "--quiet", "--initial-branch=main")
    _git(path, "add", "--all")
    _git(path, "commit", "--quiet", "-m", "calc")
    return path


def orch(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
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
    assert result.returncode == 0, f"orch {' '.join(args)}: {result.stderr}"
    return result


def test_the_second_development_run_gets_pasteable_failing_tests(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "calc-repo")
    record = tmp_path / "record"
    record.mkdir()
    developer = tmp_path / "developer.py"
    developer.write_text(DEVELOPER)
    (tmp_path / "orch.toml").write_text(
        "\n".join(
            [
                'data_dir = ".orch"',
                "retry_backoff_s = 0",
                "max_attempts = 2",
                "max_rollbacks = 1",
                "test_runner_hybrid = false",
                'skip = ["analysis", "brd-approval", "architecture", "deploy-staging", "deploy"]',
                "[agents.dev]",
                f"command = {json.dumps([sys.executable, str(developer)])}",
                f"env = {{ RECORD = {json.dumps(str(record))} }}",
                "[stages.development]",
                'agent = "dev"',
            ]
        )
        + "\n"
    )
    orch(tmp_path, "task", "create", "--repo", str(repo), "--title", "Add", "--work-item", "FB-1")
    orch(tmp_path, "run")

    shown = json.loads(orch(tmp_path, "task", "show", "FB-1", "--json").stdout)
    assert shown["stage"] == "done", shown["failed_reason"]
    assert [job["stage"] for job in shown["jobs"]].count("development") == 2

    feedback = (record / "feedback.txt").read_text()
    prompt = (record / "prompt.md").read_text()
    broken = "tests/unit/test_ops.py::TestAdd::TestSmall::test_add[2-3-5]"
    for text in (feedback, prompt):
        assert f"`{broken}`" in text
        assert "AssertionError: add(2, 3) should be 5" in text
        assert "Full report: docs/work-items/FB-1/13-test-report.md (in your worktree)." in text
        assert "Log tail" in text
    assert "test_zero" not in feedback  # it passed

    # Every id in the feedback is one pytest accepts: it ran that (failing) test.
    codes = json.loads((record / "pytest.json").read_text())
    assert set(codes) == {
        broken,
        "tests/unit/test_ops.py::TestAdd::TestSmall::test_add[1-1-2]",
    }
    for node, (code, output) in codes.items():
        assert code == 1, f"{node}: pytest exited {code}:\n{output}"
        assert re.search(r"\b1 failed\b", output), output
