"""Live progress through the real `orch` CLI: `orch run` showing running jobs (piped and
on a pseudo-terminal), Ctrl-C leaving the job to the next engine, `orch task logs
--follow`, and `orch serve` stopping with an /events stream open.

The agent prints a line, then waits for a file the test creates (no sleeps decide
anything), then hands over to the scripted agent. Every wait has a generous deadline
that is never the pass criterion.

Seen failing before the change: `orch run` printed nothing between "running agent" and
the job's end; Ctrl-C killed the job and recorded a failed attempt (exit 130, the task
retried by the next run); `--follow` was an unknown option; and `orch serve` with an
open stream waited http_graceful_shutdown_s (600 here) before exiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from orchestrator.cli.demo_project import create_demo_repository

pytestmark = pytest.mark.e2e

ORCH: Final = [sys.executable, "-m", "orchestrator"]
SECRET: Final = "gh-webhook-secret-4711"
DEADLINE_S: Final = 120.0
AGENT: Final = """\
import os, pathlib, sys, time
print("step one: reading the code with " + {secret!r}, flush=True)
go = pathlib.Path({go!r})
while not go.exists():
    time.sleep(0.05)
print("step two: writing the BRD", flush=True)
os.execv(sys.executable, [sys.executable, "-m", "orchestrator.agents.scripted", *sys.argv[1:]])
"""
ANSI: Final = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "orch-home"
    work.mkdir()
    agent = tmp_path / "slow_agent.py"
    agent.write_text(AGENT.format(secret=SECRET, go=str(tmp_path / "go")))
    (work / "orch.toml").write_text(
        'data_dir = ".orch"\nretry_backoff_s = 0\n'
        f"github_webhook_secret = {json.dumps(SECRET)}\n"
        "http_graceful_shutdown_s = 600\n"
        f'[agents.slow]\ncommand = ["{{python}}", {json.dumps(str(agent))}, "--stage", '
        '"{stage}"]\n'
        '[stages.analysis]\nagent = "slow"\n'
        '[stages.architecture]\nagent = "scripted"\n[stages.development]\nagent = "scripted"\n'
    )
    repo = create_demo_repository(tmp_path / "lib")
    orch(work, "task", "create", "--repo", str(repo), "--title", "Slow one", "--work-item", "SL-1")
    return work


def environment() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return {**base, "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "160"}


def orch(workdir: Path, *args: str, exit_code: int | None = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*ORCH, *args],
        cwd=workdir,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )
    if exit_code is not None and result.returncode != exit_code:
        pytest.fail(f"orch {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def start(workdir: Path, *args: str, output: Path) -> subprocess.Popen[bytes]:
    with output.open("wb") as sink:
        return subprocess.Popen(
            [*ORCH, *args], cwd=workdir, env=environment(), stdout=sink, stderr=subprocess.STDOUT
        )


def wait_for(what: str, check: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if process.poll() is not None and not check():
            pytest.fail(f"exited {process.returncode} before {what}")
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S}s"
        time.sleep(0.05)


def task_json(workdir: Path) -> dict[str, object]:
    shown: dict[str, object] = json.loads(orch(workdir, "task", "show", "SL-1", "--json").stdout)
    return shown


def test_run_piped_shows_the_running_job_and_logs_follow_tails_it(workdir: Path) -> None:
    run_out = workdir / "run.out"
    run = start(workdir, "run", output=run_out)
    follow = run
    try:
        wait_for("progress line", lambda: "step one" in run_out.read_text(), run)
        follow_out = workdir / "follow.out"
        follow = start(workdir, "task", "logs", "SL-1", "--follow", output=follow_out)
        wait_for("followed line", lambda: "step one" in follow_out.read_text(), follow)
        (workdir.parent / "go").touch()
        assert follow.wait(timeout=DEADLINE_S) == 0, follow_out.read_text()
        assert run.wait(timeout=DEADLINE_S) == 0, run_out.read_text()
    finally:
        (workdir.parent / "go").touch()
        for process in (run, follow):
            if process.poll() is None:
                process.kill()
    piped = run_out.read_text()
    # One plain line for the job: work item, stage, elapsed time, its last output line.
    assert re.search(r"SL-1\s+analysis [0-9.]+s │ step one: reading the code with \*\*\*", piped)
    assert not ANSI.search(piped), "escape codes in piped output"
    assert SECRET not in piped
    followed = follow_out.read_text()
    assert "step one: reading the code with ***" in followed
    assert "step two: writing the BRD" in followed
    assert "the run ended (exit 0)" in followed
    assert SECRET not in followed
    assert task_json(workdir)["stage"] == "brd-approval"


def test_ctrl_c_leaves_the_job_running_and_the_next_run_adopts_it(workdir: Path) -> None:
    run_out = workdir / "run.out"
    run = start(workdir, "run", output=run_out)
    try:
        wait_for("progress line", lambda: "step one" in run_out.read_text(), run)
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=DEADLINE_S) == 130, run_out.read_text()
    finally:
        if run.poll() is None:
            run.kill()
    said = run_out.read_text()
    assert "interrupted: SL-1 analysis (slow, attempt 1, pid" in said
    assert "is left running, not counted as failed" in said
    assert "Traceback" not in said
    shown = task_json(workdir)
    [job] = shown["jobs"]  # type: ignore[misc]
    assert job["status"] == "running"
    assert not shown["failed"]
    os.kill(job["pid"], 0)  # the agent still runs: no exception

    again_out = workdir / "again.out"
    again = start(workdir, "run", output=again_out)
    try:
        # The board shows only the jobs this engine watches: the adopted one.
        wait_for("the adopted job", lambda: "step one" in again_out.read_text(), again)
        (workdir.parent / "go").touch()
        assert again.wait(timeout=DEADLINE_S) == 0, again_out.read_text()
    finally:
        (workdir.parent / "go").touch()
        if again.poll() is None:
            again.kill()
    shown = task_json(workdir)
    assert shown["stage"] == "brd-approval"
    kinds = [event["kind"] for event in shown["events"]]  # type: ignore[attr-defined]
    assert "job.adopted" in kinds
    # One analysis job, one attempt: the interruption cost nothing.
    assert [(j["stage"], j["attempt"]) for j in shown["jobs"]] == [("analysis", 1)]  # type: ignore[attr-defined]


def test_follow_ctrl_c_exits_0_quietly(workdir: Path) -> None:
    run_out = workdir / "run.out"
    run = start(workdir, "run", output=run_out)
    try:
        wait_for("progress line", lambda: "step one" in run_out.read_text(), run)
        follow_out = workdir / "follow.out"
        follow = start(workdir, "task", "logs", "SL-1", "-f", output=follow_out)
        wait_for("followed line", lambda: "step one" in follow_out.read_text(), follow)
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=DEADLINE_S) == 0
        assert "Traceback" not in follow_out.read_text()
        assert "interrupted" not in follow_out.read_text()
    finally:
        (workdir.parent / "go").touch()
        run.wait(timeout=DEADLINE_S)
    bad = orch(workdir, "task", "logs", "SL-1", "--follow", "--json", exit_code=2)
    assert bad.stderr.count("\n") == 1
    assert "--follow" in bad.stderr


def _read_pty(fd: int, chunks: list[bytes]) -> None:
    ready, _, _ = select.select([fd], [], [], 0.05)
    if ready:
        with contextlib.suppress(OSError):  # the child closed its end
            chunks.append(os.read(fd, 65536))


def test_run_on_a_terminal_refreshes_the_job_in_place(workdir: Path) -> None:
    leader, follower = pty.openpty()
    run = subprocess.Popen(
        [*ORCH, "run"],
        cwd=workdir,
        env={**environment(), "TERM": "xterm-256color"},
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks: list[bytes] = []

    def seen() -> str:
        _read_pty(leader, chunks)
        return ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace"))

    try:
        wait_for("the job on the board", lambda: "step one" in seen(), run)
        # Refreshed in place: the elapsed time is redrawn (cursor movement) and changes.
        first = set(re.findall(r"(\d+\.\d)s", seen()))
        wait_for(
            "a later elapsed time",
            lambda: len(set(re.findall(r"(\d+\.\d)s", seen())) - first) > 0,
            run,
        )
        (workdir.parent / "go").touch()
        deadline = time.monotonic() + DEADLINE_S
        while run.poll() is None and time.monotonic() < deadline:
            seen()
        assert run.wait(timeout=DEADLINE_S) == 0, seen()
    finally:
        if run.poll() is None:
            run.kill()
        os.close(leader)
    raw = b"".join(chunks).decode("utf-8", errors="replace")
    assert "\x1b[" in raw  # Rich Live drew and moved the cursor
    assert "SL-1" in ANSI.sub("", raw)
    assert SECRET not in raw


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_sigterm_with_an_open_event_stream_exits_promptly(workdir: Path) -> None:
    token = orch(workdir, "token", "create", "watcher", "--role", "viewer").stdout
    secret = re.search(r"orch_[A-Za-z0-9_-]+", token)
    assert secret is not None
    port = _free_port()
    serve_out = workdir / "serve.out"
    server = start(workdir, "serve", "--host", "127.0.0.1", "--port", str(port), output=serve_out)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("listening", lambda: "listening on" in serve_out.read_text(), server)
        headers = {"Authorization": f"Bearer {secret.group(0)}"}
        with (
            httpx.Client(base_url=base, headers=headers, timeout=DEADLINE_S) as http,
            http.stream("GET", "/events", params={"after": 0}) as stream,
        ):
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert any(line.startswith("id: ") for line in lines)
            server.send_signal(signal.SIGTERM)
            # http_graceful_shutdown_s is 600: only a stream that ends itself lets the
            # server exit within the deadline.
            assert server.wait(timeout=DEADLINE_S) == 0, serve_out.read_text()
            assert list(lines) is not None  # the body came to its end
    finally:
        (workdir.parent / "go").touch()
        if server.poll() is None:
            server.kill()


def sse_events(lines: Iterator[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(id, event) of each message of an /events stream."""
    event_id, data = None, ""
    for line in lines:
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and event_id is not None:
            yield event_id, json.loads(data)
            event_id, data = None, ""


