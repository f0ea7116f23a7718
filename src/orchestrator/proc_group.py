"""Child processes in their own process group, with a capped log and a tree-kill.

Every job runs in a new session (``start_new_session=True``) led by the launcher
(:mod:`orchestrator.launcher`), which is the job's child subreaper: whatever the job
starts, in whatever session or group, stays in the launcher's process tree, and the
launcher kills that whole tree when the job's command ends or when it gets SIGTERM.
Stopping a job is SIGTERM to its group (the command and the launcher), a grace period
(``kill_grace_s``, passed to the launcher) in which the launcher kills the tree and
records the exit, then, only if the launcher did not finish, SIGKILL to every process
under it (:func:`~orchestrator.launcher.kill_tree`) and to the group: no grandchild
survives, detached or not. The engine never waits that grace out:
:meth:`RunningProcess.terminate` sends the SIGTERM and returns the deadline of the
SIGKILL, which the engine's watch pass sends with :meth:`RunningProcess.force_kill`;
:meth:`RunningProcess.kill` (shutdown, the reaper) does both and waits. The launcher copies the
output (stdout and stderr merged) into the run's log up to a size cap and keeps the last
bytes in a tail file, so the result line an agent prints at the end (Claude Code's JSON)
is never lost to the cap, and records the exit code in a file: a job outlives an engine
crash and the next engine can adopt it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Final

from orchestrator.launcher import STOP_GRACE_S, kill_tree

__all__ = ["KILL_GRACE_S", "LAUNCHER_MARGIN_S", "RunningProcess", "kill_group", "spawn"]

# After the launcher's own grace, the time it may take to kill its tree and record the
# exit before its group is SIGKILLed from outside.
LAUNCHER_MARGIN_S: Final = 2.0
KILL_GRACE_S: Final = STOP_GRACE_S + LAUNCHER_MARGIN_S
TAIL_BYTES: Final = 256 * 1024


def kill_group(
    pid: int, grace_s: float = KILL_GRACE_S, reap: Callable[[], object] | None = None
) -> None:
    """SIGTERM the process group of ``pid``, wait ``grace_s``, then SIGKILL every
    process under ``pid`` and the group.

    ``reap`` collects our own exited child meanwhile: an unreaped zombie still belongs
    to the group and would make the wait last the whole grace period.
    """
    pgid = _terminate_group(pid)
    if pgid is None:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not _group_has_live_members(pgid):
            return
        time.sleep(0.05)
    _force_kill_group(pid, pgid)


def _terminate_group(pid: int) -> int | None:
    """SIGTERM the process group of ``pid``; its pgid, None if it is gone."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    return pgid


