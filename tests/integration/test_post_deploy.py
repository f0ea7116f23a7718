"""The post-deploy monitor (issue 4, TC-13): an unhealthy deploy is rolled back exactly once.

A real HTTP health endpoint answers 500 while the deployed commit's tree holds a file
named ``broken``; the deploy command records what it deployed. The task's change adds
``broken``, so its deploy is unhealthy: the monitor must revert it on ``main``, redeploy
the reverted head, put the change back on the task branch and send the task back to
development, once, however many actors enter the transition and whatever crashes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from support import make_repo

from orchestrator.engine.core import Engine
from orchestrator.forges.local import LocalForge
from orchestrator.lifecycle.post_deploy import watch_health
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store, Task
from orchestrator.testing.actors import (
    ROLES,
    act,
    add_finalizing_deploy_job,
    prepare_deploy_task,
)
from orchestrator.workspace.git import Repo, git
from orchestrator.workspace.worktrees import WorktreeJanitor

CONFIG = """\
database_url = "{db_url}"
data_dir = ".orch"
retry_backoff_s = 0
reaper_finalize_grace_s = 0
merge_method = "{method}"
max_rollbacks = {max_rollbacks}

[repos.repo]
deploy_command = ["sh", "{deploy}"]
deploy_check_command = ["sh", "-c", "cat {root}/deployed 2>/dev/null"]
post_deploy_health_url = "{health}"
post_deploy_window_s = 0.3
post_deploy_interval_s = 0.05
post_deploy_failures = 2
"""

# Records the deploy; while the marker file exists, a deploy of a rollback commit first
# announces itself and lingers, so a test can kill its actor mid-rollback.
DEPLOY = """\
set -e
if [ -e {root}/slow-rollback ] && \\
   git -C {repo} log -1 --format=%B "$ORCH_DEPLOY_COMMIT" | grep -q '^Orch-Rollback:'; then
    touch {root}/redeploying
    sleep 2
fi
if [ -e {root}/dirty-on-deploy ]; then  # someone edits the checkout of main meanwhile
    rm {root}/dirty-on-deploy
    echo "a local edit" > {repo}/fix.txt
