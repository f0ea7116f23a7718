"""Jobs under the launcher against real children: tree-kill, SIGKILL after the grace,
big pipes.

No database. ``spawn_job`` starts the launcher as the leader of a new session, and the
launcher starts the command (``sh -c``) in the same group. Every test runs under both
launchers (decision 0026): the native one (``launcher.c``, built on first use into the
user's cache directory, as in production) and the Python one
(``orchestrator.procs.launcher``). Scripts start grandchildren and write their pids
(``$!``) to a file so the test can prove they are gone. Teardown SIGKILLs and reaps
whatever a failed test left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest

from orchestrator.procs import native
from orchestrator.procs.job import TAIL_BYTES, RunningProcess, kill_job, spawn_job
from orchestrator.procs.native import LAUNCHERS, Launcher

WAIT_TIMEOUT_S: Final = 10.0
POLL_INTERVAL_S: Final = 0.02
BIG_STDIN_BYTES: Final = 2_000_000
BIG_OUTPUT_BYTES: Final = 4_000_000
LOG_CAP_BYTES: Final = 4096
# The tail is kept in chunks of at most this many bytes (a pipe read).
MAX_CHUNK_BYTES: Final = 64 * 1024
# How a job killed by a signal is recorded: the shell's convention.
KILLED_BY_SIGTERM: Final = 128 + signal.SIGTERM
# No exit recorded: the launcher itself was SIGKILLed.
NO_RECORDED_EXIT: Final = -1
# A grace (and a sleep) far longer than pytest-timeout: a kill that waits it out, or a
# job left to end on its own, fails the test by the suite's timeout, not by a clock here.
NEVER_S: Final = 3600.0

Start = Callable[..., RunningProcess]


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not true after {timeout_s}s")
        time.sleep(POLL_INTERVAL_S)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(params=LAUNCHERS)
def launcher(request: pytest.FixtureRequest) -> Launcher:
    """Which launcher the test's jobs run under; the native one must be there to test."""
    which: Launcher = request.param
    if which == "native":
        assert native.native_launcher() is not None, "the native launcher was not built"
    return which


@pytest.fixture
def start(tmp_path: Path, launcher: Launcher) -> Iterator[Start]:
    """Spawn ``sh -c script`` in ``tmp_path``; everything is killed and reaped after."""
    started: list[RunningProcess] = []

    def _start(
        script: str,
        *,
        stdin_text: str | None = None,
        max_log_bytes: int = 1_000_000,
        grace_s: float = 3.0,
    ) -> RunningProcess:
        process = spawn_job(
            ["sh", "-c", script],
            cwd=tmp_path,
            env={**os.environ, "OUT": str(tmp_path)},
            log_path=tmp_path / "logs" / f"{len(started)}.log",
            max_log_bytes=max_log_bytes,
            stdin_text=stdin_text,
            grace_s=grace_s,
            launcher=launcher,
        )
        started.append(process)
        return process

    yield _start
    for process in started:
        popen = process.popen
        assert popen is not None
        if popen.poll() is None:
            kill_job(process.pid, grace_s=0)
        popen.wait(timeout=WAIT_TIMEOUT_S)
        if popen.stdin is not None:
            with contextlib.suppress(OSError):
                popen.stdin.close()
    # A detached sleeper a failed test left behind (its pid written by itself).
    pid_file = tmp_path / "pids"
    for pid in pid_file.read_text().split() if pid_file.is_file() else ():
        with contextlib.suppress(OSError):
            if b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(int(pid), signal.SIGKILL)


def wait_exit(process: RunningProcess) -> int:
    """The recorded exit code, once the job ended."""
    wait_for(lambda: process.poll() is not None, "the job ends")
    code = process.poll()
    assert code is not None
    return code


def grandchildren(pid_file: Path, count: int) -> list[int]:
    wait_for(
        lambda: pid_file.is_file() and len(pid_file.read_text().split()) == count,
        f"{count} grandchild pids in {pid_file.name}",
    )
    return [int(pid) for pid in pid_file.read_text().split()]