def _force_kill_group(pid: int, pgid: int) -> None:
    # The launcher did not finish its own stop in time. Freeze the group (the launcher
    # stays the parent of the orphans and does nothing more), SIGKILL everything under
    # it (after its death they would belong to init), then the group itself.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGSTOP)
    kill_tree(pid, grace_s=0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class RunningProcess:
    """A job's process group, led by the launcher: its pid, its files, its exit."""

    def __init__(
        self,
        pid: int,
        log_path: Path,
        popen: subprocess.Popen[bytes] | None = None,
        started_monotonic: float | None = None,
    ) -> None:
        self.pid = pid
        self.popen = popen
        self.log_path = log_path
        self.tail_path = log_path.with_suffix(".tail")
        self.exit_path = log_path.with_suffix(".exit")
        self.started_monotonic = started_monotonic or time.monotonic()
        self.killed_reason: str | None = None
        self._pgid: int | None = None

    @classmethod
    def adopt(cls, pid: int, log_path: Path, running_for_s: float) -> RunningProcess:
        """Watch a job started by an earlier engine (not our child: no wait status)."""
        return cls(pid, log_path, None, time.monotonic() - running_for_s)

    def poll(self) -> int | None:
        """The job's exit code once it ended; -1 if it ended without recording one."""
        if self.popen is not None:
            code = self.popen.poll()
            if code is None:
                return None
        elif _alive(self.pid):
            return None
        return self.recorded_exit()

    def recorded_exit(self) -> int:
        try:
            return int(self.exit_path.read_text().strip())
        except (OSError, ValueError):
            return -1  # killed hard (SIGKILL) before the launcher could record it

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    def tail_text(self) -> str:
        """The last output of the job (the tail file, else the end of the log)."""
        for path in (self.tail_path, self.log_path):
            try:
                with path.open("rb") as handle:
                    handle.seek(0, os.SEEK_END)
                    handle.seek(max(0, handle.tell() - TAIL_BYTES))
                    return handle.read().decode("utf-8", errors="replace")
            except OSError:
                continue
        return ""

    def kill(self, reason: str, grace_s: float = KILL_GRACE_S) -> None:
        """Tree-kill the job's process group, remembering why; waits out the grace."""
        self.killed_reason = reason
        kill_group(self.pid, grace_s, reap=self.popen.poll if self.popen is not None else None)
        if self.popen is not None:
            self.popen.wait()

    def terminate(self, reason: str, grace_s: float = KILL_GRACE_S) -> float:
        """SIGTERM the job's group without waiting, remembering why; returns the
        monotonic deadline after which :meth:`force_kill` is due."""
        self.killed_reason = reason
        self._pgid = _terminate_group(self.pid)
        return time.monotonic() + grace_s

    def force_kill(self) -> bool:
        """SIGKILL whatever of the job's tree outlived its grace; True if anything had."""
        if self.popen is not None:
            self.popen.poll()  # an exited launcher is not a live member
        pgid = self._pgid
        if pgid is None:
            try:
                pgid = os.getpgid(self.pid)
            except ProcessLookupError:
                return False
        if not _group_has_live_members(pgid):
            return False
        _force_kill_group(self.pid, pgid)
        if self.popen is not None:
            self.popen.wait()
        return True


def _group_has_live_members(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count: an
    orphaned grandchild waits for PID 1 to reap it, which may take seconds or never)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def _feed(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
    except OSError:
        pass  # the job stopped reading (exited, or does not want a prompt on stdin)
    finally:
        with contextlib.suppress(OSError):
            stream.close()


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    max_log_bytes: int,
    stdin_text: str | None = None,
    wrapper: Sequence[str] = (),
    grace_s: float = STOP_GRACE_S,
) -> RunningProcess:
    """Start ``argv`` under the launcher in a new session; OSError if it cannot start.

    ``wrapper`` goes between the launcher and ``argv`` (the workspace hooks, which then
    exec ``argv``); ``argv[0]`` must exist all the same.

    The launcher writes ``<log>.tail`` and ``<log>.exit`` next to the log, so the job's
    outcome is known even to an engine that did not start it.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (log_path.with_suffix(".tail"), log_path.with_suffix(".exit")):
        stale.unlink(missing_ok=True)
    launcher = [
        sys.executable,
        "-m",
        "orchestrator.launcher",
        str(log_path),
        str(log_path.with_suffix(".tail")),
        str(log_path.with_suffix(".exit")),
        str(max_log_bytes),
        f"{grace_s:g}",
        "--",
        *wrapper,
        *argv,
    ]
    program = argv[0]
    if os.sep in program:
        found = (cwd / program).exists()  # an absolute path stays absolute
    else:
        found = shutil.which(program, path=env.get("PATH")) is not None
    if not found:
        raise FileNotFoundError(2, "No such file or directory", program)
    popen = subprocess.Popen(
        launcher,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    if stdin_text is not None and popen.stdin is not None:
        # A thread, so a prompt larger than the pipe buffer never blocks the engine.
        threading.Thread(target=_feed, args=(popen.stdin, stdin_text.encode()), daemon=True).start()
    return RunningProcess(popen.pid, log_path, popen)
