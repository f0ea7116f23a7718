"""``python -m orchestrator.procs.launcher``: the small supervisor between the engine and a job.

The engine starts the launcher in a new session; the launcher starts the job's command
in the same process group, copies its output into the run's log (capped), keeps the last
bytes in a tail file (only when the log does not hold the whole output: capped, a failed
write, lines from before; otherwise the log's end is the tail, decision 0035), and writes
the exit code into an exit file when the command ends.
Because the job never writes into a pipe held by the engine, it survives an engine crash;
the next engine adopts it and, when it ends, reads its exit code and tail from the files.

**Nothing the job started outlives it.** A process group is not enough: Claude Code runs
each Bash tool command in a session of its own, and ``setsid`` or a double fork leaves
any group. So the launcher makes itself the job's *child subreaper*
(``prctl(PR_SET_CHILD_SUBREAPER)``, Linux): whatever the job starts, however it
detaches, is re-parented to the launcher when its parent dies, never to init, and stays
in the launcher's tree. When the command exits, or when the launcher is told to stop
(SIGTERM: the engine's kill, a timeout, a cancelled task, also of an adopted job), it
kills its whole tree with the one tree-kill (:func:`orchestrator.procs.kill.kill_tree`:
every descendant found under its pid in ``/proc``, found again and again: SIGTERM, the
grace period, then SIGKILL until none is left), and only then records the exit (with
no child left at all it has no descendant either, and ``/proc`` is not read). A
SIGKILL of the launcher itself is the one thing it cannot answer: the engine sends it
only after the launcher's own grace (:func:`orchestrator.procs.job.job_stop_grace_s`),
and first SIGKILLs the launcher's tree, which is still the launcher's while it lives.

Standard library and :mod:`orchestrator.procs.proc` / :mod:`~orchestrator.procs.kill`
only (themselves standard library only): it starts fast and cannot fail on an import of
ours that pulls in the rest of the orchestrator.

``launcher.c`` beside this file is the same launcher in C (the same arguments, files and
behaviour, at a sixtieth of the memory); jobs run under it wherever it can be built
(:mod:`orchestrator.procs.native`, decision 0026), and under this one otherwise. A change
of behaviour here is made there too: the tests of ``test_procs_job.py`` run on both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from types import FrameType
from typing import IO

from orchestrator.procs.kill import KILL_GRACE_S, kill_tree

__all__ = ["become_subreaper", "childless", "main", "reap_orphans", "run"]

TAIL_BYTES = 256 * 1024
READ_CHUNK_BYTES = 64 * 1024
USAGE = (
    "usage: python -m orchestrator.procs.launcher LOG TAIL EXIT MAX_BYTES [GRACE_S] -- COMMAND..."
)
# prctl(2) option: orphaned descendants are re-parented to us instead of init.
PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.05
# After the tree is dead, how long the output may take to reach its end.
DRAIN_TIMEOUT_S = 5.0


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def become_subreaper() -> bool:
    """Make orphaned descendants ours (Linux); False where the kernel cannot."""
    try:
        import ctypes  # noqa: PLC0415 - only on the launcher's path

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def reap_orphans(keep: int | None = None) -> None:
    """Collect our exited children except ``keep`` (the job's command: Popen reaps it)."""
    if not hasattr(os, "waitid"):
        return  # not Linux: no subreaper, so no orphan of the job is ours to collect
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == keep:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)


def childless() -> bool:
    """Whether we have no child at all, exited or not (``WNOWAIT`` changes nothing). Then
    we have no descendant either, since every descendant's chain of parents passes
    through a child of ours, and ``/proc`` need not be read: the common end of a job,
    whose command started nothing that outlived it. Our exited orphans are reaped first."""
    if not hasattr(os, "waitid"):
        return False
    reap_orphans()
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