fi
echo "$ORCH_WORK_ITEM $ORCH_DEPLOY_COMMIT" >> {root}/deploys.log
echo "$ORCH_DEPLOY_COMMIT" > {root}/deployed
"""


class Health(BaseHTTPRequestHandler):
    """500 while the deployed tree has a ``broken`` file, 200 otherwise."""

    root: Path
    repo: Path
    # A worktree whose presence each check records (the monitor must not lose it).
    watched: ClassVar[Path | None] = None
    seen: ClassVar[list[bool]] = []

    def do_GET(self) -> None:
        if self.watched is not None:
            self.seen.append(self.watched.is_dir())
        deployed = self.root / "deployed"
        commit = deployed.read_text().strip() if deployed.exists() else ""
        listed = git(self.repo, "ls-tree", "--name-only", commit, "broken", check=False)
        broken = not commit or bool(listed.stdout.strip())
        self.send_response(500 if broken else 200)
        self.end_headers()
        self.wfile.write(b"broken\n" if broken else b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Recorder:
    """A notifier that keeps what it was told (our own Notifier interface)."""

    alerts: list[str] = field(default_factory=list)

    def on_task_changed(self, task: Task, summary: str) -> None:
        pass

    def alert(self, task: Task | None, message: str) -> None:
        self.alerts.append(message)


@dataclass
class World:
    root: Path
    repo: Path
    config: Path
    settings: Settings
    store: Store

    def task(self, work_item: str, *, broken: bool) -> Task:
        task = prepare_deploy_task(self.store, self.repo, self.root / "wt", work_item)
        if broken:
            worktree = Path(task.worktree)
            (worktree / "broken").write_text("this change breaks the service\n")
            git(worktree, "add", "broken")
            git(worktree, "commit", "--quiet", "-m", f"{work_item}: break it")
        return task

    def deploys(self) -> list[str]:
        log = self.root / "deploys.log"
        return log.read_text().splitlines() if log.exists() else []

    def main_log(self) -> list[str]:
        return git(self.repo, "log", "--format=%s", "main").stdout.splitlines()

    def main_files(self) -> set[str]:
        return set(git(self.repo, "ls-tree", "--name-only", "main").stdout.split())


@pytest.fixture
def merge_method() -> str:
    return "merge"


@pytest.fixture
def max_rollbacks() -> int:
    return 2


@pytest.fixture
def world(tmp_path: Path, db_url: str, merge_method: str, max_rollbacks: int) -> Iterator[World]:
    repo = make_repo(tmp_path / "repo")
    Health.root, Health.repo = tmp_path, repo
    Health.watched, Health.seen = None, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deploy = tmp_path / "deploy.sh"
    deploy.write_text(DEPLOY.format(root=tmp_path, repo=repo))
    config = tmp_path / "orch.toml"
    config.write_text(
        CONFIG.format(
            db_url=db_url,
            method=merge_method,
            max_rollbacks=max_rollbacks,
            deploy=deploy,
            root=tmp_path,
            health=f"http://127.0.0.1:{server.server_port}/health",
        )
    )
    settings = load_settings(config)
    store = Store.open(settings.effective_database_url)
    try:
        yield World(tmp_path, repo, config, settings, store)
    finally:
        store.close()
        server.shutdown()
        server.server_close()


def rollback_commits(world: World, task: Task) -> int:
    return sum(s.startswith(f"Roll back {task.work_item}") for s in world.main_log())


def assert_rolled_back_once(world: World, task: Task) -> None:
    after = world.store.get_task(task.id)
    assert after.stage == "development", after
    assert after.rollback_count == 1
    assert after.failed_reason is None
    assert rollback_commits(world, task) == 1, world.main_log()
    assert "broken" not in world.main_files()
    # The broken deploy, then the rolled-back head: nothing deployed twice.
    deploys = world.deploys()
    assert len(deploys) == 2, deploys
    assert deploys[1].split()[1] == git(world.repo, "rev-parse", "main").stdout.strip()
    # The change is back on the task branch, on top of main, for the developer's fix.
    branch = git(world.repo, "log", "--format=%s", task.branch).stdout.splitlines()
    assert sum(s.startswith(f"Reapply {task.work_item}") for s in branch) == 1, branch
    tree = git(world.repo, "ls-tree", "--name-only", task.branch).stdout.split()
    assert "broken" in tree
    assert f"{task.work_item.lower()}.txt" in tree
    events = [e.kind for e in world.store.task_events(task.id)]
    assert events.count("task.rollback") == 1, events
    assert "stage.changed" not in events  # never "done", not even for a moment
    job = world.store.latest_job(task.id)
    assert job is not None
    assert (job.stage, job.status) == ("development", "queued")
    assert job.feedback is not None
    assert "result: UNHEALTHY" in job.feedback


def test_a_healthy_deploy_is_watched_and_done(world: World) -> None:
    task = world.task("OK-1", broken=False)
    engine = Engine(world.store, world.settings, Recorder())
    assert act("monitor", engine, task.id) == "won"
    assert world.store.get_task(task.id).stage == "done"
    assert len(world.deploys()) == 1
    assert not any(s.startswith("Roll back") for s in world.main_log())


def test_an_unhealthy_deploy_is_rolled_back_exactly_once_by_five_racing_actors(
    world: World,
) -> None:
    """Seen failing with the monitor's hook removed from ``enter_transition``: the task
    went to done with the broken change deployed. With the lease's exclusion off
    (kill-switch), two actors reverted."""
    task = world.task("BAD-1", broken=True)
    recorder = Recorder()
    engine = Engine(world.store, world.settings, recorder)
    barrier = threading.Barrier(len(ROLES))
    errors: list[BaseException] = []

    def run(role: str) -> None:
        try:
            barrier.wait()
            act(role, engine, task.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(role,)) for role in ROLES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    if world.store.get_task(task.id).stage == "deploy":
        act("reconciler", engine, task.id)
    assert_rolled_back_once(world, task)
    assert len(recorder.alerts) == 1, recorder.alerts
    assert "rolled back" in recorder.alerts[0]

    # The developer's fix on the task branch lands the whole change again, not only the
    # fix (without the reapply, main would keep the revert of the first commits).
    worktree = Path(task.worktree)
    git(worktree, "rm", "--quiet", "broken")
    git(worktree, "commit", "--quiet", "-m", "BAD-1: fix it")
    LocalForge(Repo(world.repo)).merge(world.store.get_task(task.id))
    assert "bad-1.txt" in world.main_files()
    assert "broken" not in world.main_files()


@pytest.mark.parametrize("merge_method", ["squash", "rebase"])
def test_a_squashed_or_rebased_landing_is_rolled_back_whole(world: World) -> None:
    """The revert undoes every commit the landing made: one squash commit, or each
    rebased commit (the branch has two). Seen failing with the base counted from the
    branch's commits (a rebase onto an unmoved main keeps the branch's first commit):
    ``bad-3.txt`` stayed on main."""
    task = world.task("BAD-3", broken=True)
    engine = Engine(world.store, world.settings, Recorder())
    assert act("monitor", engine, task.id) == "won"
    assert_rolled_back_once(world, task)
    assert world.main_files() == {"README.md"}


def wait_for(condition: object, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_crash_mid_rollback_is_finished_not_called_done(world: World) -> None:
    """The actor is SIGKILLed while the rollback's redeploy runs; the next actor must
    finish the rollback, not watch the rolled-back (healthy) deploy and call it done.

    Seen failing with the in-progress rollback not looked up: the second actor found the
    merge and the deploy done in the world, watched the reverted head, found it healthy
    and moved the task to done."""
    task = world.task("BAD-2", broken=True)
    (world.root / "slow-rollback").touch()
    go = world.root / "go"
    go.touch()
    actor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.testing.actors",
            "monitor",
            str(world.config),
            str(go),
            str(task.id),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for((world.root / "redeploying").exists, "the rollback's redeploy")
    finally:
        os.kill(actor.pid, signal.SIGKILL)
        actor.wait()
    recorder = Recorder()
    engine = Engine(world.store, world.settings, recorder)

    # The redeploy (its own session) outlives its actor: the next actor waits for it,
    # then resumes after it.
    # The killed actor may have died before or after its claim: the reaper or the
    # reconciler picks the crossing up.
    def resumed() -> bool:
        for role in ("reaper", "reconciler"):
            act(role, engine, task.id)
        return world.store.get_task(task.id).stage != "deploy"

    wait_for(resumed, "the rollback to be finished")
    assert_rolled_back_once(world, task)
    rollbacks = [alert for alert in recorder.alerts if "rolled back" in alert]
    assert len(rollbacks) == 1, recorder.alerts
    # The other alert says the dead actor's lease was taken over.
    assert any("stale transition lease reclaimed" in alert for alert in recorder.alerts)


class Scripted(BaseHTTPRequestHandler):
    """Answers the statuses of ``script`` in turn, then 200."""

    script: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        status = self.script.pop(0) if self.script else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/health"
    finally:
        server.shutdown()
        server.server_close()


class Clock:
    """Time that moves only when the monitor sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    ("script", "healthy", "checks"),
    [
        ([], True, 11),  # 0, 1, ..., 10 s
        ([500, 200, 503], True, 11),  # blips, never two in a row
        ([200, 500, 500], False, 3),  # two in a row: unhealthy at once
        ([200] * 10 + [500], True, 12),  # failing at the window's end: watched on
        ([200] * 10 + [500, 500], False, 12),
    ],
)
def test_the_health_window_tolerates_blips_but_not_failures_in_a_row(
    scripted: str, script: list[int], healthy: bool, checks: int
) -> None:
    Scripted.script = list(script)
    clock = Clock()
    report = watch_health(
        scripted, window_s=10, interval_s=1, failures=2, sleep=clock.sleep, clock=clock
    )
    assert (report.healthy, report.checks) == (healthy, checks)
    assert ("result: healthy" in report.render()) is healthy


