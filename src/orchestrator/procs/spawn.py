"""The one spawner: every child we may have to stop starts in a session of its own.

A new session (``start_new_session=True``) makes the child the leader of a new process
group, so :func:`orchestrator.procs.kill.kill_tree` can stop it and everything it
starts by the group's id, even after the leader exited. Its output goes to a file (a
log, or an unlinked temporary file), never to a pipe we would have to drain: a child
that outlives us (a job, a deploy) must not die of SIGPIPE at its next line. A prompt
(``stdin``, a ``str``) is written on a thread, so a prompt larger than the pipe buffer
never blocks the caller, and the pipe is closed when the child stops reading.

The launcher (:mod:`orchestrator.procs.launcher`) and the hooks wrapper start their
command *in* their own group on purpose (it is the job), with a plain ``Popen``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = ["PIPE", "spawn"]

# ``stdin=PIPE``: the caller writes the child's stdin itself (the deploy's spawn gate).
PIPE = subprocess.PIPE


def _feed(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
    except OSError:
        pass  # the child stopped reading (exited, or does not want a prompt on stdin)
    finally:
        with contextlib.suppress(OSError):
            stream.close()


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    output: IO[bytes] | None = None,
    stdin: str | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session; raises OSError if it cannot start.

    ``output``: a file for stdout and stderr merged (None: ``/dev/null``). ``stdin``: a
    text fed on a thread, :data:`PIPE` for the caller to write, None for ``/dev/null``.
    """
    popen = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.DEVNULL if output is None else output,
        stderr=subprocess.DEVNULL if output is None else subprocess.STDOUT,
        start_new_session=True,
    )
    if isinstance(stdin, str) and popen.stdin is not None:
        data = _write_now(popen.stdin, stdin.encode())
        if data:
            threading.Thread(target=_feed, args=(popen.stdin, data), daemon=True).start()
    return popen


def _write_now(stream: IO[bytes], data: bytes) -> bytes:
    """Write what the pipe takes without waiting; what is left for :func:`_feed` (the
    usual prompt fits in the pipe's buffer: no thread, and the pipe is closed here)."""
    fd = stream.fileno()
    os.set_blocking(fd, False)
    try:
        written = os.write(fd, data) if data else 0
    except BlockingIOError:
        written = 0
    except OSError:
        written = len(data)  # the child stopped reading already: nothing more to send
    finally:
        os.set_blocking(fd, True)
    if written < len(data):
        return data[written:]
    with contextlib.suppress(OSError):
        stream.close()
    return b""
