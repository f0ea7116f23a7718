"""The tracker interface: where work items come from and where outcomes go back.

A tracker (Plane, GitHub issues, or none: ``local``) meets the pipeline three ways:

* **intake** — a new work item becomes a task (a signed webhook, see
  :mod:`orchestrator.webhooks.events`); the task remembers its **origin** (which issue
  in which project) in its ``origin`` column, written with the task;
* **write back** — after each stage outcome, a comment on the issue and the issue's
  state mapped from our stage (``tracker_states`` over the adapter's defaults), both
  through :class:`Tracker`;
* **inbound changes** — the issue cancelled cancels the task; reopened rolls it back.

Every failed call raises :class:`~orchestrator.errors.IntegrationError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from orchestrator.store import Task

__all__ = ["Origin", "Tracker", "state_for", "task_origin"]

# Where a task's work item lives in its tracker: {"tracker": "plane", ...}.
Origin = Mapping[str, Any]


class Tracker(Protocol):
    """Writes back to the tracker a task came from."""

    name: str

    def comment(self, origin: Origin, body: str, *, key: str) -> None:
        """Comment on the work item, once per ``key``."""

    def set_state(self, origin: Origin, stage: str) -> None:
        """Move the work item to the state mapped from ``stage`` (nothing if unmapped)."""


def state_for(stage: str, configured: Mapping[str, str], defaults: Mapping[str, str]) -> str | None:
    """The tracker state for ``stage``: the configured mapping over the adapter's."""
    return configured.get(stage) or defaults.get(stage)


def task_origin(task: Task) -> dict[str, Any] | None:
    """The origin recorded when ``task`` was created, if it came from a tracker."""
    return dict(task.origin) if task.origin else None