def test_a_refused_connection_is_a_failed_check() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    clock = Clock()
    report = watch_health(
        f"http://127.0.0.1:{port}/health",
        window_s=10,
        interval_s=1,
        failures=3,
        sleep=clock.sleep,
        clock=clock,
    )
    assert not report.healthy
    assert report.failed_in_a_row == 3
    assert "ConnectError" in report.last_error


@pytest.mark.parametrize("max_rollbacks", [0])
def test_with_its_rollbacks_used_up_the_task_is_rolled_back_and_fails_for_a_human(
    world: World,
) -> None:
    """Seen failing before ``max_rollbacks`` was checked on this path: the task went back
    to development with one rollback more than allowed (an always-broken change would
    be merged, deployed and reverted forever)."""
    task = world.task("BAD-6", broken=True)
    recorder = Recorder()
    engine = Engine(world.store, world.settings, recorder)
    act("monitor", engine, task.id)
    after = world.store.get_task(task.id)
    assert (after.stage, after.rollback_count) == ("deploy", 0)
    assert after.failed_reason is not None
    assert "max_rollbacks" in after.failed_reason
    assert rollback_commits(world, task) == 1
    assert "broken" not in world.main_files()
    assert len(world.deploys()) == 2  # the broken deploy and the rolled-back head
    assert recorder.alerts == [f"task failed: {after.failed_reason}"]


