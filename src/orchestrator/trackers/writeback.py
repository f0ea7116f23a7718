"""Write-back: after each stage outcome, a comment and a state on the task's tracker.

:class:`TrackerNotifier` is a :class:`~orchestrator.notifier.Notifier`, composed with
the others (the console, the Telegram outbox) by the wiring. For a task that came from
a tracker (its origin, see :func:`~orchestrator.trackers.base.task_origin`) each new
outcome — a stage change, a retry, a failure, each a new ``version`` of the task — gets
one comment and the tracker state mapped from the stage. A job merely starting is no
outcome. The comment's idempotency key (``orch:<work item>:v<version>:<stage>:ok|failed``)
makes a repeated call (a restart, a retry) a no-op on the tracker's side.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.kernel.stages import stage_label
from orchestrator.store import Store, Task
from orchestrator.trackers.base import Tracker, task_origin

__all__ = ["TrackerNotifier", "outcome_key", "outcome_text"]


def outcome_key(task: Task) -> str:
    """The idempotency key of the task's current outcome."""
    state = "failed" if task.failed else "ok"
    return f"orch:{task.work_item}:v{task.version}:{task.stage}:{state}"


def outcome_text(task: Task, summary: str, language: str = "en") -> str:
    """The comment for the task's current outcome."""
    label = stage_label(task.stage, language)
    if task.failed:
        return f"{task.work_item} failed at {label}: {task.failed_reason}\n({summary})"
    return f"{task.work_item} is now at {label}\n({summary})"


class TrackerNotifier:
    """Writes each new outcome of a tracker's task back to that tracker."""

    def __init__(
        self, store: Store, trackers: Mapping[str, Tracker], *, language: str = "en"
    ) -> None:
        self.store = store
        self.trackers = dict(trackers)
        self.language = language
        self._written: dict[int, str] = {}  # task id -> key of the last outcome written

    def on_task_changed(self, task: Task, summary: str) -> None:
        key = outcome_key(task)
        if self._written.get(task.id) == key:
            return
        origin = task_origin(self.store, task)
        if origin is None:
            return
        tracker = self.trackers.get(str(origin.get("tracker")))
        if tracker is None:
            return
        tracker.comment(origin, outcome_text(task, summary, self.language), key=key)
        tracker.set_state(origin, task.stage)
        self._written[task.id] = key

    def alert(self, task: Task | None, message: str) -> None:
        """Alerts are for the operators' chat, not the tracker."""
