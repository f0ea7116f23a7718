"""Reading a run's log: its last lines under a byte cap, then what is written after.

The launcher (:mod:`orchestrator.procs.launcher`) appends a job's output to the file recorded
in ``agent_runs.log_path``; ``orch task logs`` (``--follow``) and ``GET
/tasks/{id}/logs`` (``?follow=1``) read it here, and only through a recorded
:class:`~orchestrator.store.AgentRun`: no path ever comes from a user. The file is
opened without following a symbolic link and must be a regular file, so a log replaced
by a link (the agent runs as the same user) does not show another file.

Whoever shows a log masks it first (:func:`masked_log`): orch's own secret values and
URL passwords become ``***``, for the CLI and the API alike.

File I/O only; no database, no clock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from orchestrator.errors import NotFoundError
from orchestrator.redact import mask_text
from orchestrator.store import ACTIVE_JOB_STATUSES, AgentRun, Store

__all__ = [
    "LOG_READ_MAX_BYTES",
    "LogFollower",
    "LogSlice",
    "UnreadableLogError",
    "masked_log",
    "read_log",
    "run_ended",
]

# The most of one log a read hands out (the tail of a bigger log).
LOG_READ_MAX_BYTES: Final = 1024 * 1024


class UnreadableLogError(NotFoundError):
    """The recorded log path is not a regular file (a link, a directory, a device)."""


@dataclass(frozen=True)
class LogSlice:
    """Part of a log: its text, where in the file it ends, and whether the start was cut."""

    text: str
    end: int
    cut: bool


def _open(path: Path) -> int | None:
    """A read descriptor of ``path``; None when it does not exist (yet, or any more)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableLogError(f"the log {path.name} is a symbolic link; not shown") from exc
        raise UnreadableLogError(f"cannot read the log {path.name}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnreadableLogError(f"the log {path.name} is not a regular file; not shown")
    return fd


def _read(fd: int, start: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, start)
        if not chunk:
            break
        chunks.append(chunk)
        start += len(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_log(
    path: Path,
    *,
    lines: int | None = None,
    max_bytes: int = LOG_READ_MAX_BYTES,
    whole_lines: bool = False,
) -> LogSlice:
    """The end of the log at ``path``: at most ``max_bytes``, and of those the last
    ``lines`` lines if given. ``whole_lines`` stops at the last newline (a follower goes
    on from :attr:`LogSlice.end` and gets the unfinished line later). A missing file is
    an empty log."""
    fd = _open(path)
    if fd is None:
        return LogSlice("", 0, cut=False)
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - max_bytes)
        data = _read(fd, start, size - start)
    finally:
        os.close(fd)
    end = start + len(data)
    cut = start > 0
    if cut:
        # Begin at a line start: half a line (or half a character) is noise.
        newline = data.find(b"\n")
        data = data[newline + 1 :] if newline >= 0 else b""
    if whole_lines:
        last = data.rfind(b"\n")
        kept = data[: last + 1] if last >= 0 else b""
        end -= len(data) - len(kept)
        data = kept
    if lines is not None:
        parts = data.splitlines(keepends=True)
        if len(parts) > lines:
            cut = True
            data = b"".join(parts[len(parts) - lines :]) if lines else b""
    return LogSlice(data.decode("utf-8", errors="replace"), end, cut)


class LogFollower:
    """What is appended to a log after ``offset``, whole lines at a time."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset

    def read_new(self, *, final: bool = False, max_bytes: int = LOG_READ_MAX_BYTES) -> str:
        """The whole lines written since the last call (and, when ``final``, the
        unfinished last line too); at most ``max_bytes`` a call."""
        fd = _open(self.path)
        if fd is None:
            return ""
        try:
            size = os.fstat(fd).st_size
            if size < self.offset:
                self.offset = 0  # the file was replaced (removed and written again)
            data = _read(fd, self.offset, min(size - self.offset, max_bytes))
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        if not final and len(data) < max_bytes:
            last = data.rfind(b"\n")
            data = data[: last + 1] if last >= 0 else b""
        self.offset += len(data)
        return data.decode("utf-8", errors="replace")


def masked_log(text: str, secrets: frozenset[str]) -> str:
    """``text`` of a log fit to show: orch's secret values and URL passwords masked."""
    return mask_text(text, secrets)


def run_ended(store: Store, run: AgentRun) -> bool:
    """Whether ``run`` is over: its exit recorded, or its job no longer running."""
    current = store.agent_run(run.id)
    if current is None or current.exit_recorded_at is not None:
        return True
    return store.get_job(current.job_id).status not in ACTIVE_JOB_STATUSES
