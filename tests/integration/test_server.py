"""The HTTP API against a real git repository, a real SQLite store and a real engine.

Requests go through an ``httpx.Client`` whose transport hands them to the ASGI app
(``httpx.ASGITransport`` on an anyio portal's event loop), so no socket and no patching;
``starlette.testclient`` is not used because it now warns unless ``httpx2`` is installed.
The engine runs in-process with a shell agent for the agent stages and the
built-in runners for testing, staging and deploy. Two tests start ``run_server`` in a
subprocess and stop it with a signal.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from support import api_client

from orchestrator import __version__
from orchestrator.api.server import create_app
from orchestrator.auth import issue_token
from orchestrator.engine.core import Engine
from orchestrator.errors import ConflictError
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import AgentConfig, Settings, load_settings
from orchestrator.store import Store

# Every agent stage runs this: it writes what every gate up to development asks for.
SH_AGENT: Final = (
    "mkdir -p $ORCH_ARTIFACT_DIR/06-adr"
    " && echo 'a long enough business requirements document for this'"
    " > $ORCH_ARTIFACT_DIR/01-brd.md"
    " && echo adr > $ORCH_ARTIFACT_DIR/06-adr/ADR-001.md"
    " && echo x$ORCH_ATTEMPT >> code.txt"
)
ORCH_TOML: Final = f"""\
retry_backoff_s = 0

[agents.sh]
command = ["sh", "-c", "{SH_AGENT}"]

[stages.analysis]
agent = "sh"

[stages.architecture]
agent = "sh"

