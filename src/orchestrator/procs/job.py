"""A job (an agent or a runner) under the launcher: its process group, files and exit.

:func:`spawn_job` starts the launcher in a new session with the job's command: the
native one (``launcher.c``, built on first use by :mod:`orchestrator.procs.native`) or
the Python one (:mod:`orchestrator.procs.launcher`), alike in arguments, files and
behaviour (decision 0026). The launcher is the job's child subreaper, so whatever
the job starts, in whatever session or group, stays in its tree, and it kills that tree
when the command ends or when it gets SIGTERM. It copies the output into the run's log
up to a size cap, keeps the last bytes in a tail file when the log does not hold them
(the result line an agent prints at the end is never lost to the cap; decision 0035)
and records the exit code in a file: a job outlives
an engine crash and the next engine adopts it (:meth:`RunningProcess.adopt`).

Stopping a job is the one tree-kill (:mod:`orchestrator.procs.kill`) on the launcher's
group and tree, in two layers: the SIGTERM reaches the launcher, which kills the job's
tree after ``kill_grace_s`` (passed to it) and records the exit; only if the launcher
has not finished :data:`LAUNCHER_MARGIN_S` later is whatever is left SIGKILLed from
outside (:func:`job_stop_grace_s`). The engine never waits that out:
:meth:`RunningProcess.terminate` sends the SIGTERM and returns the deadline,
:meth:`RunningProcess.force_kill` is the SIGKILL the engine's watch pass sends at it;
:meth:`RunningProcess.kill` (shutdown, the reaper) does both and waits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from orchestrator.procs import kill
from orchestrator.procs.kill import KILL_GRACE_S
from orchestrator.procs.launcher import TAIL_BYTES
from orchestrator.procs.native import Launcher, launcher_argv
from orchestrator.procs.proc import pid_alive
from orchestrator.procs.spawn import spawn

__all__ = [
    "LAUNCHER_MARGIN_S",
    "TAIL_BYTES",
    "RunningProcess",
    "job_stop_grace_s",
    "kill_job",
    "spawn_job",
]

# After the launcher's own grace, the time it may take to kill its tree and record the
# exit before what is left of it is SIGKILLed from outside. Not a second grace: the
# job's processes got theirs from the launcher.
LAUNCHER_MARGIN_S: Final = 2.0


def job_stop_grace_s(kill_grace_s: float = KILL_GRACE_S) -> float:
    """From the SIGTERM to a job until the SIGKILL of what is left of it from outside."""
    return kill_grace_s + LAUNCHER_MARGIN_S


def kill_job(pid: int, grace_s: float, reap: kill.Reap | None = None) -> bool:
    """Tree-kill the job whose launcher is ``pid`` (its group and every descendant);
    waits up to ``grace_s``. Whether anything of it was running."""
    return kill.kill_tree(group=pid, root=pid, grace_s=grace_s, reap=reap)


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
        elif pid_alive(self.pid):
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
        """The last output of the job: the tail file where the launcher wrote one (the
        log was capped or is not whole), else the end of the log, which then holds the
        whole output (and is all there is while the job runs)."""
        for path in (self.tail_path, self.log_path):
            try:
                with path.open("rb") as handle:
                    handle.seek(0, os.SEEK_END)
                    handle.seek(max(0, handle.tell() - TAIL_BYTES))
                    return handle.read().decode("utf-8", errors="replace")
            except OSError:
                continue
        return ""

    def _reap(self) -> object:
        # Our own exited launcher is a zombie until reaped; reaping lets its pid go.
        return self.popen.poll() if self.popen is not None else None

    def kill(self, reason: str, grace_s: float | None = None) -> None:
        """Tree-kill the job, remembering why; waits up to ``grace_s`` (default
        :func:`job_stop_grace_s`)."""
        self.killed_reason = reason
        kill_job(self.pid, job_stop_grace_s() if grace_s is None else grace_s, self._reap)
        if self.popen is not None:
            self.popen.wait()

    def terminate(self, reason: str, grace_s: float | None = None) -> float:
        """SIGTERM the job's tree without waiting, remembering why; returns the
        monotonic deadline after which :meth:`force_kill` is due."""
        self.killed_reason = reason
        kill.terminate(group=self.pid, root=self.pid)
        return time.monotonic() + (job_stop_grace_s() if grace_s is None else grace_s)

    def force_kill(self) -> bool:
        """SIGKILL whatever of the job's tree outlived its grace; True if anything had."""
        found = kill.force_kill(group=self.pid, root=self.pid, reap=self._reap)
        if found and self.popen is not None:
            self.popen.wait()
        return found


def spawn_job(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    max_log_bytes: int,
    stdin_text: str | None = None,
    wrapper: Sequence[str] = (),
    grace_s: float = KILL_GRACE_S,
    launcher: Launcher = "native",
) -> RunningProcess:
    """Start ``argv`` under the launcher in a new session; OSError if it cannot start.

    ``wrapper`` goes between the launcher and ``argv`` (the workspace hooks, which then
    exec ``argv``); ``argv[0]`` must exist all the same. ``grace_s`` is the launcher's
    grace when it stops the job's tree (the ``kill_grace_s`` setting); ``launcher``
    which launcher (the ``launcher`` setting; ``native`` falls back to ``python`` where
    it cannot be built).

    The launcher writes ``<log>.exit`` next to the log, and ``<log>.tail`` when the log
    does not hold the whole output, so the job's outcome is known even to an engine that
    did not start it (:meth:`RunningProcess.tail_text`).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (log_path.with_suffix(".tail"), log_path.with_suffix(".exit")):
        stale.unlink(missing_ok=True)
    program = argv[0]
    if os.sep in program:
        found = (cwd / program).exists()  # an absolute path stays absolute
    else:
        found = shutil.which(program, path=env.get("PATH")) is not None
    if not found:
        raise FileNotFoundError(2, "No such file or directory", program)
    command = [
        *launcher_argv(launcher),
        str(log_path),
        str(log_path.with_suffix(".tail")),
        str(log_path.with_suffix(".exit")),
        str(max_log_bytes),
        f"{grace_s:g}",
        "--",
        *wrapper,
        *argv,
    ]
    popen = spawn(command, cwd=cwd, env=env, stdin=stdin_text)
    return RunningProcess(popen.pid, log_path, popen)
