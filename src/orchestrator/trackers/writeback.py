"""Write-back: after each stage outcome, a comment and a state on the task's tracker,
through the durable outbox.

:class:`TrackerNotifier` is a :class:`~orchestrator.outbox.notifier.Notifier`, composed with
the others (the console, the Telegram outbox) by :mod:`orchestrator.integrations`. For a
task that came from a tracker (its origin, see
:func:`~orchestrator.trackers.base.task_origin`) each new outcome — a stage change, a
retry, a failure, each a new ``version`` of the task — becomes one outbox row (channel
``tracker``) whose idempotency key is ``orch:<work item>:v<version>:<stage>:ok|failed``:
the same outcome told twice is one row. :class:`TrackerChannel` delivers the row: the
comment (carrying the key, so the tracker deduplicates a repeated delivery) and the
tracker state mapped from the stage. A tracker that is down keeps the row pending with
backoff, so an outage loses nothing and a restart repeats nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from orchestrator.errors import IntegrationError
from orchestrator.kernel.stages import stage_label
from orchestrator.outbox.delivery import Claim, DeliveryError, enqueue
from orchestrator.store import DuplicateError, Store, Task
from orchestrator.trackers.base import Tracker, task_origin

__all__ = [
    "TRACKER",
    "WRITEBACK",
    "TrackerChannel",
    "TrackerNotifier",
    "outcome_key",
    "outcome_text",
]

TRACKER: Final = "tracker"
WRITEBACK: Final = "writeback"


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
    """Queues each new outcome of a tracker's task for write-back (see the module doc)."""

    def __init__(self, store: Store, *, language: str = "en") -> None:
        self.store = store
        self.language = language

    def on_task_changed(self, task: Task, summary: str) -> None:
        origin = task_origin(task)
        if origin is None:
            return
        key = outcome_key(task)
        payload = {
            "origin": origin,
            "body": outcome_text(task, summary, self.language)[:4000],
            "stage": task.stage,
        }
        try:
            with self.store.transaction() as tx:
                if not tx.outbox_key_queued(key):
                    enqueue(
                        tx,
                        channel=TRACKER,
                        kind=WRITEBACK,
                        payload=payload,
                        task_id=task.id,
                        key=key,
                    )
        except DuplicateError:
            pass  # queued by a concurrent call: the key is unique

    def alert(self, task: Task | None, message: str) -> None:
        """Alerts are for the operators' chat, not the tracker."""


class TrackerChannel:
    """The outbox channel ``tracker``: comments and states on the origin's tracker."""

    def __init__(self, trackers: Mapping[str, Tracker]) -> None:
        self.trackers = dict(trackers)

    def deliver(self, claim: Claim) -> Mapping[str, Any] | None:
        payload = claim.message.payload
        origin = payload.get("origin")
        if not isinstance(origin, dict):
            raise DeliveryError("a write-back without an origin", permanent=True)
        name = str(origin.get("tracker"))
        tracker = self.trackers.get(name)
        if tracker is None:
            raise DeliveryError(
                f"no {name} tracker is configured for this write-back", permanent=True
            )
        try:
            tracker.comment(
                origin, str(payload.get("body") or ""), key=claim.message.idempotency_key
            )
            tracker.set_state(origin, str(payload.get("stage") or ""))
        except IntegrationError as exc:
            raise DeliveryError(str(exc)) from None
        return {"tracker": name}