[stages.development]
agent = "sh"
"""
PIPELINE_TIMEOUT_S: Final = 120
SERVER_START_TIMEOUT_S: Final = 20
SERVER_STOP_TIMEOUT_S: Final = 15
POLL_INTERVAL_S: Final = 0.1

TASK_KEYS: Final = {
    "id",
    "work_item",
    "repository",
    "title",
    "description",
    "stage",
    "version",
    "attempt",
    "rollback_count",
    "failed_reason",
    "origin",
    "origin_key",
    "pending_rollback",
    "branch",
    "base_branch",
    "base_sha",
    "worktree",
    "created_at",
    "updated_at",
    "worktree_removed_at",
    "failed",
    "cost_usd",
    "current_job",
    "stage_entered_at",
}
QUEUE_ENTRY_KEYS: Final = {
    "id",
    "task_id",
    "work_item",
    "stage",
    "agent",
    "kind",
    "attempt",
    "status",
    "age_s",
    "not_before",
    "enqueued_at",
    "started_at",
    "pid",
}


def run_git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@localhost",
    }
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return result.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository on ``main`` with one commit and a passing pytest suite."""
    path = tmp_path / "repo"
    (path / "tests").mkdir(parents=True)
    (path / "tests" / "test_ok.py").write_text("def test_ok() -> None:\n    assert True\n")
    (path / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    (path / ".gitignore").write_text("__pycache__/\n.pytest_cache/\n")
    run_git(path, "init", "--quiet", "-b", "main")
    run_git(path, "add", "--all")
    run_git(path, "commit", "--quiet", "-m", "initial")
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # The repositories the API may create tasks in (the allow-list): the fixture's, and a
    # plain directory for the test that it is refused as not a git repository.
    listed = f'[repos.repo]\npath = "{tmp_path}/repo"\n[repos.plain]\npath = "{tmp_path}/plain"\n'
    (tmp_path / "orch.toml").write_text(ORCH_TOML + listed)
    return load_settings(cwd=tmp_path)


@pytest.fixture
def api_store(settings: Settings) -> Iterator[Store]:
    """The SQLite store the settings point at (under ``tmp_path/.orch``)."""
    store = Store.open(settings.effective_database_url)
    yield store
    store.close()


@pytest.fixture
def engine(api_store: Store, settings: Settings) -> Iterator[Engine]:
    engine = Engine(api_store, settings)
    yield engine
    engine.shutdown(kill=True)


@pytest.fixture
def client(api_store: Store, settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    service = TaskService(api_store, settings)
    app = create_app(store=api_store, settings=settings, service=service, engine=engine)
    token = issue_token(api_store, "tester", "operator", actor="test")
    with api_client(app, token) as test_client:
        yield test_client


def create(client: httpx.Client, repo: Path, **fields: Any) -> httpx.Response:
    body = {"repo": str(repo), "title": "Add a greeting", **fields}
    return client.post("/tasks", json=body)


def task_branches(repo: Path) -> str:
    return run_git(repo, "branch", "--list", "orch/*").strip()


def assert_one_line_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error, str)
    assert error
    assert "\n" not in error
    return error


# --- health, status, queue -----------------------------------------------------------


def test_health_says_ok(client: httpx.Client) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_status_reports_version_counts_and_boot_id(
    client: httpx.Client, engine: Engine, repo: Path
) -> None:
    empty = client.get("/status").json()
    assert create(client, repo, work_item="DEMO-1").status_code == 201

    status = client.get("/status").json()

    assert set(status) == {
        "version",
        "started_at",
        "uptime_s",
        "tasks_by_stage",
        "failed_tasks",
        "running_jobs",
        "boot_id",
        "outbox",
        "inbox",
        "loops",
        "leader",
        "engine_last_tick_at",
        "transition_leases",
        "instances",
    }
    assert status["leader"] is None  # outside orch serve
    assert status["version"] == __version__
    assert status["boot_id"] == engine.boot_id
    assert status["uptime_s"] >= 0
    assert set(empty["tasks_by_stage"].values()) == {0}
    assert status["tasks_by_stage"]["analysis"] == 1
    assert status["tasks_by_stage"]["done"] == 0
    assert status["failed_tasks"] == 0
    assert status["running_jobs"] == 0
    assert status["outbox"] == {"pending": 0, "sending": 0, "failed": 0}
    assert status["inbox"] == {"pending": 0, "oldest_pending_age_s": None, "failed": 0}


def test_queue_lists_queued_then_running_jobs(
    client: httpx.Client, engine: Engine, repo: Path
) -> None:
    assert client.get("/queue").json() == {
        "queued": [],
        "running": [],
        "next_cursor": None,
        "totals": {"queued": 0, "deferred": 0, "running": 0, "finalizing": 0},
        "transition_lease": {"enabled": True, "held": []},
    }
    assert create(client, repo, work_item="DEMO-1").status_code == 201

    queued = client.get("/queue").json()
    assert queued["running"] == []
    [entry] = queued["queued"]
    assert set(entry) == QUEUE_ENTRY_KEYS
    assert entry["work_item"] == "DEMO-1"
    assert entry["stage"] == "analysis"
    assert entry["agent"] == "sh"
    assert entry["kind"] == "agent"
    assert entry["attempt"] == 1
    assert entry["status"] == "queued"
    assert entry["age_s"] >= 0
    assert entry["pid"] is None

    engine.tick()  # claims and starts the job; it stays running until collected
    running = client.get("/queue").json()

    assert running["queued"] == []
    [started] = running["running"]
    assert started["id"] == entry["id"]
    assert started["status"] == "running"
    assert isinstance(started["pid"], int)
    assert client.get("/status").json()["running_jobs"] == 1


# --- the whole pipeline through the API ----------------------------------------------


def drive_to_the_end(engine: Engine, client: httpx.Client, store: Store, ref: str) -> None:
    """Run the engine, approving through the API at brd-approval, until the task ends."""
    deadline = time.monotonic() + PIPELINE_TIMEOUT_S

    def approve_at_the_gate() -> None:
        task = store.find_task(ref)
        if task.stage == "brd-approval" and not task.failed:
            response = client.post(f"/tasks/{ref}/approve", json={})
            assert response.status_code == 200, response.text
            assert response.json()["stage"] == "architecture"

    def ended() -> bool:
        task = store.find_task(ref)
        return task.stage in ("done", "cancelled") or task.failed or time.monotonic() > deadline

    engine.run(threading.Event(), until=ended, on_tick=approve_at_the_gate)


def test_a_task_created_through_the_api_runs_to_done(
    client: httpx.Client, engine: Engine, api_store: Store, repo: Path
) -> None:
    response = create(client, repo, work_item="DEMO-1", description="Say hello.")
    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) == TASK_KEYS
    assert created["stage"] == "analysis"
    assert created["failed"] is False
    assert created["repository"] == str(repo.resolve())

    drive_to_the_end(engine, client, api_store, "DEMO-1")
    detail = client.get("/tasks/DEMO-1").json()

    assert detail["stage"] == "done", detail["failed_reason"]
    assert detail["failed"] is False
    # Every stage move (a stage change, the approval) has both ends; job events do not.
    stages = [e["to_stage"] for e in detail["events"] if e["from_stage"] is not None]
    assert stages == [
        "analysis",
        "brd-approval",
        "architecture",
        "development",
        "testing",
        "deploy-staging",
        "deploy",
        "done",
    ]
    [approved] = [e for e in detail["events"] if e["kind"] == "task.approved"]
    assert approved["actor"] == "token:tester"
    assert detail["events"][0]["kind"] == "task.created"
    assert detail["events"][0]["actor"] == "token:tester"
    assert {job["status"] for job in detail["jobs"]} == {"done"}
    assert [job["stage"] for job in detail["jobs"]][-1] == "deploy"
    assert len(detail["runs"]) == len(detail["jobs"])
    assert {run["exit_code"] for run in detail["runs"]} == {0}
    assert detail["cost_usd"] == 0
    # The deploy runner merged the task branch: the agents' change (one line per agent
    # stage, each at attempt 1) is on main.
    assert run_git(repo, "show", "main:code.txt").split() == ["x1", "x1", "x1"]
    # The same task by numeric id, and by stage filter.
    assert client.get(f"/tasks/{created['id']}").json()["work_item"] == "DEMO-1"
    assert [
        t["work_item"] for t in client.get("/tasks", params={"stage": "done"}).json()["items"]
    ] == ["DEMO-1"]
    assert client.get("/tasks", params={"stage": "analysis"}).json()["items"] == []
    assert client.get("/queue").json() == {
        "queued": [],
        "running": [],
        "next_cursor": None,
        "totals": {"queued": 0, "deferred": 0, "running": 0, "finalizing": 0},
        "transition_lease": {"enabled": True, "held": []},
    }


