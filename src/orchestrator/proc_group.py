"""Child processes in their own process group, with a capped log and a tree-kill.

Every job runs in a new session (``start_new_session=True``), so stopping it is
SIGTERM to the whole group, a grace period, then SIGKILL to the group: no grandchild
survives. Output (stdout and stderr merged) is copied by a reader thread into the run's
log file up to a size cap; the last bytes are also kept in memory so the result line an
agent prints at the end (Claude Code's JSON) is never lost to the cap.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Final

__all__ = ["KILL_GRACE_S", "RunningProcess", "kill_group", "spawn"]

KILL_GRACE_S: Final = 5.0
TAIL_BYTES: Final = 256 * 1024
READ_CHUNK_BYTES: Final = 64 * 1024


def kill_group(pid: int, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group of ``pid``, wait ``grace_s``, then SIGKILL it."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class RunningProcess:
    """A spawned child: its pid, its log, and whether it has exited."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path, max_log_bytes: int) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        self.started_monotonic = time.monotonic()
        self.killed_reason: str | None = None
        self._max_log_bytes = max_log_bytes
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._reader = threading.Thread(
            target=self._copy_output, name=f"log-reader-{popen.pid}", daemon=True
        )
        self._reader.start()

    def _copy_output(self) -> None:
        stream = self.popen.stdout
        assert isinstance(stream, io.BufferedReader)
        written = 0
        with self.log_path.open("ab") as log:
            while chunk := stream.read1(READ_CHUNK_BYTES):
                self._remember(chunk)
                if written < self._max_log_bytes:
                    room = self._max_log_bytes - written
                    log.write(chunk[:room])
                    written += min(room, len(chunk))
                    if written >= self._max_log_bytes:
                        log.write(f"\n[orch: log capped at {self._max_log_bytes} bytes]\n".encode())
                    log.flush()
        stream.close()

    def _remember(self, chunk: bytes) -> None:
        self._tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size - len(self._tail[0]) >= TAIL_BYTES:
            self._tail_size -= len(self._tail.popleft())

    def poll(self) -> int | None:
        """The exit code once the child and its output are done, else None."""
        code = self.popen.poll()
        if code is None:
            return None
        self._reader.join(timeout=5)
        return code

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    def tail_text(self) -> str:
        return b"".join(self._tail).decode("utf-8", errors="replace")

    def kill(self, reason: str) -> None:
        """Tree-kill the child's process group, remembering why."""
        self.killed_reason = reason
        kill_group(self.pid)


def _feed(stream: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        stream.write(data)
        stream.close()


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    max_log_bytes: int,
    stdin_text: str | None = None,
) -> RunningProcess:
    """Start ``argv`` in its own session; raises OSError if it cannot start."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stdin: int | IO[bytes] = subprocess.DEVNULL
    if stdin_text is not None:
        stdin = subprocess.PIPE
    popen = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    if stdin_text is not None and popen.stdin is not None:
        # A thread, so a prompt larger than the pipe buffer never blocks the engine.
        threading.Thread(target=_feed, args=(popen.stdin, stdin_text.encode()), daemon=True).start()
    return RunningProcess(popen, log_path, max_log_bytes)
