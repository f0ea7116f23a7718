"""GET /events and GET /tasks/{ref}/logs through a real uvicorn server, on both databases.

Streams are read with a real HTTP client; every wait is bounded by a generous deadline
(the read timeout), never the pass criterion. Seen failing: without the route (404),
with the resume taken from the newest event instead of Last-Event-ID (the first event
came again), without the task filter (the other task's events came through), without
masking (the secret came back in clear), without the symlink check (another file was
shown), and with a stream that ignored the hub (the server waited for it to close).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from tests.integration.support import make_repo

from orchestrator.api.format import with_iso_times
from orchestrator.api.server import create_app
from orchestrator.api.streams import StreamHub
from orchestrator.auth import issue_token
from orchestrator.lifecycle.service import TaskService
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Store, Task

SECRET: Final = "gh-webhook-secret-4711"
# Read timeout of a stream: generous; a test that waits this long has failed already.
READ_TIMEOUT_S: Final = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` on a real uvicorn server in a thread; yields its base URL."""
    port = _free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        http="h11",
        # Far above any deadline here: a stream that held shutdown up would fail the test.
        timeout_graceful_shutdown=600,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        app.state.streams.close()
        server.should_exit = True
        thread.join(60)
        assert not thread.is_alive(), "the server did not stop"


@dataclass
class World:
    store: Store
    settings: Settings
    repo: Path
    tasks: list[Task]
    viewer: str
    app: FastAPI


def settings_for(tmp_path: Path, db_url: str, repo: Path, extra: str = "") -> Settings:
    config = tmp_path / "orch.toml"
    config.write_text(
        f"database_url = {json.dumps(db_url)}\n"
        'data_dir = ".orch"\n'
        f"github_webhook_secret = {json.dumps(SECRET)}\n"
        + extra
        + "".join(
            f'[stages.{stage}]\nagent = "scripted"\n'
            for stage in ("analysis", "architecture", "development")
        )
        + f"[repos.shop]\npath = {json.dumps(str(repo))}\n"
    )
    return load_settings(config)


def make_world(tmp_path: Path, db_url: str, store: Store, extra: str = "") -> World:
    repo = make_repo(tmp_path / "shop")
    settings = settings_for(tmp_path, db_url, repo, extra)
    service = TaskService(store, settings)
    tasks = [
        service.create_task(repo_path=repo, title=f"Task {n}", work_item=f"SHOP-{n}", actor="t")
        for n in (1, 2)
    ]
    viewer = issue_token(store, "viewer-1", "viewer", actor="t")
    app = create_app(store=store, settings=settings, service=service)
    return World(store, settings, repo, tasks, viewer, app)


@pytest.fixture
def world(tmp_path: Path, db_url: str, store: Store) -> World:
    return make_world(tmp_path, db_url, store)


def add_run(world: World, task: Task, log: str, *, attempt: int = 1) -> int:
    """A running development job of ``task`` with a run whose log holds ``log``."""
    path = world.settings.data_dir / "logs" / f"{task.work_item}-{attempt}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(log, encoding="utf-8")
    with world.store.transaction() as tx:
        job_id = tx.enqueue_job(
            task_id=task.id, stage="analysis", kind="agent", agent="scripted", attempt=attempt
        )
        tx.set_job_status_cas(job_id, "queued", "running")
        return tx.insert_agent_run(
            job_id=job_id,
            task_id=task.id,
            agent="scripted",
            model="",
            effort="",
            attempt=attempt,
            log_path=str(path),
        )


