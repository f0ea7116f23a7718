"""The real `orch` CLI on a real repository whose `.gitignore` does not list `.venv`:
what tools and agents leave in the worktree never reaches a commit (issue 13, item 1)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ORCH = [sys.executable, "-m", "orchestrator"]
WORK_ITEM = "JUNK-1"
# Paths no commit of the task branch or of main may hold.
JUNK = (".venv/", "node_modules/", ".env", "hooks-venv/", "build/")

RECIPE = """\
# The development agent writes a real change, and leaves what tools leave behind.
[[files]]
path = "calc/double.py"
content = '''
def double(x: int) -> int:
    return 2 * x
'''

[[files]]
path = "tests/test_double.py"
content = '''
from calc.double import double


def test_double() -> None:
    assert double(4) == 8
'''

[[files]]
path = ".env"
content = "API_KEY=sk-live-do-not-commit\\n"

[[files]]
path = "node_modules/left-pad/index.js"
content = "module.exports = (s) => s;\\n"

[[files]]
path = "build/lib/calc/double.py"
content = "# build output\\n"
"""

CONFIG = """\
data_dir = ".orch"
retry_backoff_s = 0
max_attempts = 2
test_runner_hybrid = false
# Keep the worktree after done: the test looks at what was left in it.
worktree_retention_done_s = 3600

[stages.analysis]
agent = "scripted"
[stages.architecture]
agent = "scripted"
[stages.development]
agent = "scripted"

[repos.calc]
# The README's own pattern: the test runner makes a virtualenv in the worktree.
setup_command = [{python}, "-m", "venv", "--without-pip", ".venv"]
test_command = [{python}, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def _make_repository(path: Path) -> Path:
    files = {
        # A real project's .gitignore that knows nothing of virtualenvs or node_modules.
        ".gitignore": "__pycache__/\n*.pyc\n",
        "calc/__init__.py": "",
        "tests/test_calc.py": "import calc\n\n\ndef test_import() -> None:\n    assert calc\n",
        f"docs/work-items/{WORK_ITEM}/recipe.toml": RECIPE,
    }
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text, encoding="utf-8")
    _git(path, "init", "-q", "-b", "main")
    _git(path, "add", "--all")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return path


def orch(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run(
        [*ORCH, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"orch {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def _committed_paths(repo: Path, ref: str) -> set[str]:
    """Every path any commit reachable from ``ref`` added or changed."""
    return set(_git(repo, "log", "--format=", "--name-only", ref).split())


def _junk(paths: set[str]) -> list[str]:
    return sorted(p for p in paths if any(p == j or p.startswith(j) for j in JUNK))


def test_tool_and_agent_leftovers_never_reach_a_commit(tmp_path: Path) -> None:
    repo = _make_repository(tmp_path / "calc")
    workdir = tmp_path / "orch"
    workdir.mkdir()
    python = json.dumps(sys.executable)
    (workdir / "orch.toml").write_text(CONFIG.format(python=python), encoding="utf-8")

    orch(workdir, "task", "create", "--repo", str(repo), "--title", "Add double()",
         "--work-item", WORK_ITEM)  # fmt: skip
    orch(workdir, "run")
    orch(workdir, "task", "approve", WORK_ITEM)
    orch(workdir, "run")

    shown = json.loads(orch(workdir, "task", "show", WORK_ITEM, "--json").stdout)
    reasons = [event["reason"] for event in shown["events"]]
    assert shown["stage"] == "done", reasons
    assert not shown["failed"]
    # The change itself is on main, with its test.
    on_main = _committed_paths(repo, "main")
    assert {"calc/double.py", "tests/test_double.py"} <= on_main
    # The leftovers are still in the worktree (left alone), in no commit anywhere.
    worktree = Path(shown["worktree"])
    for left in (".venv/pyvenv.cfg", ".env", "node_modules/left-pad/index.js"):
        assert (worktree / left).exists(), left
    assert _junk(on_main) == []
    assert _junk(_committed_paths(repo, f"orch/{WORK_ITEM}")) == []
    # The testing stage passed the first time: the runner no longer DEFERs on a venv.
    started = [e["to_stage"] for e in shown["events"] if e["kind"] == "job.started"]
    assert started.count("testing") == 1, reasons


HOOKS_CONFIG = """\
data_dir = ".orch"
retry_backoff_s = 0
max_attempts = 2
test_runner_hybrid = false
# Keep the worktree after done: the test looks at what was left in it.
worktree_retention_done_s = 3600

[stages.analysis]
agent = "scripted"
[stages.architecture]
agent = "scripted"
[stages.development]
agent = "scripted"

[repos.calc]
worktree_include = [".env.local"]
after_create = [{python}, "-m", "venv", "--without-pip", "hooks-venv"]
before_run = ["sh", "-c", "echo preparing > before-run.txt"]
test_command = [{python}, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
"""


def test_hooks_and_included_files_set_up_the_worktree_and_stay_out_of_commits(
    tmp_path: Path,
) -> None:
    repo = _make_repository(tmp_path / "calc")
    # An ignored file of the main checkout, which jobs need in their worktree.
    (repo / ".env.local").write_text("DATABASE_URL=sqlite:///dev.db\n", encoding="utf-8")
    workdir = tmp_path / "orch"
    workdir.mkdir()
    python = json.dumps(sys.executable)
    (workdir / "orch.toml").write_text(HOOKS_CONFIG.format(python=python), encoding="utf-8")

    orch(workdir, "task", "create", "--repo", str(repo), "--title", "Add double()",
         "--work-item", WORK_ITEM)  # fmt: skip
    orch(workdir, "run")
    orch(workdir, "task", "approve", WORK_ITEM)
    orch(workdir, "run")

    shown = json.loads(orch(workdir, "task", "show", WORK_ITEM, "--json").stdout)
    assert shown["stage"] == "done", [event["reason"] for event in shown["events"]]
    worktree = Path(shown["worktree"])
    assert (worktree / "hooks-venv" / "pyvenv.cfg").is_file()
    assert (worktree / ".env.local").read_text() == "DATABASE_URL=sqlite:///dev.db\n"
    assert (worktree / "before-run.txt").is_file()
    logs = orch(workdir, "task", "logs", WORK_ITEM, "--all").stdout
    assert logs.count("[orch: hook after_create:") == 1
    assert logs.count("[orch: hook before_run:") == 6  # one per job
    for ref in ("main", f"orch/{WORK_ITEM}"):
        paths = _committed_paths(repo, ref)
        assert "calc/double.py" in paths
        assert _junk(paths) == []
        assert not {".env.local", "before-run.txt"} & paths
