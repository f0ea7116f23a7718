"""Every way a task can end in failure tells every listener (issue 11, decision 0016).

One parametrised test over the endings — a failed merge, a failed deploy, a budget stop,
a finalize exception, a gate failure with its rollbacks used up, a job failure with its
attempts used up — each driven through the engine's own entry points (``finalize``,
``tick``) against local servers speaking the real APIs: the Telegram Bot API
(``FakeTelegram``), Gitea (``FakeGitea``) and Plane (``FakePlane``), wired as ``orch``
wires them (``build_notifier``, ``build_delivery``). Each ending must fail the task and
produce the card row, the alert, the Plane write-back and the forge status ``failure``.
A new ending path that skips a listener (anything but ``lifecycle.after_commit``) fails
here: add it to ``ENDINGS``. The endings that are not failures (done, cancelled) are the
second test: the card, the write-back, the forge's ``success``, no alert, the worktree gone.

Seen failing before the lifecycle: the failed merge and deploy (no write-back, no
``failure`` status), the budget stop (no card row, no write-back), the finalize
exception (the task not failed at all).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
import sqlalchemy as sa
from support import make_repo

from orchestrator.engine.core import Engine
from orchestrator.integrations import build_delivery, build_notifier
from orchestrator.kernel.failures import FailureKind
from orchestrator.kernel.gates import DEPLOY_REPORT_FILE
from orchestrator.lifecycle.service import TaskService
from orchestrator.lifecycle.transitions import EventKind, artifact_dir
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store, Task
from orchestrator.store.schema import outbox
from orchestrator.testing.actors import prepare_deploy_task
from orchestrator.testing.fake_forge import DEFAULT_TOKEN, FakeGitea
from orchestrator.testing.fake_plane import DEFAULT_API_KEY, FakePlane, FakeWorkItem
from orchestrator.testing.fake_telegram import FakeTelegram
from orchestrator.workspace.git import Repo

CHAT: Final = "-100555"
REPO: Final = "acme/shop"
CROSSING_WAIT_S: Final = 120.0

CONFIG = """\
database_url = {db_url}
data_dir = {data_dir}
retry_backoff_s = 0
reaper_finalize_grace_s = 0
max_attempts = 1
max_rollbacks = 0
task_budget_usd = 1.0
telegram_bot_token = {telegram_token}
telegram_chat_id = "{chat}"
telegram_api_base_url = {telegram_url}
forge = "gitea"
forge_base_url = {gitea_url}
forge_token = "{forge_token}"
forge_repo = "{repo}"
forge_remote = ""
tracker = "plane"
plane_base_url = {plane_url}
plane_api_key = "{plane_key}"
plane_workspace = "acme"