def test_a_job_leads_its_own_session_and_group(start: Start) -> None:
    process = start("sleep 300")

    assert os.getsid(process.pid) == process.pid
    assert os.getpgid(process.pid) == process.pid
    assert os.getpgid(process.pid) != os.getpgid(0)


def test_the_job_runs_under_the_launcher_asked_for(start: Start, launcher: Launcher) -> None:
    # Else every test below would test the Python launcher twice.
    process = start(f"exec sleep {NEVER_S:.0f}")

    program = Path(f"/proc/{process.pid}/exe").resolve()
    if launcher == "native":
        assert program == native.native_launcher()
    else:
        assert program == Path(sys.executable).resolve()


def test_kill_job_leaves_no_grandchild(start: Start, tmp_path: Path) -> None:
    process = start('sleep 300 & echo $! >> "$OUT/pids"; sleep 300 & echo $! >> "$OUT/pids"; wait')
    pids = grandchildren(tmp_path / "pids", 2)
    assert all(os.getpgid(pid) == process.pid for pid in pids)
    assert process.popen is not None

    kill_job(process.pid, grace_s=5.0, reap=process.popen.poll)

    assert wait_exit(process) == KILLED_BY_SIGTERM
    # Orphaned grandchildren are reaped by init, a moment after they die.
    wait_for(lambda: group_gone(process.pid), "the process group is gone")
    for pid in pids:
        wait_for(lambda pid=pid: pid_gone(pid), f"grandchild {pid} is gone")
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)


def test_a_kill_returns_once_the_group_is_dead_not_after_the_whole_grace(start: Start) -> None:
    # Every member dies of SIGTERM at once; only the leader's zombie (not yet reaped by
    # its parent, us) would be left. Waiting out the grace would block the engine: with
    # a grace of an hour, returning at all proves the kill did not.
    # (No grandchild here: an orphan is reaped by init, which may take its time.)
    process = start(f"echo started; exec sleep {NEVER_S:.0f}")
    log = process.log_path
    wait_for(lambda: log.is_file() and log.read_text() == "started\n", "the job started")
    assert process.popen is not None

    kill_job(process.pid, grace_s=NEVER_S, reap=process.popen.poll)

    assert wait_exit(process) == KILLED_BY_SIGTERM
    assert group_gone(process.pid)


def test_a_kill_remembers_why_and_ends_the_job(start: Start) -> None:
    process = start(f"echo started; exec sleep {NEVER_S:.0f}")
    log = process.log_path
    wait_for(lambda: log.is_file() and log.read_text() == "started\n", "the job started")

    process.kill("timed out after 1s")

    assert process.killed_reason == "timed out after 1s"
    assert wait_exit(process) == KILLED_BY_SIGTERM
    assert group_gone(process.pid)


def test_a_job_that_ignores_sigterm_is_sigkilled_after_the_grace(
    start: Start, tmp_path: Path
) -> None:
    # The grandchild inherits the ignored SIGTERM; the shell then traps it to leave
    # marks: "term" when SIGTERM comes, "alive" once it is back to waiting after it.
    marks = tmp_path / "marks"
    process = start(
        f'trap "" TERM; sleep {NEVER_S:.0f} & sleeper=$!; '
        """trap 'echo term >> "$OUT/marks"' TERM; """
        'echo $sleeper >> "$OUT/pids"; '
        'while :; do wait; echo alive >> "$OUT/marks"; done'
    )
    [grandchild] = grandchildren(tmp_path / "pids", 1)
    assert process.popen is not None
    popen = process.popen
    during_the_grace: list[bool] = []

    def reap() -> object:
        # kill_job calls this between its SIGTERM and its SIGKILL: the job got the
        # SIGTERM, outlived it, and so did the grandchild.
        if not during_the_grace:
            # (The launcher's own stop sends the tree a second SIGTERM: more marks.)
            wait_for(
                lambda: marks.is_file() and marks.read_text().startswith("term\nalive\n"),
                "the job marks the SIGTERM and outlives it",
            )
            during_the_grace.append(not pid_gone(grandchild) and popen.poll() is None)
        return popen.poll()

    kill_job(process.pid, grace_s=0.5, reap=reap)

    assert during_the_grace == [True], "no SIGTERM, or no grace before the SIGKILL"
    assert popen.wait(timeout=WAIT_TIMEOUT_S) == -signal.SIGKILL
    assert wait_exit(process) == NO_RECORDED_EXIT
    wait_for(lambda: group_gone(process.pid), "the process group is gone")
    wait_for(lambda: pid_gone(grandchild), "the grandchild is gone")


