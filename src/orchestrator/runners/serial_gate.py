"""The serial gate: a named lock, so one test run per shared resource runs at a time.

Two tasks of a repository whose tests use one database (or port, or device) must not
run their tests at once. Each names the resource in ``serial_gate``; the test runner
holds an exclusive ``fcntl.flock`` on ``<data_dir>/locks/<name>.lock`` from its setup to
the end of its smoke. The kernel releases the lock when the holder dies, however it
dies, so a crashed runner never leaves the gate shut.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

__all__ = ["SerialGateBusyError", "lock_path", "serial_gate"]

POLL_S: Final = 0.05
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")


class SerialGateBusyError(Exception):
    """The gate stayed shut for the whole wait; the message names who holds it."""


def lock_path(lock_dir: Path, name: str) -> Path:
    """The lock file of gate ``name``: a file name made safe, under ``lock_dir``."""
    safe = _UNSAFE.sub("_", name).strip("._") or "gate"
    return lock_dir / f"{safe}.lock"


@contextmanager
def serial_gate(lock_dir: Path, name: str, *, timeout_s: float, holder: str) -> Iterator[float]:
    """Hold gate ``name`` for the ``with`` block; yields the seconds spent waiting.

    Raises :class:`SerialGateBusyError` if the gate is not free within ``timeout_s``.
    """
    path = lock_path(lock_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - started >= timeout_s:
                    current = path.read_text(encoding="utf-8", errors="replace").strip()
                    raise SerialGateBusyError(
                        f"serial gate '{name}' stayed shut for {timeout_s:.0f}s "
                        f"(held by {current or 'an unknown holder'})"
                    ) from None
                time.sleep(POLL_S)
        waited = time.monotonic() - started
        # Who holds it, for the message of whoever waits next (the lock is the flock).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder}, pid {os.getpid()}\n".encode(), 0)
        try:
            yield waited
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
