"""The transition lease: epochs, liveness (same host, other host, ceiling), release,
force-release with an alert, the kill-switch scope, and the admin API."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support import api_client

from orchestrator.api.server import create_app
from orchestrator.auth import issue_token
from orchestrator.effects.leases import Heartbeat, LeaseManager, Owner
from orchestrator.errors import ConflictError
from orchestrator.lifecycle.service import TaskService
from orchestrator.maintenance.supervisor import Loop, Supervisor
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store, Task
from orchestrator.store.schema import instances, transition_lease
from orchestrator.testing.clock import FakeClock


class RecordingNotifier:
    def __init__(self) -> None:
        self.alerts: list[str] = []

    def on_task_changed(self, task: Task, summary: str) -> None:
        pass

    def alert(self, task: Task | None, message: str) -> None:
        self.alerts.append(message)


def settings_for(tmp_path: Path, db_url: str, extra: str = "") -> Settings:
    config = tmp_path / "orch.toml"
    config.write_text(f'database_url = "{db_url}"\ndata_dir = ".orch"\n{extra}')
    return load_settings(config)


def new_task(store: Store, work_item: str = "L-1", repository: str = "/repos/svc") -> Task:
    with store.transaction() as tx:
        task_id = tx.insert_task(
            work_item=work_item,
            repository=repository,
            title="t",
            description="",
            stage="deploy",
            branch=f"orch/{work_item}",
            base_branch="main",
            base_sha="0" * 40,
            worktree="/nowhere",
        )
        return tx.get_task(task_id)


@pytest.fixture
def store(db_url: str) -> Any:
    store = Store.open(db_url)
    yield store
    store.close()


def manager(
    store: Store, settings: Settings, notifier: Any = None, clock: FakeClock | None = None
) -> LeaseManager:
    owner = Owner.current()
    owner.register(store)
    return LeaseManager(store, settings, owner, notifier, clock or FakeClock())


def test_acquire_excludes_a_live_owner_and_epochs_grow(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    settings = settings_for(tmp_path, db_url)
    leases = manager(store, settings)
    task = new_task(store)
    first = leases.acquire(task, "deploy->done", "a")
    assert first is not None
    assert first.epoch == 1
    assert leases.acquire(task, "deploy->done", "b") is None  # we are alive: excluded
    assert leases.release(first)
    assert not leases.release(first)  # a second release is fenced out
    second = leases.acquire(task, "deploy->done", "b")
    assert second is not None
    assert second.epoch == 2
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(transition_lease)).scalar()
    assert rows == 1  # one row per task, ever


def test_a_dead_same_host_owner_is_reclaimed_with_an_alert(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    settings = settings_for(tmp_path, db_url)
    task = new_task(store)
    # A real process acquires the lease, then is killed.
    script = (
        "import sys; from orchestrator.effects.leases import LeaseManager, Owner; "
        "from orchestrator.settings import load_settings; from orchestrator.store import Store; "
        f"s = load_settings(__import__('pathlib').Path({str(tmp_path / 'orch.toml')!r})); "
        "st = Store.open(s.effective_database_url); o = Owner.current(); o.register(st); "
        f"m = LeaseManager(st, s, o); print(m.acquire(st.get_task({task.id}), 'deploy->done', "
        "'victim').epoch, flush=True); sys.stdin.read()"
    )
    notifier = RecordingNotifier()
    leases = manager(store, settings, notifier)
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as victim:
        assert victim.stdout is not None
        assert victim.stdout.readline().strip() == "1"
        assert leases.acquire(task, "deploy->done", "rival") is None  # the victim lives
        victim.kill()
    lease = leases.acquire(task, "deploy->done", "rival")
    assert lease is not None
    assert lease.epoch == 2
    assert any("stale transition lease reclaimed" in alert for alert in notifier.alerts)
    assert "lease.reclaimed" in [event.kind for event in store.task_events(task.id)]


def _fake_instance(store: Store, boot_id: str, host: str, heartbeat_age_s: float) -> None:
    now = time.time()
    with store.transaction() as tx:
        tx.conn.execute(
            instances.insert().values(
                boot_id=boot_id,
                instance="other",
                host=host,
                pid=1,
                pid_start=None,
                started_at=now - 100,
                heartbeat_at=now - heartbeat_age_s,
            )
        )


def test_other_host_liveness_is_the_heartbeat(tmp_path: Path, db_url: str, store: Store) -> None:
    leases = manager(store, settings_for(tmp_path, db_url))
    _fake_instance(store, "fresh-boot", "another-host", heartbeat_age_s=1)
    _fake_instance(store, "stale-boot", "another-host", heartbeat_age_s=120)
    assert leases.instance_alive("fresh-boot")
    assert not leases.instance_alive("stale-boot")
    assert not leases.instance_alive("never-registered")


def test_the_lease_ceiling_is_reaper_max_running_s(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    clock = FakeClock()
    leases = manager(
        store, settings_for(tmp_path, db_url, "reaper_max_running_s = 60\n"), None, clock
    )
    task = new_task(store)
    assert leases.acquire(task, "deploy->done", "a") is not None
    assert leases.acquire(task, "deploy->done", "b") is None
    clock.advance(59)
    assert leases.acquire(task, "deploy->done", "b") is None  # not yet
    clock.advance(2)
    # The owner (this process) is alive, but past the ceiling the lease is stale.
    taken = leases.acquire(task, "deploy->done", "b")
    assert taken is not None
    assert taken.epoch == 2


def _heartbeat_at(store: Store, owner: Owner) -> float:
    with store.engine.connect() as conn:
        return float(
            conn.execute(
                sa.select(instances.c.heartbeat_at).where(instances.c.boot_id == owner.boot_id)
            ).scalar_one()
        )


def test_heartbeat_thread_beats_and_marks_the_stop(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    owner = Owner.current()
    heartbeat = Heartbeat(store, owner, interval_s=0.05)
    heartbeat.register()
    supervisor = Supervisor([Loop("heartbeat", heartbeat.run)])
    supervisor.start()
    first = _heartbeat_at(store, owner)
    deadline = time.monotonic() + 30  # generous; never the pass criterion
    while _heartbeat_at(store, owner) <= first and time.monotonic() < deadline:
        time.sleep(0.02)
    supervisor.stop()
    heartbeat.stopped()
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(instances).where(instances.c.boot_id == owner.boot_id)).one()
    assert row.heartbeat_at > first
    assert row.stopped_at is not None
    leases = LeaseManager(store, settings_for(tmp_path, db_url), Owner.current())
    assert not leases.instance_alive(owner.boot_id)  # stopped instances are dead


def test_scope_limits_the_lease_to_listed_repositories(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    settings = settings_for(tmp_path, db_url, 'transition_lease_repos = ["svc"]\n')
    leases = manager(store, settings)
    in_scope = leases.acquire(new_task(store, "L-1", "/repos/svc"), "deploy->done", "a")
    out_of_scope = leases.acquire(new_task(store, "L-2", "/repos/other"), "deploy->done", "a")
    assert in_scope is not None
    assert not in_scope.inert
    assert out_of_scope is not None
    assert out_of_scope.inert


def test_force_release_api_needs_an_admin_and_alerts(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    settings = settings_for(tmp_path, db_url)
    notifier = RecordingNotifier()
    leases = manager(store, settings, notifier)
    task = new_task(store)
    assert leases.acquire(task, "deploy->done", "holder") is not None
    operator = issue_token(store, "ops", "operator", actor="test")
    admin = issue_token(store, "root", "admin", actor="test")
    app = create_app(store=store, settings=settings, service=TaskService(store, settings))
    with api_client(app, operator) as client:
        shown = client.get("/queue").json()["transition_lease"]["held"]
        assert [(h["work_item"], h["epoch"], h["live"]) for h in shown] == [("L-1", 1, True)]
        url = "/transition-lease/release?work_item=L-1"
        as_json = {"content-type": "application/json"}
        assert client.post(url, headers={**as_json, "Authorization": ""}).status_code == 401
        wrong = {**as_json, "Authorization": "Bearer wrong"}
        assert client.post(url, headers=wrong).status_code == 401
        assert client.post(url, headers=as_json).status_code == 403  # an operator
        released = client.post(url, headers={**as_json, "Authorization": f"Bearer {admin}"})
        assert released.status_code == 200
        assert released.json() == {"work_item": "L-1", "released": True}
        assert client.get("/queue").json()["transition_lease"]["held"] == []
    [event] = [e for e in store.task_events(task.id) if e.kind == "lease.force_released"]
    assert event.actor == "token:root"


def test_the_legacy_admin_token_still_releases(tmp_path: Path, db_url: str, store: Store) -> None:
    settings = settings_for(tmp_path, db_url, 'admin_token = "s3cret"\n')
    task = new_task(store)
    assert manager(store, settings, RecordingNotifier()).acquire(task, "deploy->done", "x")
    app = create_app(store=store, settings=settings, service=TaskService(store, settings))
    with api_client(app, "s3cret") as client:
        released = client.post("/transition-lease/release?work_item=L-1", json={})
    assert released.status_code == 200, released.text
    [event] = [e for e in store.task_events(task.id) if e.kind == "lease.force_released"]
    assert event.actor == "token:admin_token"


def test_force_release_api_is_refused_until_a_token_exists(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    settings = settings_for(tmp_path, db_url)
    new_task(store)
    app = create_app(store=store, settings=settings, service=TaskService(store, settings))
    with api_client(app) as client:
        response = client.post("/transition-lease/release?work_item=L-1", json={})
    assert response.status_code == 401
    assert "orch token create" in response.json()["error"]


def test_cancel_and_rollback_wait_for_a_transition_under_way(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    settings = settings_for(tmp_path, db_url)
    leases = manager(store, settings)
    task = new_task(store)
    lease = leases.acquire(task, "deploy->done", "engine")
    assert lease is not None
    service = TaskService(store, settings)
    for action in (service.cancel, service.rollback):
        with pytest.raises(ConflictError, match=r"deploy->done .*when that finishes"):
            action(task)
    assert store.get_task(task.id).stage == "deploy"
    leases.release(lease)
    assert service.cancel(task).stage == "cancelled"