def messages(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The SSE messages of ``response`` (comments and ``retry:`` lines skipped)."""
    message: dict[str, Any] = {}
    data: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if data or message:
                message["data"] = "\n".join(data)
                yield message
            message, data = {}, []
        elif line.startswith(":") or line.startswith("retry:"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            else:
                message[field] = value


def client(base: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base, headers=headers, timeout=READ_TIMEOUT_S)


# --- GET /events ---------------------------------------------------------------------------


def test_events_replay_resume_filter_and_live(world: World) -> None:
    first, second = world.tasks
    written = [e for e in world.store.events_after(0) if e.task_id is not None]
    assert {e.task_id for e in written} == {first.id, second.id}
    with serving(world.app) as base, client(base, world.viewer) as http:
        with http.stream("GET", "/events", params={"after": 0}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = messages(response)
            replayed = [next(stream) for _ in written]
        assert [json.loads(m["data"]) for m in replayed] == [
            with_iso_times(e.to_dict()) for e in written
        ]
        assert json.loads(replayed[0]["data"])["created_at"].endswith("Z")
        assert [int(m["id"]) for m in replayed] == [e.id for e in written]

        # Resume after the first: the second comes, the first does not come again.
        resume = {"Last-Event-ID": replayed[0]["id"]}
        with http.stream("GET", "/events", headers=resume) as response:
            assert int(next(messages(response))["id"]) == written[1].id

        # One task only, and an event written while the stream is open arrives.
        with http.stream("GET", "/events", params={"task": second.work_item}) as response:
            stream = messages(response)
            TaskService(world.store, world.settings).cancel(first, actor="t", reason="a")
            TaskService(world.store, world.settings).cancel(second, actor="t", reason="b")
            live = json.loads(next(stream)["data"])
        assert (live["task_id"], live["kind"]) == (second.id, "task.cancelled")


@pytest.mark.parametrize(
    "header", ["abc", "-1", "1" * 30, "\uff11\uff12", "3.5", "0x10", "1 2"], ids=repr
)
def test_a_bad_last_event_id_is_a_422_line(world: World, header: str) -> None:
    with serving(world.app) as base, client(base, world.viewer) as http:
        response = http.get("/events", headers={"Last-Event-ID": header.encode()})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "Last-Event-ID" in error
    assert "\n" not in error


def test_events_refuse_unknown_tasks_bad_after_and_no_token(world: World) -> None:
    with serving(world.app) as base:
        with client(base, world.viewer) as http:
            unknown = http.get("/events", params={"task": "NOPE-9"})
            negative = http.get("/events", params={"after": -1})
            huge = http.get("/events", params={"after": "9" * 40})
        with client(base, None) as anonymous:
            refused = anonymous.get("/events")
        with client(base, "orch_forged") as forged:
            forged_refused = forged.get("/events")
    assert unknown.status_code == 404
    assert "NOPE-9" in unknown.json()["error"]
    assert negative.status_code == 422
    assert huge.status_code == 422
    assert refused.status_code == 401
    assert forged_refused.status_code == 401


def test_public_read_opens_the_streams(tmp_path: Path, db_url: str, store: Store) -> None:
    world = make_world(tmp_path, db_url, store, "public_read = true\n")
    add_run(world, world.tasks[0], "hello\n")
    with serving(world.app) as base, client(base, None) as anonymous:
        with anonymous.stream("GET", "/events", params={"after": 0}) as response:
            assert response.status_code == 200
            assert next(messages(response))["id"]
        log = anonymous.get(f"/tasks/{world.tasks[0].work_item}/logs")
    assert (log.status_code, log.text) == (200, "hello\n")


def test_shutdown_ends_open_streams(world: World) -> None:
    """The hub ends a waiting stream: the server stops with a 600 s graceful timeout."""
    add_run(world, world.tasks[0], "")
    hub: StreamHub = world.app.state.streams
    log_url = f"/tasks/{world.tasks[0].work_item}/logs?follow=1"
    with (
        serving(world.app) as base,
        client(base, world.viewer) as http,
        http.stream("GET", "/events") as events,
        http.stream("GET", log_url) as log,
    ):
        assert events.status_code == 200
        assert log.status_code == 200
        deadline = time.monotonic() + READ_TIMEOUT_S
        while hub.open_streams() < 2:
            assert time.monotonic() < deadline, "the streams did not start"
            time.sleep(0.02)
        hub.close()
        # Both streams end: their bodies come to an end instead of waiting.
        assert list(messages(events)) == []
        assert list(messages(log)) == []
    assert hub.open_streams() == 0


def test_a_client_hanging_up_ends_its_stream(world: World) -> None:
    hub: StreamHub = world.app.state.streams

    def wait_until_open(count: int) -> None:
        deadline = time.monotonic() + READ_TIMEOUT_S
        while hub.open_streams() != count:
            assert time.monotonic() < deadline, f"{hub.open_streams()} streams open, not {count}"
            time.sleep(0.02)

    with serving(world.app) as base:
        with client(base, world.viewer) as http, http.stream("GET", "/events") as events:
            assert events.status_code == 200
            wait_until_open(1)
        # The client closed the connection: the server's stream ends, the hub forgets it.
        wait_until_open(0)


def test_streams_past_http_max_streams_are_a_429_line(
    tmp_path: Path, db_url: str, store: Store
) -> None:
    """Streams are held open for ever: without a cap they took every connection slot
    (webhooks then got 503, and GitHub never redelivers). Seen failing without it."""
    world = make_world(tmp_path, db_url, store, "http_max_streams = 1\n")
    hub: StreamHub = world.app.state.streams
    with serving(world.app) as base, client(base, world.viewer) as http:
        with http.stream("GET", "/events") as first:
            assert first.status_code == 200
            deadline = time.monotonic() + READ_TIMEOUT_S
            while hub.open_streams() < 1:
                assert time.monotonic() < deadline, "the stream did not start"
                time.sleep(0.02)
            refused = http.get("/events")
            assert refused.status_code == 429
            assert "http_max_streams" in refused.json()["error"]
            log = http.get(f"/tasks/{world.tasks[0].work_item}/logs?follow=1")
            assert log.status_code == 429
            assert http.get("/health").status_code == 200  # the API still answers
        deadline = time.monotonic() + READ_TIMEOUT_S
        while hub.open_streams():
            assert time.monotonic() < deadline, "the closed stream stayed open"
            time.sleep(0.02)
        with http.stream("GET", "/events") as again:
            assert again.status_code == 200


# --- GET /tasks/{ref}/logs --------------------------------------------------------------------


def test_log_of_the_last_or_a_given_run_tailed_and_masked(world: World) -> None:
    task = world.tasks[0]
    old = add_run(world, task, "first run\n")
    lines = "".join(f"line {n}\n" for n in range(1, 6))
    add_run(world, task, f"{lines}token {SECRET} and postgres://u:hunter22@db/x\n", attempt=2)
    with serving(world.app) as base, client(base, world.viewer) as http:
        last = http.get(f"/tasks/{task.work_item}/logs")
        tail = http.get(f"/tasks/{task.work_item}/logs", params={"tail": 2})
        given = http.get(f"/tasks/{task.id}/logs", params={"run": old})
    assert last.status_code == 200, last.text
    assert last.headers["content-type"].startswith("text/plain")
    assert SECRET not in last.text
    assert "hunter22" not in last.text
    assert "token *** and postgres://u:***@db/x" in last.text
    assert tail.text == "line 5\ntoken *** and postgres://u:***@db/x\n"
    assert (given.text, given.headers["x-orch-run-id"]) == ("first run\n", str(old))


def test_log_refuses_other_tasks_runs_bad_input_links_and_no_token(world: World) -> None:
    mine, other = world.tasks
    other_run = add_run(world, other, "not yours\n")
    link_run = add_run(world, mine, "")
    link = Path(world.store.agent_run(link_run).log_path)  # type: ignore[union-attr]
    secret_file = world.settings.data_dir / "elsewhere.txt"
    secret_file.write_text("private\n")
    link.unlink()
    link.symlink_to(secret_file)
    with serving(world.app) as base:
        with client(base, world.viewer) as http:
            cases = {
                "other task's run": http.get(f"/tasks/{mine.work_item}/logs?run={other_run}"),
                "unknown run": http.get(f"/tasks/{mine.work_item}/logs?run=99999"),
                "run not a number": http.get(f"/tasks/{mine.work_item}/logs?run=../../etc"),
                "huge tail": http.get(f"/tasks/{mine.work_item}/logs?tail=10000000000"),
                "negative tail": http.get(f"/tasks/{mine.work_item}/logs?tail=-1"),
                "unknown task": http.get("/tasks/NOPE-1/logs"),
                "symlinked log": http.get(f"/tasks/{mine.work_item}/logs?run={link_run}"),
                "symlinked follow": http.get(
                    f"/tasks/{mine.work_item}/logs?run={link_run}&follow=1"
                ),
            }
        with client(base, None) as anonymous:
            cases["no token"] = anonymous.get(f"/tasks/{other.work_item}/logs")
    expected = {
        "other task's run": 404,
        "unknown run": 404,
        "run not a number": 422,
        "huge tail": 422,
        "negative tail": 422,
        "unknown task": 404,
        "symlinked log": 404,
        "symlinked follow": 404,
        "no token": 401,
    }
    assert {name: r.status_code for name, r in cases.items()} == expected
    for response in cases.values():
        error = response.json()["error"]
        assert "\n" not in error
        assert "not yours" not in response.text
        assert "private" not in response.text


def test_log_with_no_runs_yet_is_a_404(world: World) -> None:
    with serving(world.app) as base, client(base, world.viewer) as http:
        response = http.get(f"/tasks/{world.tasks[0].work_item}/logs")
    assert response.status_code == 404
    assert "no runs yet" in response.json()["error"]


def test_follow_streams_lines_as_written_then_ends_with_the_exit_code(world: World) -> None:
    task = world.tasks[0]
    run_id = add_run(world, task, "started\n")
    path = Path(world.store.agent_run(run_id).log_path)  # type: ignore[union-attr]
    with serving(world.app) as base, client(base, world.viewer) as http:
        url = f"/tasks/{task.work_item}/logs"
        with http.stream("GET", url, params={"follow": 1}) as response:
            assert response.status_code == 200
            stream = messages(response)
            assert next(stream)["data"] == "started"
            with path.open("a", encoding="utf-8") as log:
                log.write(f"working with {SECRET}\nhalf a li")
                log.flush()
                assert next(stream)["data"] == "working with ***"
                log.write("ne\nlast words")
            with world.store.transaction() as tx:
                tx.record_exit(run_id, exit_code=3)
            rest = list(stream)
    assert "\n".join(m["data"] for m in rest[:-1]) == "half a line\nlast words"
    assert rest[-1] == {"event": "end", "data": json.dumps({"exit_code": 3})}