def task_event_ids(workdir: Path, after: int = 0) -> list[int]:
    with sqlite3.connect(workdir / ".orch" / "orch.db") as db:
        rows = db.execute(
            "SELECT id FROM events WHERE task_id IS NOT NULL AND id > ? ORDER BY id", (after,)
        )
        return [int(row[0]) for row in rows]


def test_events_resume_across_a_serve_restart_without_loss_or_repeat(
    workdir: Path, tmp_path: Path
) -> None:
    created = orch(workdir, "token", "create", "watcher", "--role", "viewer").stdout
    token = re.search(r"orch_[A-Za-z0-9_-]+", created)
    assert token is not None
    headers = {"Authorization": f"Bearer {token.group(0)}"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"

    def serve(name: str) -> subprocess.Popen[bytes]:
        out = workdir / f"{name}.out"
        server = start(workdir, "serve", "--host", "127.0.0.1", "--port", str(port), output=out)
        wait_for("listening", lambda: "listening on" in out.read_text(), server)
        return server

    def read_until(
        params: dict[str, str], extra: dict[str, str], kind: str, work_item: str
    ) -> list[int]:
        """Ids of the stream's events up to the first ``kind`` event of ``work_item``."""
        seen: list[tuple[int, dict[str, Any]]] = []
        with (
            httpx.Client(base_url=base, headers={**headers, **extra}, timeout=DEADLINE_S) as http,
            http.stream("GET", "/events", params=params) as stream,
        ):
            assert stream.status_code == 200
            for event_id, event in sse_events(stream.iter_lines()):
                seen.append((event_id, event))
                if event["kind"] == kind and ids.get(event["task_id"]) == work_item:
                    break
        return [event_id for event_id, _ in seen]

    ids = {1: "SL-1", 2: "SL-2"}
    first = serve("serve-1")
    try:
        before = read_until({"after": "0"}, {}, "job.started", "SL-1")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=DEADLINE_S) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert before == task_event_ids(workdir)[: len(before)]

    # Written while no server runs: the resumed stream must bring these, once.
    repo = create_demo_repository(tmp_path / "lib2")
    orch(workdir, "task", "create", "--repo", str(repo), "--title", "Two", "--work-item", "SL-2")
    second = serve("serve-2")
    try:
        resumed = read_until({}, {"Last-Event-ID": str(before[-1])}, "task.created", "SL-2")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=DEADLINE_S) == 0
    finally:
        (workdir.parent / "go").touch()
        if second.poll() is None:
            second.kill()
    assert resumed == task_event_ids(workdir, after=before[-1])[: len(resumed)]
    assert not set(resumed) & set(before)
