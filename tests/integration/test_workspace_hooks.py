"""Workspace set-up against real git and real processes: hooks, included files, and the
record of what tools created (never committed). Engine tests run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.integration.support import GIT_IDENTITY
from tests.integration.test_engine import World, run_git, world  # noqa: F401

from orchestrator.kernel.decisions import ENVIRONMENT
from orchestrator.runners.context import RESULT_PREFIX, TOOL_ERROR_EXIT
from orchestrator.settings import load_settings
from orchestrator.workspace import hooks
from orchestrator.workspace.commit_policy import CommitPolicy, plan_commit
from orchestrator.workspace.setup import (
    CREATED_RECORD,
    recorded_patterns,
    state_dir,
)


def reconfigure(made: World, repo_table: str) -> None:
    config = made.tmp_path / "orch.toml"
    config.write_text(f"{config.read_text()}\n[repos.repo]\n{repo_table}\n")
    made.settings = load_settings(config)


def toml_list(*argv: str) -> str:
    return "[" + ", ".join(f'"{part}"' for part in argv) + "]"


def tracked(worktree: Path) -> list[str]:
    return run_git(worktree, "ls-files").split()


# --- hooks ------------------------------------------------------------------------------


def test_after_create_runs_once_and_before_run_before_every_job(world: World) -> None:  # noqa: F811
    out = world.out
    world.configure(worktree_retention_done_s=3600)
    after = f"echo once >> {out}/after; mkdir -p gen && echo made > gen/tool.txt"
    reconfigure(
        world,
        f"after_create = {toml_list('sh', '-c', after)}\n"
        f"before_run = {toml_list('sh', '-c', f'echo $ORCH_STAGE >> {out}/before')}",
    )
    task = world.create("T-1")
    engine = world.engine()

    world.drive(engine, world.ended(task), "done", on_tick=world.approve_at_the_gate(task))

    done = world.task(task)
    assert done.stage == "done", done.failed_reason
    assert (out / "after").read_text() == "once\n"
    assert (out / "before").read_text().split() == [
        "analysis",
        "architecture",
        "development",
        "testing",
        "deploy-staging",
        "deploy",
    ]
    # Its output is in the task's logs; what it made is in no commit.
    runs = world.store.task_runs(done.id)
    first_log = Path(runs[0].log_path).read_text()
    assert "[orch: hook after_create: sh -c" in first_log
    assert "[orch: hook before_run exited with code 0" in first_log
    worktree = Path(done.worktree)
    assert (worktree / "gen" / "tool.txt").is_file()
    assert "gen/tool.txt" not in tracked(worktree)
    assert "gen/tool.txt" not in run_git(world.repo, "log", "--name-only", "main")


def test_a_failing_hook_fails_the_task_for_a_person_and_the_agent_never_runs(
    world: World,  # noqa: F811
) -> None:
    world.configure('echo ran > "$OUT/agent-$ORCH_STAGE"')
    reconfigure(world, f"before_run = {toml_list('sh', '-c', 'echo no database >&2; exit 3')}")
    task = world.create("T-1")
    engine = world.engine()

    world.drive(engine, world.ended(task), "the task's failure")

    failed = world.task(task)
    assert failed.failed
    assert failed.stage == "analysis"
    reason = failed.failed_reason or ""
    assert reason.startswith(
        "analysis needs a person: the before_run hook failed: exited with code 3 (its output: "
    )
    assert reason.endswith("not the code: fix it, then run `orch task retry T-1`")
    # No retry, no agent, no commit.
    assert [job.attempt for job in world.store.task_jobs(task.id)] == [1]
    assert not (world.out / "agent-analysis").exists()
    assert run_git(Path(failed.worktree), "rev-parse", "HEAD") == run_git(
        world.repo, "rev-parse", "main"
    )
    assert "no database" in Path(world.store.task_runs(task.id)[0].log_path).read_text()


def test_after_create_that_failed_runs_again_on_retry(world: World) -> None:  # noqa: F811
    flag = world.out / "fixed"
    world.configure()
    hook = f"echo try >> {world.out}/tries; test -f {flag}"
    reconfigure(world, f"after_create = {toml_list('sh', '-c', hook)}")
    task = world.create("T-1")
    engine = world.engine()
    world.drive(engine, world.ended(task), "the task's failure")
    assert world.task(task).failed

    flag.write_text("yes")
    world.service.retry(world.task(task), actor="test")
    world.drive(
        engine,
        lambda: world.task(task).stage == "brd-approval" or world.task(task).failed,
        "the BRD gate",
    )

    assert world.task(task).stage == "brd-approval", world.task(task).failed_reason
    assert (world.out / "tries").read_text() == "try\ntry\n"


def test_a_hook_past_its_timeout_is_killed_with_its_children(world: World) -> None:  # noqa: F811
    pid_file = world.out / "child.pid"
    world.configure()
    hook = f"sleep 120 & echo $! > {pid_file}; wait"
    reconfigure(world, f"hook_timeout_s = 1\nbefore_run = {toml_list('sh', '-c', hook)}")
    task = world.create("T-1")
    engine = world.engine()

    world.drive(engine, world.ended(task), "the task's failure")

    failed = world.task(task)
    assert failed.failed
    assert "the before_run hook failed: timed out after 1s (hook_timeout_s)" in (
        failed.failed_reason or ""
    )
    child = int(pid_file.read_text())
    try:
        os.kill(child, 0)
        alive = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    assert not alive


# --- worktree_include -------------------------------------------------------------------


def test_included_files_are_copied_once_and_never_committed(world: World) -> None:  # noqa: F811
    (world.repo / ".gitignore").write_text("__pycache__/\n.pytest_cache/\nlocal/\n")
    run_git(world.repo, "commit", "-qam", "ignore local/")
    (world.repo / ".env").write_text("TOKEN=abc\n")
    (world.repo / "local").mkdir()
    (world.repo / "local" / "settings.json").write_text("{}\n")
    (world.repo / "local" / "notes.txt").write_text("not included\n")
    world.configure('cat .env > "$OUT/seen-$ORCH_STAGE"', worktree_retention_done_s=3600)
    reconfigure(world, 'worktree_include = [".env", "local/*.json"]')
    task = world.create("T-1")
    engine = world.engine()

    world.drive(engine, world.ended(task), "done", on_tick=world.approve_at_the_gate(task))

    done = world.task(task)
    assert done.stage == "done", done.failed_reason
    assert (world.out / "seen-analysis").read_text() == "TOKEN=abc\n"
    worktree = Path(done.worktree)
    assert (worktree / "local" / "settings.json").is_file()
    assert not (worktree / "local" / "notes.txt").exists()
    history = run_git(world.repo, "log", "--name-only", "--format=", "main").split()
    assert ".env" not in history
    assert "local/settings.json" not in history


# --- the record of tool-created paths ---------------------------------------------------


def make_git_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    env = {**os.environ, **GIT_IDENTITY}
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    (path / "README").write_text("r\n")
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=path, check=True, env=env)
    return path


NAME = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/\\"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", "..", ".git") and s.strip() == s and not s.startswith("-"))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(recorded=NAME, other=NAME)
def test_a_recorded_path_matches_itself_and_nothing_else(
    tmp_path: Path, recorded: str, other: str
) -> None:
    # Glob characters, "!", "#", spaces: the pattern made from a recorded path is literal.
    repo = make_git_repo(Path(tempfile.mkdtemp(dir=tmp_path)) / "r")
    for name in {recorded, other, f"{recorded}x"}:
        (repo / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "d" / name).write_text("x\n")
    record = state_dir(repo) / CREATED_RECORD
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(f"d/{recorded}\n")

    planned = plan_commit(repo, CommitPolicy(exclude=recorded_patterns(repo))).paths

    assert f"d/{recorded}" not in planned
    assert f"d/{recorded}x" in planned
    if other != recorded:
        assert f"d/{other}" in planned


def test_a_failing_hook_speaks_the_runners_environment_marker() -> None:
    # hooks.py is standard library only; its copies of the marker must not drift.
    assert hooks.RESULT_PREFIX == RESULT_PREFIX
    assert hooks.HOOK_FAILED_EXIT == TOOL_ERROR_EXIT
    assert hooks.ENVIRONMENT_CAUSE == ENVIRONMENT