def test_tasks_lists_newest_first_with_the_failed_flag(client: httpx.Client, repo: Path) -> None:
    for work_item in ("DEMO-1", "DEMO-2"):
        assert create(client, repo, work_item=work_item).status_code == 201

    answer = client.get("/tasks").json()
    tasks = answer["items"]

    assert answer["next_cursor"] is None
    assert [t["work_item"] for t in tasks] == ["DEMO-2", "DEMO-1"]
    assert all(set(t) == TASK_KEYS and t["failed"] is False for t in tasks)


def test_a_task_is_found_by_repository_when_asked(client: httpx.Client, repo: Path) -> None:
    assert create(client, repo, work_item="DEMO-1").status_code == 201

    found = client.get("/tasks/DEMO-1", params={"repo": str(repo)})
    elsewhere = client.get("/tasks/DEMO-1", params={"repo": str(repo.parent)})

    assert found.status_code == 200
    assert found.json()["work_item"] == "DEMO-1"
    assert_one_line_error(elsewhere, 404)


# --- human actions -------------------------------------------------------------------


def test_cancel_records_the_reason_and_leaves_nothing_queued(
    client: httpx.Client, repo: Path
) -> None:
    assert create(client, repo, work_item="DEMO-1").status_code == 201

    response = client.post("/tasks/DEMO-1/cancel", json={"reason": "not needed any more"})

    assert response.status_code == 200, response.text
    assert response.json()["stage"] == "cancelled"
    detail = client.get("/tasks/DEMO-1").json()
    [cancelled] = [e for e in detail["events"] if e["kind"] == "task.cancelled"]
    assert cancelled["actor"] == "token:tester"
    assert cancelled["reason"] == "not needed any more"
    assert client.get("/queue").json()["queued"] == []


def test_cancel_without_a_body_uses_a_default_reason(client: httpx.Client, repo: Path) -> None:
    assert create(client, repo, work_item="DEMO-1").status_code == 201

    response = client.post("/tasks/DEMO-1/cancel", headers={"content-type": "application/json"})

    assert response.status_code == 200, response.text
    events = client.get("/tasks/DEMO-1").json()["events"]
    assert [e["reason"] for e in events if e["kind"] == "task.cancelled"] == [
        "cancelled by token:tester"
    ]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("approve", "approve applies at brd-approval"),
        ("rollback", "rollback applies from"),
        ("retry", "has not failed"),
    ],
)
def test_an_action_the_stage_does_not_allow_is_a_conflict(
    client: httpx.Client, repo: Path, action: str, expected: str
) -> None:
    assert create(client, repo, work_item="DEMO-1").status_code == 201

    error = assert_one_line_error(client.post(f"/tasks/DEMO-1/{action}", json={}), 409)

    assert expected in error
    assert client.get("/tasks/DEMO-1").json()["stage"] == "analysis"


