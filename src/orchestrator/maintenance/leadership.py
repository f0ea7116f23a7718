"""Who runs the maintenance that must run once: one instance per database.

Theory of operation
-------------------
Several ``orch serve`` instances may share one PostgreSQL database; on SQLite there is
exactly one (decision 0027).

* **SQLite is single-instance.** :func:`hold_single_instance` takes an exclusive
  ``flock`` on a lock file beside the database (``<database>.lock``) and keeps it for
  the life of the process. A second ``orch serve`` on the same file finds it taken and
  is refused with one line naming the holder's pid. The operating system drops the lock
  when the holder dies however it dies (SIGKILL included), so a restart after a crash is
  never refused; the descriptor is not inherited (Python opens it close-on-exec), so a
  job that outlives its server does not keep the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from orchestrator.errors import ConflictError
from orchestrator.store import sqlite_path

__all__ = ["LOCK_SUFFIX", "SingleInstanceLock", "hold_single_instance"]

# The lock file sits beside the database: ``orch.db`` -> ``orch.db.lock``.
LOCK_SUFFIX: Final = ".lock"


@dataclass
class SingleInstanceLock:
    """The held lock: released when :meth:`release` is called or the process ends."""

    path: Path
    file: IO[str]

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def hold_single_instance(database_url: str) -> SingleInstanceLock | None:
    """Take the single-instance lock of a SQLite database; None for PostgreSQL (where
    several instances are supported). Raises :class:`ConflictError` when another
    process holds it."""
    database = sqlite_path(database_url)
    if database is None:
        return None
    path = database.with_name(database.name + LOCK_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    # "a+": never truncate before we hold the lock (the holder's pid is in the file).
    file = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "?"
        file.close()
        raise ConflictError(
            f"another orch serve (pid {holder}) already runs on SQLite {database}; SQLite is "
            "single-instance: stop that one first, or use PostgreSQL to run several"
        ) from None
    file.seek(0)
    file.truncate()
    file.write(f"{os.getpid()}\n")
    file.flush()
    return SingleInstanceLock(path, file)
