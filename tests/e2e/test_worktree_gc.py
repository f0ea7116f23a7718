"""The real `orch` CLI: a finished task's worktree is gone, and `orch gc` says what it freed.

A task runs to ``done`` through ``orch run`` (scripted agents, real git and pytest), a
second one is cancelled; both worktrees must be gone, their branches kept. Then an
orphaned directory and a stale git entry are left behind on purpose, and ``orch gc
--dry-run --json`` / ``orch gc --json`` must report them (and only the real run remove
them), with the bytes freed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli.demo_project import create_demo_repository

pytestmark = pytest.mark.e2e

ORCH = [sys.executable, "-m", "orchestrator"]
CONFIG = """\
data_dir = ".orch"
retry_backoff_s = 0
max_attempts = 2
skip = ["brd-approval"]

[stages.analysis]
agent = "scripted"
[stages.architecture]
agent = "scripted"
[stages.development]
agent = "scripted"
"""
ORPHAN_BYTES = 300_000


def orch(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        [*ORCH, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stderr}"
    return result


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_finished_worktrees_are_gone_and_gc_reports_what_it_freed(tmp_path: Path) -> None:
    (tmp_path / "orch.toml").write_text(CONFIG)
    repo = create_demo_repository(tmp_path / "textkit").resolve()
    for work_item in ("GC-1", "GC-2"):
        ok(orch(tmp_path, "task", "create", "--repo", str(repo), "--title", "Add slugify",
                "--work-item", work_item))  # fmt: skip
    ok(orch(tmp_path, "task", "cancel", "GC-2"))
    ok(orch(tmp_path, "run"))

    shown = {
        item: json.loads(ok(orch(tmp_path, "task", "show", item, "--json")).stdout)
        for item in ("GC-1", "GC-2")
    }
    assert shown["GC-1"]["stage"] == "done"
    assert shown["GC-2"]["stage"] == "cancelled"
    for task in shown.values():
        assert not Path(task["worktree"]).exists()
        assert task["worktree_removed_at"] is not None
        assert git(repo, "rev-parse", "--verify", task["branch"])  # the branch stays
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    human = ok(orch(tmp_path, "task", "show", "GC-1")).stdout
    assert "worktree:   removed" in human

    # Left behind: a directory no task owns (as a crash between `git worktree add` and
    # the task's insert leaves), an hour old; and a worktree entry whose directory is gone.
    orphan = tmp_path / ".orch" / "worktrees" / "textkit-deadbeef" / "GHOST-1"
    orphan.mkdir(parents=True)
    (orphan / "blob.bin").write_bytes(os.urandom(ORPHAN_BYTES))
    an_hour_ago = time.time() - 3700
    os.utime(orphan, (an_hour_ago, an_hour_ago))
    stray = tmp_path / "stray-worktree"
    git(repo, "worktree", "add", "--quiet", "--detach", str(stray))
    shutil.rmtree(stray)

    dry = json.loads(ok(orch(tmp_path, "gc", "--dry-run", "--json")).stdout)
    assert dry["dry_run"] is True
    assert [o["path"] for o in dry["orphans"]] == [str(orphan.resolve())]
    assert dry["bytes_freed"] >= ORPHAN_BYTES
    assert [p["repository"] for p in dry["pruned"]] == [str(repo)]
    assert orphan.exists()
    assert "stray-worktree" in git(repo, "worktree", "list")

    done = json.loads(ok(orch(tmp_path, "gc", "--json")).stdout)
    assert done["dry_run"] is False
    assert done["bytes_freed"] == dry["bytes_freed"]
    assert done["failed"] == []
    assert not orphan.exists()
    assert "stray-worktree" not in git(repo, "worktree", "list")

    again = json.loads(ok(orch(tmp_path, "gc", "--json")).stdout)
    assert again["bytes_freed"] == 0
    assert again["orphans"] == again["pruned"] == again["released"] == []
    human = ok(orch(tmp_path, "gc")).stdout
    assert "freed 0 B" in human

    helped = ok(orch(tmp_path, "gc", "--help")).stdout
    assert "--dry-run" in helped
    assert "--json" in helped
    assert "worktree_retention_failed_s" in helped


def test_gc_without_a_database_writes_nothing(tmp_path: Path) -> None:
    result = ok(orch(tmp_path, "gc", "--json"))
    assert json.loads(result.stdout)["bytes_freed"] == 0
    assert not (tmp_path / ".orch").exists()
