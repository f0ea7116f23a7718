"""The local tracker (the default): tasks come from the CLI and the API; nothing to
write back to but the task's own events trail."""

from __future__ import annotations

from orchestrator.trackers.base import Origin

__all__ = ["LocalTracker"]


class LocalTracker:
    name = "local"

    def comment(self, origin: Origin, body: str, *, key: str) -> None:
        pass

    def set_state(self, origin: Origin, stage: str) -> None:
        pass