def test_terminate_does_not_wait_and_force_kill_ends_a_job_that_ignores_sigterm(
    start: Start, tmp_path: Path
) -> None:
    """The engine's kill on a deadline: ``terminate`` sends the SIGTERM and returns with
    the stubborn job alive (the launcher's grace is an hour, so only ``force_kill`` can
    end it: waiting it out would fail the test by the suite's timeout); ``force_kill``
    at the deadline leaves no process of the tree."""
    marks = tmp_path / "marks"
    process = start(
        f'trap "" TERM; sleep {NEVER_S:.0f} & sleeper=$!; '
        """trap 'echo term >> "$OUT/marks"' TERM; """
        'echo $sleeper >> "$OUT/pids"; '
        'while :; do wait; echo alive >> "$OUT/marks"; done',
        grace_s=NEVER_S,
    )
    [grandchild] = grandchildren(tmp_path / "pids", 1)

    process.terminate("timed out after 1s", NEVER_S)

    assert process.killed_reason == "timed out after 1s"
    wait_for(
        lambda: marks.is_file() and marks.read_text().startswith("term\nalive\n"),
        "the job marks the SIGTERM and outlives it",
    )
    assert process.poll() is None
    assert not pid_gone(grandchild)

    assert process.force_kill()

    assert wait_exit(process) == NO_RECORDED_EXIT
    wait_for(lambda: group_gone(process.pid), "the process group is gone")
    wait_for(lambda: pid_gone(grandchild), "the grandchild is gone")
    assert not process.force_kill()  # nothing left to kill


def test_kill_job_of_a_reaped_process_does_nothing(start: Start) -> None:
    process = start("exit 0")
    assert wait_exit(process) == 0

    # A grace of an hour: returning at all proves nothing was waited for.
    kill_job(process.pid, grace_s=NEVER_S)

    assert process.poll() == 0


def test_output_larger_than_the_pipe_buffer_does_not_block_and_the_log_is_capped(
    start: Start,
) -> None:
    process = start(
        f"head -c {BIG_OUTPUT_BYTES} /dev/zero | tr '\\0' x; echo; echo the-last-line",
        max_log_bytes=LOG_CAP_BYTES,
    )

    assert wait_exit(process) == 0
    marker = f"\n[orch: log capped at {LOG_CAP_BYTES} bytes]\n".encode()
    logged = process.log_path.read_bytes()
    assert logged.endswith(marker)
    assert len(logged) == LOG_CAP_BYTES + len(marker)
    assert logged[:LOG_CAP_BYTES] == b"x" * LOG_CAP_BYTES
    # The tail keeps the end (where an agent prints its result), bounded.
    assert process.tail_path.is_file(), "a capped log does not hold the tail"
    tail = process.tail_text()
    assert tail.endswith("x\nthe-last-line\n")
    assert TAIL_BYTES <= len(tail) <= TAIL_BYTES + MAX_CHUNK_BYTES


def test_a_small_output_is_logged_whole_with_its_exit_code(start: Start) -> None:
    process = start("echo out; echo err >&2; exit 3")

    assert wait_exit(process) == 3
    assert process.log_path.read_text() == "out\nerr\n"
    assert process.tail_text() == "out\nerr\n"
    # The whole output is in the log, so no tail file is made (decision 0035).
    assert not process.tail_path.exists()


