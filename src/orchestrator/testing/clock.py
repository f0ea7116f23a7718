"""A clock a test moves forward instead of sleeping (see :mod:`orchestrator.clock`)."""

from __future__ import annotations

import threading
import time

__all__ = ["FakeClock"]


class FakeClock:
    """The wall clock plus the time a test has skipped with :meth:`advance`.

    It never stands still and never runs behind the real clock, so the rows that code
    on the real clock writes (a job's start, a recorded exit, a heartbeat) stay in the
    past of whoever reads them with this clock; skipping ahead needs no sleep.
    """

    def __init__(self) -> None:
        self._skipped = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return time.time() + self._skipped

    def advance(self, seconds: float) -> float:
        """Skip ``seconds`` ahead; the new time."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} s)")
        with self._lock:
            self._skipped += seconds
            return time.time() + self._skipped