[repos.repo]
deploy_command = ["sh", "-c", "{deploy}"]
"""


@dataclass
class World:
    root: Path
    repo: Path
    settings: Settings
    store: Store
    telegram: FakeTelegram
    gitea: FakeGitea
    plane: FakePlane
    item: FakeWorkItem

    def engine(self) -> Engine:
        return Engine(self.store, self.settings, build_notifier(self.settings, self.store))

    def finalize(self, task: Task, exit_code: int = 0, output: str = "") -> None:
        """The engine finalizes the task's job as its monitor would; a crossing it hands
        to its pool (deploy -> done) is waited for (generously: what it wrote is the
        pass criterion, not how long it took)."""
        job = self.store.latest_job(task.id)
        assert job is not None
        engine = self.engine()
        try:
            engine.finalizer.finalize(job, exit_code, None, output)
            assert engine.crossings.wait(CROSSING_WAIT_S)
        finally:
            engine.shutdown()

    def deploy_task(self) -> Task:
        """A task from the Plane work item, in ``deploy``, its preflight job finalizing."""
        origin = {
            "tracker": "plane",
            "workspace": "acme",
            "project_id": self.item.project,
            "issue_id": self.item.id,
            "sequence_id": self.item.sequence_id,
        }
        return prepare_deploy_task(self.store, self.repo, self.root / "wt", "SHOP-1", origin=origin)


def _config(world_root: Path, db_url: str, fakes: dict[str, str], deploy: str) -> Settings:
    config = world_root / "orch.toml"
    config.write_text(
        CONFIG.format(
            db_url=json.dumps(db_url),
            data_dir=json.dumps(str(world_root / ".orch")),
            chat=CHAT,
            repo=REPO,
            forge_token=DEFAULT_TOKEN,
            plane_key=DEFAULT_API_KEY,
            deploy=deploy,
            **{key: json.dumps(value) for key, value in fakes.items()},
        )
    )
    return load_settings(config)


@pytest.fixture
def world(tmp_path: Path, db_url: str, request: pytest.FixtureRequest) -> Iterator[World]:
    deploy = "exit 3" if request.node.callspec.params.get("ending") == "deploy fails" else "true"
    with FakeTelegram() as telegram, FakeGitea() as gitea, FakePlane() as plane:
        project = plane.add_project("SHOP")
        item = plane.add_item(project, "Add a cart")
        fakes = {
            "telegram_token": telegram.token,
            "telegram_url": telegram.url,
            "gitea_url": gitea.api_url,
            "plane_url": f"{plane.url}",
        }
        settings = _config(tmp_path, db_url, fakes, deploy)
        store = Store.open(settings.effective_database_url)
        try:
            yield World(
                tmp_path,
                make_repo(tmp_path / "repo"),
                settings,
                store,
                telegram,
                gitea,
                plane,
                item,
            )
        finally:
            store.close()


# --- the endings ---------------------------------------------------------------------------
def merge_fails(world: World) -> Task:
    task = world.deploy_task()
    world.gitea.conflicted = True
    world.finalize(task)
    return task


def deploy_fails(world: World) -> Task:
    task = world.deploy_task()  # the deploy command is `exit 3` (the fixture)
    world.finalize(task)
    return task


def budget_stop(world: World) -> Task:
    task = world.deploy_task()
    job = world.store.latest_job(task.id)
    run = world.store.job_run(job.id) if job else None
    assert job is not None
    assert run is not None
    with world.store.transaction() as tx:
        # The preflight is done; the task spent $5 of its $1; an agent job is queued.
        tx.set_job_status_cas(job.id, "finalizing", "done")
        tx.record_exit(run.id, exit_code=0, cost_usd=5.0)
        tx.enqueue_job(task_id=task.id, stage="deploy", kind="agent", agent="claude", attempt=1)
    engine = world.engine()
    try:
        engine.tick()
    finally:
        engine.shutdown()
    return task


def finalize_raises(world: World) -> Task:
    task = world.deploy_task()
    # The worktree vanished under the job: judging it raises (git has no directory).
    shutil.rmtree(task.worktree)
    world.finalize(task)
    return task


def gate_fails_rollbacks_used_up(world: World) -> Task:
    task = world.deploy_task()
    report = Path(task.worktree) / artifact_dir(task.work_item) / DEPLOY_REPORT_FILE
    report.write_text("# Deploy report\n\nresult: FAIL\nthe preflight found a problem\n")
    world.finalize(task)  # max_rollbacks = 0
    return task


def job_fails_attempts_used_up(world: World) -> Task:
    task = world.deploy_task()
    world.finalize(task, 1, "the preflight crashed\n")  # max_attempts = 1
    return task


ENDINGS: Final[dict[str, Callable[[World], Task]]] = {
    "merge fails": merge_fails,
    "deploy fails": deploy_fails,
    "budget stop": budget_stop,
    "finalize raises": finalize_raises,
    "gate fails, rollbacks used up": gate_fails_rollbacks_used_up,
    "job fails, attempts used up": job_fails_attempts_used_up,
}


def _deliver(world: World) -> None:
    delivery = build_delivery(world.settings, world.store, owner="test-endings")
    assert delivery is not None
    try:
        for _ in range(20):  # generous; the pass criterion is what arrived, not time
            if delivery.deliver_due() == 0:
                break
    finally:
        delivery.close()


def _rows(world: World, task: Task) -> list[tuple[str, str, str]]:
    with world.store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(outbox.c.channel, outbox.c.kind, outbox.c.status).where(
                outbox.c.task_id == task.id
            )
        ).all()
    return [(str(channel), str(kind), str(status)) for channel, kind, status in rows]


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_every_failure_ending_reaches_every_listener(world: World, ending: str) -> None:
    task = ENDINGS[ending](world)

    failed = world.store.get_task(task.id)
    assert failed.failed, f"{ending}: the task did not fail ({failed.stage})"
    events = world.store.task_events(task.id)
    assert [e.kind for e in events].count(EventKind.FAILED) == 1, [e.kind for e in events]

    rows = _rows(world, task)
    assert ("telegram", "card", "pending") in rows, rows
    assert ("telegram", "alert", "pending") in rows, rows
    assert any(channel == "tracker" for channel, _, _ in rows), rows
    assert any(channel == "forge" for channel, _, _ in rows), rows

    _deliver(world)
    assert all(status == "sent" for _, _, status in _rows(world, task)), _rows(world, task)
    # The Telegram chat: the card and the alert that names the failure.
    texts = [message.text for message in world.telegram.visible(CHAT)]
    assert any("SHOP-1" in text and "failed" in text.lower() for text in texts), texts
    assert len(texts) >= 2, texts  # the card and the alert
    # Plane: the work item is told it failed, with the reason.
    comments = [str(comment.get("comment_html", comment)) for comment in world.item.comments]
    assert any("failed at" in comment for comment in comments), comments
    # Gitea: the branch head's orch/pipeline status is a failure.
    head = Repo(world.repo).rev(task.branch)
    states = [s["state"] for s in world.gitea.statuses.get(head, [])]
    assert states, world.gitea.statuses
    assert states[-1] == "failure", states


# --- the endings that are not failures ------------------------------------------------------
def done(world: World) -> Task:
    task = world.deploy_task()
    world.finalize(task)  # merged on Gitea, deployed (`true`)
    return task


def cancelled(world: World) -> Task:
    task = world.deploy_task()
    job = world.store.latest_job(task.id)
    assert job is not None
    with world.store.transaction() as tx:
        # No job in flight (one would keep the worktree until it stopped).
        tx.set_job_status_cas(
            job.id, "finalizing", "failed", error="stopped", failure_kind=FailureKind.KILLED
        )
    service = TaskService(world.store, world.settings, build_notifier(world.settings, world.store))
    service.cancel(world.store.get_task(task.id), actor="alice")
    return task


# ending -> (the stage it ends in, the forge status it leaves; None: not a forge matter)
OTHER_ENDINGS: Final[dict[str, tuple[Callable[[World], Task], str, str | None]]] = {
    "done": (done, "done", "success"),
    "cancelled": (cancelled, "cancelled", None),
}


@pytest.mark.parametrize("ending", list(OTHER_ENDINGS))
def test_every_other_ending_reaches_its_listeners(world: World, ending: str) -> None:
    end, stage, forge_state = OTHER_ENDINGS[ending]
    task = end(world)

    after = world.store.get_task(task.id)
    assert (after.stage, after.failed) == (stage, False)
    rows = _rows(world, task)
    assert ("telegram", "card", "pending") in rows, rows
    assert ("telegram", "alert", "pending") not in rows, rows  # nothing for a person
    assert any(channel == "tracker" for channel, _, _ in rows), rows

    _deliver(world)
    assert all(status == "sent" for _, _, status in _rows(world, task)), _rows(world, task)
    assert any("SHOP-1" in message.text for message in world.telegram.visible(CHAT))
    comments = [str(comment.get("comment_html", comment)) for comment in world.item.comments]
    assert any("is now at" in comment for comment in comments), comments
    if forge_state is not None:
        head = Repo(world.repo).rev(task.branch)
        states = [s["state"] for s in world.gitea.statuses.get(head, [])]
        assert states, world.gitea.statuses
        assert states[-1] == forge_state, states
    # The ended task's worktree went with it (after_commit; retention 0 for done and
    # cancelled by default).
    assert not Path(task.worktree).exists()