def test_an_output_longer_than_the_tail_but_under_the_cap_ends_in_the_log(start: Start) -> None:
    process = start(f"head -c {2 * TAIL_BYTES} /dev/zero | tr '\\0' x; echo; echo the-result")

    assert wait_exit(process) == 0
    assert not process.tail_path.exists()
    tail = process.tail_text()
    assert tail.endswith("x\nthe-result\n")
    assert len(tail) == TAIL_BYTES


def test_a_log_that_held_lines_before_gets_a_tail_of_this_run_alone(
    start: Start, tmp_path: Path
) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "0.log").write_text("an earlier run\n")
    process = start("echo this-run")

    assert wait_exit(process) == 0
    assert process.log_path.read_text() == "an earlier run\nthis-run\n"
    assert process.tail_path.read_text() == "this-run\n"
    assert process.tail_text() == "this-run\n"


def test_stdin_larger_than_1_mb_does_not_block_spawn(start: Start) -> None:
    # The first job never reads its stdin: had spawn written the prompt itself, it would
    # block on the full pipe for the job's hour and pytest-timeout would end the test.
    text = "p" * BIG_STDIN_BYTES

    ignoring = start(f"exec sleep {NEVER_S:.0f}", stdin_text=text)
    reading = start("wc -c", stdin_text=text)

    assert ignoring.poll() is None
    assert wait_exit(reading) == 0
    assert reading.tail_text().split() == [str(BIG_STDIN_BYTES)]


@pytest.mark.parametrize("size", [0, 1, 4096, 65535, 65536, 65537, 300_000])
def test_a_prompt_of_any_size_arrives_whole_and_ends_with_its_pipe(start: Start, size: int) -> None:
    # Written at once where the pipe's buffer takes it, the rest on a thread: either
    # way the job reads every byte and then the end of its stdin (else it would wait).
    text = "".join(chr(ord("a") + i % 26) for i in range(size))
    process = start("sha256sum", stdin_text=text)

    assert wait_exit(process) == 0
    assert process.tail_text().split()[0] == hashlib.sha256(text.encode()).hexdigest()


def test_the_stdin_pipe_is_closed_when_the_job_stops_reading(start: Start) -> None:
    # The job exits without reading a prompt larger than the pipe buffer: the feeder
    # gets EPIPE, and must still close its end (else the fd leaks: ResourceWarning).
    process = start("exit 0", stdin_text="p" * BIG_STDIN_BYTES)
    assert wait_exit(process) == 0
    assert process.popen is not None
    stdin = process.popen.stdin
    assert stdin is not None

    wait_for(lambda: stdin.closed, "our end of the job's stdin pipe is closed", timeout_s=3)


def test_a_missing_program_raises_file_not_found(tmp_path: Path, launcher: Launcher) -> None:
    with pytest.raises(FileNotFoundError):
        spawn_job(
            ["/nonexistent/bin/agent"],
            cwd=tmp_path,
            env=dict(os.environ),
            log_path=tmp_path / "missing.log",
            max_log_bytes=LOG_CAP_BYTES,
            launcher=launcher,
        )


def test_a_program_that_cannot_be_started_is_recorded_by_the_launcher(
    tmp_path: Path, launcher: Launcher
) -> None:
    # spawn_job finds the file, the launcher cannot exec it: not executable.
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho never\n")
    process = spawn_job(
        [str(script)],
        cwd=tmp_path,
        env=dict(os.environ),
        log_path=tmp_path / "cannot.log",
        max_log_bytes=LOG_CAP_BYTES,
        launcher=launcher,
    )
    assert process.popen is not None

    assert process.popen.wait(timeout=WAIT_TIMEOUT_S) == 127
    assert process.poll() == 127
    message = f"[orch: cannot start {str(script)!r}: Permission denied]\n"
    assert process.log_path.read_text() == message
    assert process.tail_text() == message


# --- detached descendants: the launcher is their subreaper ----------------------------------

