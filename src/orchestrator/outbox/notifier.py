"""The notifier interface, called after each committed transition, and a console one.

Adapters (the Telegram live card, tracker comments) implement :class:`Notifier`. A
notifier must never raise into the engine; :func:`notify_safely` enforces it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Protocol

from orchestrator.kernel.stages import stage_label
from orchestrator.store import Task

__all__ = ["ConsoleNotifier", "FanOutNotifier", "Notifier", "NullNotifier", "notify_safely"]

log = logging.getLogger("orchestrator.outbox.notifier")


class Notifier(Protocol):
    def on_task_changed(self, task: Task, summary: str) -> None:
        """The task's state changed (stage, job, failure); ``summary`` says how."""

    def alert(self, task: Task | None, message: str) -> None:
        """Something a human should look at (a failure, a rollback)."""


class NullNotifier:
    def on_task_changed(self, task: Task, summary: str) -> None:
        pass

    def alert(self, task: Task | None, message: str) -> None:
        pass


class ConsoleNotifier:
    """Writes one log line per change; the default when nothing else is configured."""

    def __init__(self, language: str = "en") -> None:
        self.language = language

    def on_task_changed(self, task: Task, summary: str) -> None:
        label = stage_label(task.stage, self.language)
        log.info("%s [%s] %s", task.work_item, label, summary)

    def alert(self, task: Task | None, message: str) -> None:
        log.warning("ALERT %s: %s", task.work_item if task else "-", message)


class FanOutNotifier:
    """Tells every one of several notifiers (e.g. the console and the Telegram outbox);
    one failing does not keep the others from hearing."""

    def __init__(self, *notifiers: Notifier) -> None:
        self.notifiers = notifiers

    def on_task_changed(self, task: Task, summary: str) -> None:
        for notifier in self.notifiers:
            notify_safely(partial(notifier.on_task_changed, task, summary))

    def alert(self, task: Task | None, message: str) -> None:
        for notifier in self.notifiers:
            notify_safely(partial(notifier.alert, task, message))


def notify_safely(call: Callable[[], None]) -> None:
    """Run a notifier call; a notifier's failure is logged, never raised."""
    try:
        call()
    except Exception:
        log.exception("notifier failed")