class _Output:
    """Copies the job's output into the log (capped) and keeps its tail, on a thread."""

    def __init__(self, stream: IO[bytes], log: Path, max_bytes: int) -> None:
        self.tail: deque[bytes] = deque()
        self._tail_size = 0
        # Set when the copy ends: whether the log holds all the output and nothing else
        # (so its end is the tail); not with lines from before, the cap, a failed write.
        self.whole = False
        self._stream = stream
        self._log = log
        self._max_bytes = max_bytes
        self.thread = threading.Thread(target=self._copy, name="launcher-output", daemon=True)
        self.thread.start()

    def _copy(self) -> None:
        written = 0
        sink: IO[bytes] | None = None
        try:
            sink = self._log.open("ab")
            whole = sink.tell() == 0
        except OSError:
            whole = False
        while chunk := self._stream.read1(READ_CHUNK_BYTES):  # type: ignore[attr-defined]
            self.tail.append(chunk)
            self._tail_size += len(chunk)
            while self._tail_size - len(self.tail[0]) >= TAIL_BYTES:
                self._tail_size -= len(self.tail.popleft())
            if written >= self._max_bytes or sink is None:
                whole = False
                continue
            room = self._max_bytes - written
            try:
                sink.write(chunk[:room])
                written += min(room, len(chunk))
                if written >= self._max_bytes:
                    whole = False  # the marker is not output
                    sink.write(f"\n[orch: log capped at {self._max_bytes} bytes]\n".encode())
                sink.flush()
            except OSError:
                whole = False  # a full disk loses log lines, never the job
        if sink is not None:
            try:
                sink.close()
            except OSError:
                whole = False
        self.whole = whole

    def tail_bytes(self) -> bytes:
        return b"".join(list(self.tail))


def run(
    log: Path,
    tail_path: Path,
    exit_path: Path,
    max_bytes: int,
    argv: list[str],
    grace_s: float = KILL_GRACE_S,
) -> int:
    stop = threading.Event()

    def on_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    # Not ignored: a handler, so the command gets the default SIGTERM (exec resets
    # handlers, not ignored signals) and we can still record how it ended.
    signal.signal(signal.SIGTERM, on_stop)
    become_subreaper()
    me = os.getpid()
    try:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        message = f"[orch: cannot start {argv[0]!r}: {exc.strerror}]\n".encode()
        log.write_bytes(message)
        _write_atomic(tail_path, message)
        _write_atomic(exit_path, b"127")
        return 127
    assert child.stdout is not None
    output = _Output(child.stdout, log, max_bytes)
    while child.poll() is None and not stop.is_set():
        reap_orphans(keep=child.pid)
        stop.wait(POLL_S)
    # The command ended, or we were told to stop: nothing it started may stay.
    # GRACE_S is the engine's kill_grace_s; the engine's own SIGKILL comes only after it.
    if child.poll() is None or not childless():
        kill_tree(root=me, spare=(me,), grace_s=grace_s, reap=lambda: reap_orphans(keep=child.pid))
    code = child.wait()
    reap_orphans()
    # Every writer of the pipe is dead now, so its end comes at once.
    output.thread.join(DRAIN_TIMEOUT_S)
    if code < 0:
        code = 128 - code  # killed by a signal: the shell's convention
    if not output.whole:  # else the log's end is the tail: a file fewer (decision 0035)
        _write_atomic(tail_path, output.tail_bytes())
    _write_atomic(exit_path, str(code).encode())
    return code


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    grace_s = KILL_GRACE_S
    if len(args) >= 7 and args[4] != "--" and args[5] == "--":
        try:
            grace_s = float(args[4])
        except ValueError:
            print(USAGE, file=sys.stderr)
            return 2
        args = [*args[:4], *args[5:]]
    if len(args) < 6 or args[4] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    log, tail, exit_file, max_bytes = Path(args[0]), Path(args[1]), Path(args[2]), int(args[3])
    return run(log, tail, exit_file, max_bytes, args[5:], grace_s)


if __name__ == "__main__":
    raise SystemExit(main())