def test_a_finished_task_cannot_be_cancelled(client: httpx.Client, repo: Path) -> None:
    assert create(client, repo, work_item="DEMO-1").status_code == 201
    assert client.post("/tasks/DEMO-1/cancel", json={}).status_code == 200

    error = assert_one_line_error(client.post("/tasks/DEMO-1/cancel", json={}), 409)

    assert "already cancelled" in error


def test_a_too_long_reason_is_refused(client: httpx.Client, repo: Path) -> None:
    assert create(client, repo, work_item="DEMO-1").status_code == 201

    response = client.post("/tasks/DEMO-1/cancel", json={"reason": "x" * 100_000})

    assert "body.reason" in assert_one_line_error(response, 422)
    assert client.get("/tasks/DEMO-1").json()["stage"] == "analysis"


def run_until(engine: Engine, store: Store, ref: str, stage: str) -> None:
    deadline = time.monotonic() + PIPELINE_TIMEOUT_S

    def there() -> bool:
        task = store.find_task(ref)
        return task.stage == stage or task.failed or time.monotonic() > deadline

    engine.run(threading.Event(), until=there)
    assert store.find_task(ref).stage == stage


def test_reject_sends_the_brd_back_to_analysis_with_the_feedback(
    client: httpx.Client, engine: Engine, api_store: Store, repo: Path
) -> None:
    assert create(client, repo, work_item="DEMO-1").status_code == 201
    run_until(engine, api_store, "DEMO-1", "brd-approval")

    # Bad bodies: one clear 422 each, and the task stays at the gate.
    bad = [
        (None, "body: Field required"),
        ({}, "body.feedback: Field required"),
        ({"feedback": ""}, "the feedback is empty"),
        ({"feedback": " \n\t "}, "the feedback is empty"),
        ({"feedback": "x" * 4_001}, "body.feedback"),
        ({"feedback": "ok", "extra": 1}, "body.extra"),
        ({"feedback": 42}, "body.feedback"),
    ]
    for body, expected in bad:
        if body is None:  # JSON said, nothing sent
            as_json = {"content-type": "application/json"}
            response = client.post("/tasks/DEMO-1/reject", headers=as_json)
        else:
            response = client.post("/tasks/DEMO-1/reject", json=body)
        assert expected in assert_one_line_error(response, 422), body
    assert api_store.find_task("DEMO-1").stage == "brd-approval"
    missing = client.post("/tasks/NOPE-1/reject", json={"feedback": "x"})
    assert "no task" in assert_one_line_error(missing, 404)

    feedback = "Requirement 2 is vague:\nsay which endpoints are rate limited."
    response = client.post("/tasks/DEMO-1/reject", json={"feedback": feedback})

    assert response.status_code == 200, response.text
    assert response.json()["stage"] == "analysis"
    detail = client.get("/tasks/DEMO-1").json()
    [rejected] = [e for e in detail["events"] if e["kind"] == "task.rejected"]
    assert rejected["actor"] == "token:tester"
    assert (rejected["from_stage"], rejected["to_stage"]) == ("brd-approval", "analysis")
    assert rejected["data"] == {"feedback": feedback}
    assert rejected["reason"].startswith("rejected by token:tester: Requirement 2 is vague: say")
    job = detail["jobs"][-1]
    assert (job["stage"], job["status"], job["attempt"]) == ("analysis", "queued", 1)
    assert feedback in job["feedback"]
    assert "docs/work-items/DEMO-1/01-brd.md was rejected by token:tester" in job["feedback"]

    # Anywhere but the gate: one 409 naming the stage.
    again = client.post("/tasks/DEMO-1/reject", json={"feedback": feedback})
    error = assert_one_line_error(again, 409)
    assert "DEMO-1 is in analysis; reject applies at brd-approval" in error


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/tasks/NOPE-1"),
        ("GET", "/tasks/12345"),
        ("POST", "/tasks/NOPE-1/approve"),
        ("POST", "/tasks/NOPE-1/cancel"),
        ("POST", "/tasks/NOPE-1/rollback"),
        ("POST", "/tasks/NOPE-1/retry"),
    ],
)
def test_an_unknown_task_is_404(client: httpx.Client, method: str, path: str) -> None:
    error = assert_one_line_error(client.request(method, path, json={}), 404)

    assert "no task" in error


