"""The clock seam: what time it is, for the code that judges ages and deadlines.

The lease's ceiling, an instance's staleness and the reaper's overdue jobs are
judgements about time. They ask a :class:`Clock` handed down through the runtime, so a
test moves time forward with :class:`~orchestrator.testing.clock.FakeClock` instead of
sleeping through it. Production code gets :data:`SYSTEM_CLOCK`.
"""

from __future__ import annotations

import time
from typing import Final, Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (comparable with the store's timestamps)."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:
        return time.time()


SYSTEM_CLOCK: Final[Clock] = SystemClock()