def test_a_rollback_that_failed_closed_is_resumed_by_retry_and_a_second_one_is_its_own(
    world: World,
) -> None:
    """Round one rolls back; the fix is still broken; round two's revert is refused by
    the user's checkout of main (a local edit, made during the deploy, to a file the
    revert deletes) and the task fails for a human, who cleans up and runs ``orch task
    retry``: round two is resumed and completed once, and the task's work left in its
    worktree is kept.

    Seen failing (reproduced in review) with rollbacks named by ``rollback_count + 1``:
    the retry reset the count, the second round found the first round's revert, redeploy
    and reapply "done", and moved the task to development with the broken change live."""
    task = world.task("BAD-7", broken=True)
    recorder = Recorder()
    engine = Engine(world.store, world.settings, recorder)
    assert act("monitor", engine, task.id) == "won"
    assert world.store.get_task(task.id).stage == "development"

    # The developer's "fix" breaks it still; the task reaches deploy again.
    worktree = Path(task.worktree)
    (worktree / "fix.txt").write_text("not the fix\n")
    git(worktree, "add", "fix.txt")
    git(worktree, "commit", "--quiet", "-m", "BAD-7: a fix that is not one")
    with world.store.transaction() as tx:
        assert tx.update_task_stage_cas(task.id, "development", "deploy")
        for job in world.store.task_jobs(task.id):
            if job.status == "queued":
                tx.set_job_status_cas(job.id, "queued", "done")
        add_finalizing_deploy_job(tx, tx.get_task(task.id))
    (world.root / "dirty-on-deploy").touch()
    (worktree / "notes.txt").write_text("work in progress\n")
    act("monitor", engine, task.id)  # the crossing fails closed: not a "won" finalize
    failed = world.store.get_task(task.id)
    assert failed.stage == "deploy"
    assert failed.failed_reason is not None
    assert "local changes" in failed.failed_reason
    assert "broken" in world.main_files()  # still live: a human must act

    git(world.repo, "checkout", "--", "fix.txt")
    retried = TaskService(world.store, world.settings).retry(failed)
    assert act("cli", engine, retried.id) == "rolled-back"

    after = world.store.get_task(task.id)
    assert (after.stage, after.failed_reason) == ("development", None)
    assert rollback_commits(world, task) == 2
    assert "broken" not in world.main_files()
    deploys = world.deploys()
    assert len(deploys) == 4, deploys
    assert deploys[-1].split()[1] == git(world.repo, "rev-parse", "main").stdout.strip()
    branch = git(world.repo, "log", "--format=%s", task.branch).stdout.splitlines()
    assert sum(s.startswith("Reapply BAD-7") for s in branch) == 2, branch
    tree = git(world.repo, "ls-tree", "--name-only", task.branch).stdout.split()
    assert {"broken", "bad-7.txt", "fix.txt", "notes.txt"} <= set(tree)
    kinds = [e.kind for e in world.store.task_events(task.id)]
    assert kinds.count("task.rollback") == 2
    assert kinds.count("deploy.unhealthy") == 2


def test_the_worktree_stays_through_the_health_window_and_goes_when_done(world: World) -> None:
    """The monitor watches inside ``deploy -> done``: the worktree (where a rollback's
    reapply would commit) is there at every health check and goes only once the task
    is done; with ``delete_branch_on_done`` the merged branch goes too. Seen failing
    before the lifecycle: the worktree stayed after done."""
    task = world.task("OK-2", broken=False)
    Health.watched = Path(task.worktree)
    settings = world.settings.model_copy(update={"delete_branch_on_done": True})
    engine = Engine(world.store, settings, Recorder())
    assert act("monitor", engine, task.id) == "won"
    assert world.store.get_task(task.id).stage == "done"
    assert Health.seen, "the monitor never checked"
    assert all(Health.seen), Health.seen
    assert not Path(task.worktree).exists()
    assert not Repo(world.repo).has_branch(task.branch)
    assert "ok-2.txt" in world.main_files()
    # `orch task show` no longer says the branch keeps the commits (seen saying so).
    shown = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--config", str(world.config),
         "task", "show", "OK-2"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"(the branch {task.branch} was deleted, merged into main)" in shown