def test_an_unknown_path_is_404_in_the_same_shape(client: httpx.Client) -> None:
    assert_one_line_error(client.get("/nowhere"), 404)
    assert_one_line_error(client.request("DELETE", "/tasks", json={}), 405)


def test_a_directory_that_is_not_a_git_repository_is_refused(
    client: httpx.Client, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()

    error = assert_one_line_error(create(client, plain), 400)

    assert "not a git repository" in error
    assert client.get("/tasks").json()["items"] == []
    assert not (tmp_path / ".orch" / "worktrees").exists()


def test_a_relative_repository_path_is_refused(client: httpx.Client, repo: Path) -> None:
    error = assert_one_line_error(create(client, Path("repo")), 422)

    assert "absolute path" in error
    assert client.get("/tasks").json()["items"] == []


def test_a_100_kb_title_is_refused_and_nothing_is_written(
    client: httpx.Client, repo: Path, tmp_path: Path
) -> None:
    error = assert_one_line_error(create(client, repo, title="t" * 100_000), 422)

    assert "title" in error
    assert len(error) < 1000
    assert client.get("/tasks").json()["items"] == []
    assert task_branches(repo) == ""
    assert not (tmp_path / ".orch" / "worktrees").exists()


@pytest.mark.parametrize("work_item", ["../x", "a;rm -rf", "", "-x", "a..b", "x" * 65])
def test_an_unsafe_work_item_is_refused(client: httpx.Client, repo: Path, work_item: str) -> None:
    error = assert_one_line_error(create(client, repo, work_item=work_item), 422)

    assert "work item" in error
    assert client.get("/tasks").json()["items"] == []
    assert task_branches(repo) == ""


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": "Add a greeting"}, "body.repo"),
        ({"repo": "/tmp"}, "body.title"),
        ({"repo": "/tmp", "title": 42}, "body.title"),
        ({"repo": "/tmp", "title": "x", "colour": "red"}, "body.colour"),
    ],
)
def test_a_malformed_body_names_the_field_in_one_line(
    client: httpx.Client, body: dict[str, Any], field: str
) -> None:
    error = assert_one_line_error(client.post("/tasks", json=body), 422)

    assert error.startswith(f"{field}: ")
    assert client.get("/tasks").json()["items"] == []


