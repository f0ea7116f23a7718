"""The commands a runner starts: each in its own session, with a timeout and a tree-kill.

A runner is itself a job in its own process group; the commands it runs (setup, tests,
a staging service, the hybrid explainer) get their own sessions, so that a timeout can
kill one command's whole tree without killing the runner. They start through the one
spawner (:mod:`orchestrator.procs.spawn`) and stop with the one tree-kill
(:mod:`orchestrator.procs.kill`: SIGTERM to the group, the grace, SIGKILL), applied by
group id. Two things keep a grandchild from outliving its command:

* after the command exits (or is timed out) its group is killed by id
  (:func:`kill_session`), so a daemon a test left in the background dies too;
* :func:`install_termination_handler`: when the engine tree-kills the runner (its own
  timeout, a cancelled task), the runner first kills the sessions it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

from orchestrator.procs.kill import KILL_GRACE_S, force_kill, kill_tree
from orchestrator.procs.spawn import spawn
from orchestrator.text_input import strip_terminal_escapes

__all__ = [
    "CommandResult",
    "install_termination_handler",
    "kill_session",
    "run_command",
    "start_command",
    "stop_command",
]

# Output kept in memory for the report's log tail.
TAIL_BYTES: Final = 64 * 1024
# Sessions this process started and has not yet stopped: the SIGTERM handler kills them.
_ACTIVE_SESSIONS: set[int] = set()


def kill_session(leader_pid: int, grace_s: float = KILL_GRACE_S) -> bool:
    """The one tree-kill on the group of a session leader we started, by its id.

    Works after the leader has exited and been reaped (when ``os.getpgid`` can no
    longer find the group). Returns whether anything of the group was still running.
    """
    return kill_tree(group=leader_pid, grace_s=grace_s)


def _on_terminate(signum: int, _frame: FrameType | None) -> None:
    # The launcher's grace for the runner is running: no grace of our own, the SIGKILL.
    for pgid in list(_ACTIVE_SESSIONS):
        force_kill(group=pgid)
    raise SystemExit(128 + signum)


def install_termination_handler() -> None:
    """On SIGTERM / SIGINT, kill the sessions this runner started, then exit."""
    signal.signal(signal.SIGTERM, _on_terminate)
    signal.signal(signal.SIGINT, _on_terminate)


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: an exit code, a timeout, or a failure to start."""

    argv: tuple[str, ...]
    exit_code: int | None
    duration_s: float
    output_tail: str
    log_path: Path
    timed_out: bool = False
    start_error: str | None = None
    # Whether anything of its group was still running after it ended (and was killed).
    left_running: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.start_error is None

    def describe(self) -> str:
        """One phrase: how the command ended."""
        if self.start_error is not None:
            return f"could not start: {self.start_error}"
        if self.timed_out:
            return f"timed out after {self.duration_s:.0f}s (its process group was killed)"
        return f"exited {self.exit_code} after {self.duration_s:.1f}s"


def start_command(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session, output to ``log_path``; raises OSError."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        popen = spawn(argv, cwd=cwd, env=env, output=log)
    _ACTIVE_SESSIONS.add(popen.pid)
    return popen


def stop_command(popen: subprocess.Popen[bytes], grace_s: float = KILL_GRACE_S) -> bool:
    """Tree-kill a command started by :func:`start_command` and reap it.

    Returns whether anything of its group was still running.
    """
    alive = popen.poll() is None
    left = kill_session(popen.pid, grace_s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=grace_s)
    _ACTIVE_SESSIONS.discard(popen.pid)
    return alive or left


def _tail(path: Path, max_bytes: int = TAIL_BYTES) -> str:
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    return strip_terminal_escapes(data.decode("utf-8", errors="replace"))


def run_command(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float,
    log_path: Path,
    stdin_text: str | None = None,
) -> CommandResult:
    """Run ``argv`` to its end or its timeout; never raises for the command's sake."""
    started = time.monotonic()
    argv = tuple(argv)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log_path.open("wb") as log:
            popen = spawn(argv, cwd=cwd, env=env, output=log, stdin=stdin_text)
    except OSError as exc:
        reason = f"{argv[0] if argv else '(empty command)'}: {exc.strerror or exc}"
        return CommandResult(argv, None, 0.0, "", log_path, start_error=reason)
    _ACTIVE_SESSIONS.add(popen.pid)
    timed_out = False
    try:
        try:
            popen.wait(timeout=max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_session(popen.pid)
            popen.wait()
    finally:
        left = kill_session(popen.pid)
        _ACTIVE_SESSIONS.discard(popen.pid)
    return CommandResult(
        argv,
        None if timed_out else popen.returncode,
        time.monotonic() - started,
        _tail(log_path),
        log_path,
        timed_out=timed_out,
        left_running=left,
    )