# Two processes that leave the job's session and group: `setsid` (a session of its own,
# as Claude Code gives each Bash command) and a double fork into a new session (the
# daemon's way: its parent exits at once, so it is an orphan). Each writes its own pid
# before it becomes the long sleep (so the pid is the sleep's).
_SLEEPER: Final = (
    "setsid sh -c 'echo $$ >> \"$OUT/pids\"; exec sleep {never}' >/dev/null 2>&1 </dev/null"
)
DETACHED: Final = (
    f"{_SLEEPER} & ( {_SLEEPER} & ) ; "
    'while [ "$(wc -l < "$OUT/pids" 2>/dev/null || echo 0)" -lt 2 ]; do sleep 0.02; done; '
).format(never=f"{NEVER_S:.0f}")


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X")


def detached_pids(tmp_path: Path, process: RunningProcess) -> list[int]:
    pids = grandchildren(tmp_path / "pids", 2)
    for pid in pids:
        assert running(pid)
        assert os.getsid(pid) not in (process.pid, os.getsid(0)), "not detached"
    return pids


def test_nothing_a_job_started_outlives_its_end(start: Start, tmp_path: Path) -> None:
    process = start(DETACHED + "exit 0")
    # Not detached_pids: the job exits as soon as they wrote their pids, and the native
    # launcher can kill them before this test looks (CI saw it); each pid is a sleeper's
    # own $$, so it was a live process of the job's.
    pids = grandchildren(tmp_path / "pids", 2)

    # The exit is recorded only once the launcher killed its whole tree.
    assert wait_exit(process) == 0
    assert [pid for pid in pids if running(pid)] == []


def test_a_kill_leaves_no_detached_descendant(start: Start, tmp_path: Path) -> None:
    process = start(DETACHED + f"exec sleep {NEVER_S:.0f}")
    pids = detached_pids(tmp_path, process)

    process.kill("timed out after 1s")

    assert wait_exit(process) == KILLED_BY_SIGTERM
    assert [pid for pid in pids if running(pid)] == []


def test_the_kill_of_an_adopted_job_reaches_its_detached_descendants(
    start: Start, tmp_path: Path
) -> None:
    # A new engine knows only the launcher's pid and the job's files.
    process = start(DETACHED + f"exec sleep {NEVER_S:.0f}")
    pids = detached_pids(tmp_path, process)
    adopted = RunningProcess.adopt(process.pid, process.log_path, running_for_s=60.0)

    adopted.kill("timed out after 60s")

    assert adopted.recorded_exit() == KILLED_BY_SIGTERM
    assert [pid for pid in pids if running(pid)] == []


def test_a_detached_descendant_that_ignores_sigterm_is_sigkilled(
    start: Start, tmp_path: Path
) -> None:
    process = start(
        'setsid sh -c \'trap "" TERM; echo $$ >> "$OUT/pids"; '
        f"exec sleep {NEVER_S:.0f}' >/dev/null 2>&1 </dev/null & "
        'while [ ! -s "$OUT/pids" ]; do sleep 0.02; done; exit 0'
    )
    [pid] = grandchildren(tmp_path / "pids", 1)
    assert running(pid)

    assert wait_exit(process) == 0
    assert not running(pid)


def test_force_kill_reaches_detached_descendants_that_ignore_sigterm(
    start: Start, tmp_path: Path
) -> None:
    """The engine's SIGKILL at the deadline when the launcher did not finish its own
    stop (its grace is an hour here): the escapees of the job's session, which ignore
    SIGTERM, are found under the launcher (their subreaper) and killed all the same."""
    ignoring = DETACHED.replace("setsid sh -c '", 'setsid sh -c \'trap "" TERM; ')
    process = start(ignoring + f"exec sleep {NEVER_S:.0f}", grace_s=NEVER_S)
    pids = detached_pids(tmp_path, process)

    process.terminate("timed out after 1s", NEVER_S)
    assert process.poll() is None
    assert all(running(pid) for pid in pids)

    assert process.force_kill()

    assert [pid for pid in pids if running(pid)] == []
    assert wait_exit(process) == NO_RECORDED_EXIT
    wait_for(lambda: group_gone(process.pid), "the process group is gone")