def test_a_missing_or_broken_body_is_one_line_422(client: httpx.Client) -> None:
    empty = client.post("/tasks", headers={"content-type": "application/json"})
    assert assert_one_line_error(empty, 422).startswith("body: ")
    broken = client.post(
        "/tasks", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_one_line_error(broken, 422)


def test_an_unknown_stage_filter_is_refused(client: httpx.Client) -> None:
    error = assert_one_line_error(client.get("/tasks", params={"stage": "nirvana"}), 422)

    assert "unknown stage" in error


def test_a_lost_database_is_503_on_health_and_elsewhere_with_one_logged_line(
    tmp_path: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    database_dir = tmp_path / "doomed"
    store = Store.open(f"sqlite:///{database_dir}/orch.db")
    app = create_app(store=store, settings=settings, service=TaskService(store, settings))
    store.close()  # drop pooled connections: the next request must reconnect
    shutil.rmtree(database_dir)

    with (
        api_client(app, "orch_any-token") as test_client,
        caplog.at_level(logging.WARNING),
    ):
        health = test_client.get("/health")
        tasks = test_client.get("/tasks")

    assert health.status_code == 503
    assert health.json()["status"] == "error"
    assert health.json()["error"].startswith("database unreachable: ")
    # Not a bug: the database is out of reach (decision 0033).
    assert tasks.status_code == 503
    assert tasks.json() == {"error": "the database is out of reach; try again shortly"}
    lines = [r for r in caplog.records if r.name == "orchestrator.api.server"]
    assert any("GET /tasks: the database is out of reach" in r.getMessage() for r in lines)
    assert all(r.exc_info is None for r in lines)  # a line, not a traceback


def test_openapi_lists_every_path(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()

    assert schema["info"] == {
        "title": "orchestrator",
        "version": __version__,
        "description": schema["info"]["description"],
    }
    # Every endpoint of the API is documented (integrations add their webhooks).
    assert set(schema["paths"]) >= {
        "/transition-lease/release",
        "/health",
        "/status",
        "/queue",
        "/tasks",
        "/tasks/{ref}",
        "/tasks/{ref}/approve",
        "/tasks/{ref}/reject",
        "/tasks/{ref}/cancel",
        "/tasks/{ref}/rollback",
        "/tasks/{ref}/retry",
    }
    assert set(schema["paths"]["/tasks"]) == {"get", "post"}
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


# --- run_server in a real process ----------------------------------------------------

SERVE_SCRIPT: Final = """
import sys
from pathlib import Path

from orchestrator.api.serve import run_server
from orchestrator.settings import load_settings
from orchestrator.store import Store

settings = load_settings(cwd=Path(sys.argv[1]))
store = Store.open(settings.effective_database_url)
sys.exit(run_server(settings, store))
"""

# The supervisor must notice an engine loop that dies; this engine dies on its first tick.
DYING_ENGINE_SCRIPT: Final = """
import sys
from pathlib import Path

from orchestrator.engine.core import Engine
from orchestrator.errors import ConflictError
from orchestrator.api.serve import run_server
from orchestrator.settings import load_settings
from orchestrator.store import Store


class DyingEngine(Engine):
    def tick(self) -> bool:
        raise RuntimeError("the engine broke on purpose")


settings = load_settings(cwd=Path(sys.argv[1]))
store = Store.open(settings.effective_database_url)
sys.exit(run_server(settings, store, engine=DyingEngine(store, settings)))
"""

# A maintenance loop that dies must be restarted and shown, not stop the server: this
# reaper's sweep raises on its first two runs.
DYING_REAPER_SCRIPT: Final = """
import sys
from pathlib import Path

from orchestrator.engine.core import Engine
from orchestrator.maintenance.reaper import Reaper
from orchestrator.api.serve import run_server
from orchestrator.settings import load_settings
from orchestrator.store import Store


class DyingReaper(Reaper):
    failures = 0

    def sweep(self) -> None:
        if DyingReaper.failures < 2:
            DyingReaper.failures += 1
            raise RuntimeError(f"the reaper broke on purpose ({DyingReaper.failures})")
        super().sweep()


settings = load_settings(cwd=Path(sys.argv[1]))
store = Store.open(settings.effective_database_url)
engine = Engine(store, settings)
object.__setattr__(engine.services, "reaper", DyingReaper(engine.finalizer, engine.kill_job))
sys.exit(run_server(settings, store, engine=engine))
"""
SUPERVISED_LOOPS: Final = (
    "engine",
    "reaper",
    "reconciler",
    "worktree-janitor",
    "rescuer",
    "inbox",
    "heartbeat",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(tmp_path: Path, script: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    root = tmp_path / "server"
    root.mkdir()
    # public_read: the test reads /status without a token.
    (root / "orch.toml").write_text(f'host = "127.0.0.1"\nport = {port}\npublic_read = true\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    with (
        (tmp_path / "stdout.txt").open("wb") as stdout,
        (tmp_path / "stderr.txt").open("wb") as stderr,
    ):
        process = subprocess.Popen(
            [sys.executable, "-c", script, str(root)],
            cwd=root,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    return process, port


def output_of(tmp_path: Path) -> tuple[str, str]:
    return (
        (tmp_path / "stdout.txt").read_text(errors="replace"),
        (tmp_path / "stderr.txt").read_text(errors="replace"),
    )


def wait_until_healthy(process: subprocess.Popen[bytes], port: int, tmp_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}: {output_of(tmp_path)}")
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
        except httpx.TransportError:
            time.sleep(POLL_INTERVAL_S)
            continue
        if response.status_code == 200:
            return
        time.sleep(POLL_INTERVAL_S)
    process.kill()
    process.wait()
    pytest.fail(f"the server did not answer /health in {SERVER_START_TIMEOUT_S}s")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_run_server_serves_and_stops_cleanly_on_a_signal(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    process, port = start_server(tmp_path, SERVE_SCRIPT)
    try:
        wait_until_healthy(process, port, tmp_path)
        status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5.0).json()
        assert status["boot_id"]
        loops = {loop["name"]: loop["state"] for loop in status["loops"]}
        assert loops == dict.fromkeys(SUPERVISED_LOOPS, "running")

        process.send_signal(stop_signal)
        exit_code = process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    stdout, stderr = output_of(tmp_path)
    assert exit_code == 0, stderr
    assert f"orch serve: listening on http://127.0.0.1:{port} (database: sqlite:///" in stdout
    assert "Traceback" not in stderr


def test_run_server_exits_1_when_the_engine_loop_dies(tmp_path: Path) -> None:
    process, _port = start_server(tmp_path, DYING_ENGINE_SCRIPT)
    try:
        exit_code = process.wait(timeout=SERVER_START_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    _stdout, stderr = output_of(tmp_path)
    assert exit_code == 1, stderr
    assert "the engine loop died" in stderr
    assert "the engine broke on purpose" in stderr


def test_run_server_exits_1_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = int(holder.getsockname()[1])
        root = tmp_path / "server"
        root.mkdir()
        (root / "orch.toml").write_text(f'host = "127.0.0.1"\nport = {port}\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        completed = subprocess.run(
            [sys.executable, "-c", SERVE_SCRIPT, str(root)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=SERVER_START_TIMEOUT_S,
            check=False,
        )

    assert completed.returncode == 1, completed.stderr
    assert f"orch serve: cannot serve on http://127.0.0.1:{port}" in completed.stderr
    assert "listening" not in completed.stdout


def test_reject_is_refused_when_the_repository_skips_analysis(tmp_path: Path, repo: Path) -> None:
    config = tmp_path / "skips" / "orch.toml"
    config.parent.mkdir()
    config.write_text(ORCH_TOML + '\n[repos.repo]\nskip = ["analysis"]\n')
    settings = load_settings(config)
    store = Store.open(settings.effective_database_url)
    try:
        service = TaskService(store, settings)
        task = service.create_task(repo_path=repo, title="Add a greeting", work_item="SKIP-1")
        assert task.stage == "brd-approval"  # straight to the gate: nothing writes a BRD
        with pytest.raises(ConflictError, match="repository skips analysis"):
            service.reject(task, feedback="redo it")
        assert store.get_task(task.id).stage == "brd-approval"
    finally:
        store.close()


def test_create_refuses_a_hybrid_explainer_that_cannot_start(
    api_store: Store, settings: Settings, engine: Engine, repo: Path
) -> None:
    broken = settings.model_copy(
        update={
            "test_runner_hybrid_agent": "ghost",
            "agents": {**settings.agents, "ghost": AgentConfig(command=["/nonexistent/ghost"])},
        }
    )
    app = create_app(
        store=api_store, settings=broken, service=TaskService(api_store, broken), engine=engine
    )
    token = issue_token(api_store, "tester", "operator", actor="test")
    with api_client(app, token) as client:
        error = assert_one_line_error(create(client, repo), 400)
        assert "hybrid test explainer" in error
        assert "/nonexistent/ghost" in error
        assert client.get("/tasks").json()["items"] == []


def test_a_maintenance_loop_that_dies_is_restarted_and_shown_in_status(tmp_path: Path) -> None:
    """Seen failing with the supervisor's restart removed (the reaper stayed
    ``stopped`` after its first failure) and, before the supervisor, with the sweeps
    inside the engine's tick (no ``loops`` in ``/status`` at all)."""
    process, port = start_server(tmp_path, DYING_REAPER_SCRIPT)

    def reaper() -> dict[str, Any]:
        status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5.0).json()
        [row] = [loop for loop in status["loops"] if loop["name"] == "reaper"]
        return dict(row)

    try:
        wait_until_healthy(process, port, tmp_path)
        # Backoffs of 1 s then 2 s: generous deadline, never the pass criterion.
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while reaper()["restarts"] < 2 or reaper()["state"] != "running":
            assert time.monotonic() < deadline, reaper()
            time.sleep(POLL_INTERVAL_S)
        row = reaper()
        assert process.poll() is None  # the server kept serving
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert row["last_error"] == "RuntimeError: the reaper broke on purpose (2)"
    assert exit_code == 0
    _stdout, stderr = output_of(tmp_path)
    assert "loop reaper died; restarting it" in stderr
