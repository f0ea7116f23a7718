"""Nothing real Claude Code starts outlives its job: when it ends, at its timeout, and
after ``orch serve`` is SIGKILLed and restarted (the adopted job's leftovers die too).

Claude Code runs each Bash tool command in a session of its own, so a process-group kill
never reached ``nohup sleep 600 &``: it was still running after the task was done. Here
the scripted model makes the development agent's Bash tool start ``nohup sleep`` and
``setsid sleep`` with a unique argument (``600.<mark>``), which is how the test finds them
in ``/proc``; a fixture SIGKILLs any it finds at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from tests.e2e.test_claude_code import CLAUDE, ORCH

from orchestrator.cli.demo_project import create_demo_repository
from orchestrator.testing import ModelServer, Script, parse_script

pytestmark = pytest.mark.e2e

WAIT_S: Final = 180.0
POLL_S: Final = 0.2
# Long enough for Claude Code to start and run its Bash tool on a loaded machine.
STAGE_TIMEOUT_S: Final = 40


def marked_sleeps(mark: str) -> list[int]:
    """Live ``sleep`` processes whose argument carries ``mark``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if (
            state in ("Z", "X")
            or not argv
            or Path(argv[0].decode(errors="replace")).name != ("sleep")
        ):
            continue
        if any(mark.encode() in arg for arg in argv[1:]):
            found.append(int(entry.name))
    return found


def wait_for(predicate: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {WAIT_S:.0f}s")
        time.sleep(POLL_S)


@pytest.fixture
def mark() -> Iterator[str]:
    """A unique number for this test's sleeps; any still alive at the end are killed."""
    value = str(secrets.randbelow(10**9)).zfill(9)
    yield value
    for pid in marked_sleeps(value):
        os.kill(pid, signal.SIGKILL)


def leftovers_script(mark: str, pids: Path, *, hang: bool) -> Script:
    """Development: a Bash call that leaves two sleeps behind, a file, then the end
    (``hang``: a reply that never comes, so only the stage timeout ends the job)."""
    command = (
        f"nohup sleep 600.{mark} >/dev/null 2>&1 & echo $! >> {pids}; "
        f"setsid sleep 601.{mark} >/dev/null 2>&1 </dev/null & echo $! >> {pids}; "
        "echo started"
    )
    last = {"text": "late", "delay_s": 3600} if hang else {"text": "Done."}
    return parse_script(
        {
            "sessions": [
                {
                    "name": "development",
                    "match": "Stage: development",
                    "turns": [
                        {
                            "tool": "Bash",
                            "input": {"command": command, "description": "start helpers"},
                        },
                        {
                            "tool": "Write",
                            "input": {"file_path": "textkit/note.py", "content": "NOTE = 1\n"},
                        },
                        last,
                    ],
                }
            ]
        },
        "leftovers script",
    )


def write_config(workdir: Path, server: ModelServer, *, port: int = 0) -> None:
    env = {**server.env(), "HOME": str(workdir / "home")}
    env_toml = ", ".join(f"{key} = {json.dumps(value)}" for key, value in env.items())
    (workdir / "home").mkdir(parents=True, exist_ok=True)
    (workdir / "orch.toml").write_text(
        f"""\
data_dir = ".orch"
retry_backoff_s = 0
max_attempts = 1
port = {port or 8765}
skip = ["analysis", "brd-approval", "architecture"]

[agents.claude]
adapter = "claude-code"
command = [{json.dumps(str(CLAUDE))}]
model = "claude-sonnet-4-5"
max_turns = 20
env = {{ {env_toml} }}

[stages.development]
agent = "claude"
timeout_s = {STAGE_TIMEOUT_S}
"""
    )


def orch_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "ANTHROPIC_"))}


def orch(workdir: Path, *args: str) -> str:
    result = subprocess.run(
        [*ORCH, *args],
        cwd=workdir,
        env=orch_env(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert result.returncode == 0, f"orch {' '.join(args)}: {result.stderr}"
    return result.stdout


def show(workdir: Path) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(orch(workdir, "task", "show", "LEFT-1", "--json"))
    return shown


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def new_task(workdir: Path, tmp_path: Path) -> None:
    repo = create_demo_repository(tmp_path / "textkit")
    orch(
        workdir,
        "task",
        "create",
        "--repo",
        str(repo),
        "--title",
        "Leftovers",
        "--work-item",
        "LEFT-1",
    )


def test_background_processes_die_when_the_job_ends(
    workdir: Path, tmp_path: Path, mark: str
) -> None:
    pids = tmp_path / "pids"
    with ModelServer(leftovers_script(mark, pids, hang=False)) as server:
        write_config(workdir, server)
        new_task(workdir, tmp_path)
        orch(workdir, "run")
    shown = show(workdir)
    assert shown["stage"] == "done", shown["failed_reason"]
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 2, "the Bash tool did not start both sleeps"
    assert marked_sleeps(mark) == []


def test_background_processes_die_at_the_jobs_timeout(
    workdir: Path, tmp_path: Path, mark: str
) -> None:
    pids = tmp_path / "pids"
    with ModelServer(leftovers_script(mark, pids, hang=True)) as server:
        write_config(workdir, server)
        new_task(workdir, tmp_path)
        run = subprocess.Popen([*ORCH, "run"], cwd=workdir, env=orch_env())
        try:
            seen = wait_for(lambda: len(marked_sleeps(mark)) == 2, "both sleeps run")
            assert seen
            assert run.wait(timeout=WAIT_S) == 1  # the task it ran failed (timed out)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    shown = show(workdir)
    assert shown["failed"]
    assert f"timed out after {STAGE_TIMEOUT_S}s" in shown["failed_reason"]
    assert marked_sleeps(mark) == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def serve(workdir: Path, name: str) -> subprocess.Popen[bytes]:
    with (workdir / f"{name}.log").open("wb") as sink:
        return subprocess.Popen(
            [*ORCH, "serve"], cwd=workdir, env=orch_env(), stdout=sink, stderr=subprocess.STDOUT
        )


def test_an_adopted_jobs_background_processes_die_after_a_serve_sigkill(
    workdir: Path, tmp_path: Path, mark: str
) -> None:
    pids = tmp_path / "pids"
    with ModelServer(leftovers_script(mark, pids, hang=True)) as server:
        write_config(workdir, server, port=free_port())
        new_task(workdir, tmp_path)
        first = serve(workdir, "serve-1")
        second: subprocess.Popen[bytes] | None = None
        try:
            sleeps = wait_for(
                lambda: len(marked_sleeps(mark)) == 2 and marked_sleeps(mark), "sleeps"
            )
            first.send_signal(signal.SIGKILL)
            first.wait()
            # The job and what it started outlive the server: the launcher still runs.
            assert sorted(marked_sleeps(mark)) == sorted(sleeps)
            job_pid = show(workdir)["jobs"][-1]["pid"]
            os.kill(job_pid, 0)

            second = serve(workdir, "serve-2")
            wait_for(lambda: show(workdir)["failed"], "the adopted job is timed out")
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=60)
    shown = show(workdir)
    kinds = [event["kind"] for event in shown["events"]]
    assert "job.adopted" in kinds
    assert f"timed out after {STAGE_TIMEOUT_S}s" in shown["failed_reason"]
    assert marked_sleeps(mark) == []
