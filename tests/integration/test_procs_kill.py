"""The one tree-kill (``orchestrator.procs.kill``) against real process trees.

No launcher here (``test_procs_job.py`` has it): a ``sh`` started by the one spawner
leads a new session and starts grandchildren, some of which ignore SIGTERM and one of
which leaves the group with ``setsid``. Each grandchild writes its pid before it becomes
the long sleep, so the test can prove it is gone. Teardown SIGKILLs whatever a failed
test left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest

from orchestrator.procs.kill import kill_tree, living
from orchestrator.procs.proc import read_stat
from orchestrator.procs.spawn import spawn
from orchestrator.runners.process import run_command

WAIT_TIMEOUT_S: Final = 10.0
POLL_INTERVAL_S: Final = 0.02
# Longer than pytest-timeout: a sleep that has to be killed.
NEVER_S: Final = 3600
# Short: the grandchildren here ignore SIGTERM, so every kill waits its grace out.
GRACE_S: Final = 0.2
BIG_STDIN_BYTES: Final = 2_000_000

Start = Callable[[str], "subprocess.Popen[bytes]"]


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {WAIT_TIMEOUT_S}s")
        time.sleep(POLL_INTERVAL_S)


def running(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat.living


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    started: list[subprocess.Popen[bytes]] = []

    def _start(script: str) -> subprocess.Popen[bytes]:
        popen = spawn(["sh", "-c", script], cwd=tmp_path, env={**os.environ, "OUT": str(tmp_path)})
        started.append(popen)
        return popen

    yield _start
    for popen in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=WAIT_TIMEOUT_S)
    pid_file = tmp_path / "pids"
    for pid in pid_file.read_text().split() if pid_file.is_file() else ():
        with contextlib.suppress(OSError):
            if b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(int(pid), signal.SIGKILL)


def pids_written(tmp_path: Path, count: int) -> list[int]:
    pid_file = tmp_path / "pids"
    wait_for(
        lambda: pid_file.is_file() and len(pid_file.read_text().split()) == count,
        f"{count} pids written",
    )
    return [int(pid) for pid in pid_file.read_text().split()]


# The leader ignores SIGTERM (so it stays the parent of what it started until the
# SIGKILL), and starts: a grandchild that ignores SIGTERM too, one that does not, and one
# that ignores it and leaves the group and session (``setsid``).
_WRITE_PID_AND_SLEEP: Final = f'echo $$ >> "$OUT/pids"; exec sleep {NEVER_S}'
TREE: Final = (
    'trap "" TERM; '
    f"sh -c '{_WRITE_PID_AND_SLEEP}' & "
    f"sh -c 'trap - TERM; {_WRITE_PID_AND_SLEEP}' & "
    f"setsid sh -c '{_WRITE_PID_AND_SLEEP}' >/dev/null 2>&1 </dev/null & "
    "while :; do wait; done"
)


def test_no_grandchild_survives_a_tree_kill(start: Start, tmp_path: Path) -> None:
    leader = start(TREE)
    pids = pids_written(tmp_path, 3)
    detached = [pid for pid in pids if os.getsid(pid) != leader.pid]
    assert len(detached) == 1, "the setsid grandchild left the session"

    assert kill_tree(group=leader.pid, root=leader.pid, grace_s=GRACE_S, reap=leader.poll)

    # The kill returns only once nothing it reaches is running: no waiting here.
    assert [pid for pid in pids if running(pid)] == []
    assert leader.wait(timeout=WAIT_TIMEOUT_S) == -signal.SIGKILL
    assert living(group=leader.pid) == []


def test_a_kill_of_the_group_alone_misses_what_left_it(start: Start, tmp_path: Path) -> None:
    # Why a kill takes a root too: the setsid grandchild is in no group of the job's.
    leader = start(TREE)
    pids = pids_written(tmp_path, 3)
    [detached] = [pid for pid in pids if os.getsid(pid) != leader.pid]

    kill_tree(group=leader.pid, grace_s=GRACE_S, reap=leader.poll)

    assert [pid for pid in pids if running(pid)] == [detached]


def test_a_kill_spares_what_it_is_told_to(start: Start, tmp_path: Path) -> None:
    # The hooks wrapper's kill: everything of its group but itself and the launcher.
    leader = start(
        f"sh -c '{_WRITE_PID_AND_SLEEP}' & wait; "
        f'echo spared > "$OUT/spared"; exec sleep {NEVER_S}'
    )
    [child] = pids_written(tmp_path, 1)

    assert kill_tree(group=leader.pid, spare=(leader.pid,), grace_s=GRACE_S)

    assert not running(child)
    # The leader outlived the kill of its child and went on.
    wait_for((tmp_path / "spared").is_file, "the leader goes on after its child died")
    assert leader.poll() is None


def test_a_kill_of_a_group_that_is_gone_finds_nothing(start: Start) -> None:
    leader = start("exit 0")
    leader.wait(timeout=WAIT_TIMEOUT_S)

    # A grace of an hour: returning at all proves nothing was waited for.
    assert not kill_tree(group=leader.pid, root=leader.pid, grace_s=NEVER_S)


def test_the_launcher_imports_no_more_than_the_process_toolkit() -> None:
    # It runs in every job and must start fast: no SQLAlchemy, no pydantic, no settings.
    probe = (
        "import sys, orchestrator.procs.launcher, orchestrator.workspace.hooks; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('orchestrator') "
        "or m.partition('.')[0] in ('sqlalchemy', 'pydantic', 'httpx', 'jinja2'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )

    # (The hooks wrapper's package, orchestrator.workspace, has an empty __init__.)
    assert done.stdout.split() == [
        "orchestrator",
        "orchestrator.procs",
        "orchestrator.procs.kill",
        "orchestrator.procs.launcher",
        "orchestrator.procs.proc",
        "orchestrator.workspace",
        "orchestrator.workspace.hooks",
    ]


def test_a_runner_command_that_never_reads_a_large_prompt_still_times_out(
    tmp_path: Path,
) -> None:
    # The prompt is fed on a thread: written inline, it would block on the full pipe for
    # the command's hour and pytest-timeout would end the test.
    result = run_command(
        ["sleep", str(NEVER_S)],
        cwd=tmp_path,
        env=dict(os.environ),
        timeout_s=GRACE_S,
        log_path=tmp_path / "command.log",
        stdin_text="p" * BIG_STDIN_BYTES,
    )

    assert result.timed_out