def test_a_rollback_resumed_after_the_worktree_was_removed_makes_it_again(world: World) -> None:
    """A rollback fails closed (the revert is refused by a local edit on main), the
    failed task's worktree is removed after its retention (0 here: at once), and the person's
    retry brings it back from the branch. If it is lost again before the rollback
    resumes, the rollback makes it again itself before its reapply commits in it."""
    task = world.task("BAD-8", broken=True)
    worktree = Path(task.worktree)
    (worktree / "fix.txt").write_text("part of the change\n")
    git(worktree, "add", "fix.txt")
    git(worktree, "commit", "--quiet", "-m", "BAD-8: more")
    settings = world.settings.model_copy(update={"worktree_retention_failed_s": 0.0})
    engine = Engine(world.store, settings, Recorder())
    (world.root / "dirty-on-deploy").touch()
    act("monitor", engine, task.id)
    failed = world.store.get_task(task.id)
    assert failed.failed_reason is not None
    assert "local changes" in failed.failed_reason

    # Failing released it at once (lifecycle.after_commit: the retention is 0 here), so
    # the janitor finds nothing left to do.
    assert not worktree.exists()
    swept = WorktreeJanitor(world.store, settings).sweep()
    assert [r.work_item for r in swept.released] == []

    git(world.repo, "checkout", "--", "fix.txt")
    retried = TaskService(world.store, settings).retry(world.store.get_task(task.id))
    assert worktree.is_dir()
    git(world.repo, "worktree", "remove", "--force", str(worktree))
    assert act("cli", engine, retried.id) == "rolled-back"

    assert worktree.is_dir()
    after = world.store.get_task(task.id)
    assert (after.stage, after.failed_reason, after.worktree_removed_at) == (
        "development",
        None,
        None,
    )
    assert "broken" not in world.main_files()
    branch = git(world.repo, "log", "--format=%s", task.branch).stdout.splitlines()
    assert sum(s.startswith("Reapply BAD-8") for s in branch) == 1, branch
    assert (
        git(worktree, "rev-parse", "HEAD").stdout
        == git(world.repo, "rev-parse", task.branch).stdout
    )
    restored = [e for e in world.store.task_events(task.id) if e.kind == "worktree.restored"]
    assert len(restored) == 2


# --- the pending rollback is a column (decision 0023) ------------------------------------
@pytest.mark.parametrize("max_rollbacks", [0])
def test_the_pending_rollback_is_written_with_the_verdict_and_kept_until_the_task_moves(
    world: World,
) -> None:
    """With its rollbacks used up the task fails in ``deploy``: the verdict it was
    rolling back stays pending (a retry resumes it, it does not merge again); a stage
    move clears it. Seen failing with ``record_unhealthy_deploy`` not setting the column
    (NULL after the verdict) and with the stage compare-and-swap not clearing it."""
    task = world.task("BAD-8", broken=True)
    act("monitor", Engine(world.store, world.settings, Recorder()), task.id)
    [verdict] = [e for e in world.store.task_events(task.id) if e.kind == "deploy.unhealthy"]
    failed = world.store.get_task(task.id)
    assert (failed.stage, failed.pending_rollback) == ("deploy", verdict.id)
    assert failed.failed

    moved = TaskService(world.store, world.settings).rollback(failed, actor="alice")
    assert (moved.stage, moved.pending_rollback) == ("development", None)


def test_the_column_not_the_event_log_says_a_rollback_is_pending(world: World) -> None:
    """A task whose column names a pending rollback finishes it instead of merging (here
    there is nothing landed to revert, so it fails closed saying so); a
    ``deploy.unhealthy`` event alone, with the column clear, no longer decides anything.
    Both seen failing before the column (the event log decided: the first merged and
    went to done, the second tried to roll back what never landed)."""
    pending = world.task("OK-2", broken=False)
    with world.store.transaction() as tx:
        marker = tx.add_event("webhook", actor="t", task_id=pending.id)
        assert tx.set_pending_rollback(pending.id, marker, expected_stage="deploy")
    logged = world.task("OK-3", broken=False)
    with world.store.transaction() as tx:
        tx.add_event("deploy.unhealthy", actor="t", task_id=logged.id, data={"report": "r"})
    engine = Engine(world.store, world.settings, Recorder())

    act("monitor", engine, pending.id)
    act("monitor", engine, logged.id)

    failed = world.store.get_task(pending.id)
    assert failed.stage == "deploy"
    assert "no landing of orch/OK-2" in (failed.failed_reason or "")
    assert "ok-2.txt" not in world.main_files()
    done = world.store.get_task(logged.id)
    assert (done.stage, done.failed_reason) == ("done", None)
    assert "ok-3.txt" in world.main_files()
