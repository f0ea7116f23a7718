"""``GET /status``'s health facts (``orchestrator.api.status``): the loops ``orch serve``
supervises, the engine's last tick, the transition leases held and whether their owners
live, and the process starts not marked stopped.

The API is served by ``create_app`` over a real SQLite store; the loops by a real ``orch
serve`` process (``run_server``). Instances and leases are written through the same
operations the engine uses (``Owner.register``, ``LeaseManager.acquire``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import api_client
from test_cost_report import add_task
from test_server import SERVE_SCRIPT, start_server, wait_until_healthy

from orchestrator.api.server import create_app
from orchestrator.auth import issue_token
from orchestrator.effects.leases import LeaseManager, Owner
from orchestrator.engine.core import Engine
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store
from orchestrator.store.leases import LeaseStore

SERVER_STOP_TIMEOUT_S = 30
TICK_WAIT_S = 30


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Store, Settings, Engine]]:
    (tmp_path / "orch.toml").write_text('data_dir = ".orch"\n')
    settings = load_settings(cwd=tmp_path)
    store = Store.open(settings.effective_database_url)
    engine = Engine(store, settings)
    yield store, settings, engine
    engine.shutdown(kill=True)
    store.close()


def status_of(world: tuple[Store, Settings, Engine], *, with_token: bool = True) -> Any:
    store, settings, engine = world
    app = create_app(
        store=store, settings=settings, service=TaskService(store, settings), engine=engine
    )
    name = f"v-{time.monotonic_ns()}"
    secret = issue_token(store, name, "viewer", actor="t") if with_token else None
    with api_client(app, secret) as client:
        return client.get("/status")


def test_status_names_the_leases_held_and_whether_their_owners_live(
    world: tuple[Store, Settings, Engine],
) -> None:
    store, settings, engine = world
    live_task, stale_task = store.get_task(add_task(store)), store.get_task(add_task(store))
    alive = Owner.current("here")
    alive.register(store)
    gone = Owner(instance="elsewhere", host="another-host", pid=1, boot_id="gone", pid_start=None)
    gone.register(store)
    # Its last heartbeat long ago: a cross-host owner that stopped beating is dead.
    LeaseStore(store).beat("gone", time.time() - 3600)
    assert LeaseManager(store, settings, alive).acquire(live_task, "t", "test") is not None
    assert LeaseManager(store, settings, gone).acquire(stale_task, "t", "test") is not None

    answer = status_of(world)

    assert answer.status_code == 200, answer.text
    status = answer.json()
    leases = status["transition_leases"]
    assert (leases["held"], leases["stale"]) == (2, 1)
    assert {(lease["work_item"], lease["live"]) for lease in leases["leases"]} == {
        (live_task.work_item, True),
        (stale_task.work_item, False),
    }
    instances = {row["boot_id"]: row for row in status["instances"]}
    assert instances[alive.boot_id]["alive"] is True
    assert instances["gone"]["alive"] is False
    assert instances["gone"]["heartbeat_age_s"] >= 3600
    assert instances["gone"]["heartbeat_at"].endswith("Z")
    # Outside orch serve: no loops, and an engine that never ticked.
    assert status["loops"] == []
    assert status["engine_last_tick_at"] is None
    engine.tick()
    assert status_of(world).json()["engine_last_tick_at"].endswith("Z")


def test_a_stopped_instance_is_not_listed(world: tuple[Store, Settings, Engine]) -> None:
    store, _settings, _engine = world
    stopped = Owner.current("stopped")
    stopped.register(store)
    stopped.stopped(store)

    status = status_of(world).json()

    assert stopped.boot_id not in {row["boot_id"] for row in status["instances"]}


def test_status_needs_a_token(world: tuple[Store, Settings, Engine]) -> None:
    answer = status_of(world, with_token=False)
    assert answer.status_code == 401
    assert set(answer.json()) == {"error"}


def test_orch_serve_reports_its_loops_running(tmp_path: Path) -> None:
    process, port = start_server(tmp_path, SERVE_SCRIPT)
    try:
        wait_until_healthy(process, port, tmp_path)
        deadline = time.monotonic() + TICK_WAIT_S
        status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5.0).json()
        while status["engine_last_tick_at"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
            status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5.0).json()
    finally:
        process.terminate()
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)

    assert {loop["name"]: loop["state"] for loop in status["loops"]} == {
        "engine": "running",
        "reaper": "running",
        "reconciler": "running",
        "worktree-janitor": "running",
        "heartbeat": "running",
        "rescuer": "running",
        "inbox": "running",
    }
    # SQLite: the one instance leads, with no election (decision 0027).
    assert status["leader"]["is_leader"] is True
    assert status["leader"]["election"] == "single-instance"
    assert status["instances"][0]["leader"] is True
    assert status["engine_last_tick_at"] is not None
    assert [row["boot_id"] for row in status["instances"]] == [status["boot_id"]]
    assert status["instances"][0]["alive"] is True
