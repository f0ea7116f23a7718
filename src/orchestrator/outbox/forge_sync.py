"""The task's pull request and commit status on a remote forge, through the outbox.

For a repository whose forge is ``gitea`` or ``github`` (the ``local`` forge has nothing
to show), :class:`ForgeNotifier` turns each outcome of a task that has code to review —
``testing`` and later — into one outbox row (channel ``forge``), keyed
``forge:<work item>:v<version>:<stage>:ok|failed`` so an outcome told twice is one row.
:class:`ForgeChannel` delivers it: the pull request of the task branch is opened if
there is none (idempotent on the forge's side too), and the commit status
``orch/pipeline`` of the branch head is set — ``pending`` while the task moves,
``success`` when it is done, ``failure`` when it failed. A forge that is down keeps the
row pending with backoff; a repeated delivery finds the pull request and sets the same
status again, which is harmless.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Final

from orchestrator.errors import ConfigError, IntegrationError, NotFoundError, RepositoryError
from orchestrator.forges.base import CommitState, Forge
from orchestrator.kernel.stages import DONE, STAGE_ORDER, stage_label
from orchestrator.outbox.delivery import Claim, DeliveryError, enqueue
from orchestrator.settings import Settings
from orchestrator.store import DuplicateError, Store, Task
from orchestrator.workspace.git import Repo
from orchestrator.workspace.remote import open_repo

__all__ = ["FORGE", "STATUS", "STATUS_CONTEXT", "ForgeChannel", "ForgeNotifier", "remote_forge"]

FORGE: Final = "forge"
STATUS: Final = "status"
STATUS_CONTEXT: Final = "orch/pipeline"
# From here on the task branch carries code worth a pull request.
FIRST_REVIEW_STAGE: Final = "testing"
MAX_DESCRIPTION_CHARS: Final = 140


def remote_forge(settings: Settings, repository: str) -> bool:
    """Whether ``repository``'s forge is a remote one (``gitea`` or ``github``)."""
    config = settings.repo_config(Path(repository))
    return (config.forge or settings.forge) != "local"


def _reviewable(stage: str) -> bool:
    order = STAGE_ORDER.index(FIRST_REVIEW_STAGE)
    return stage in STAGE_ORDER and STAGE_ORDER.index(stage) >= order


class ForgeNotifier:
    """Queues each reviewable outcome of a task on a remote forge (see the module doc)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def on_task_changed(self, task: Task, summary: str) -> None:
        if not _reviewable(task.stage) or not remote_forge(self.settings, task.repository):
            return
        state = "failed" if task.failed else "ok"
        key = f"forge:{task.work_item}:v{task.version}:{task.stage}:{state}"
        payload = {"stage": task.stage, "failed": task.failed, "summary": summary[:500]}
        try:
            with self.store.transaction() as tx:
                if not tx.outbox_key_queued(key):
                    enqueue(
                        tx, channel=FORGE, kind=STATUS, payload=payload, task_id=task.id, key=key
                    )
        except DuplicateError:
            pass  # queued by a concurrent call: the key is unique

    def alert(self, task: Task | None, message: str) -> None:
        """Alerts are for the operators' chat."""


class ForgeChannel:
    """The outbox channel ``forge``: the pull request and its commit status."""

    def __init__(
        self,
        store: Store,
        open_forge: Callable[[Task], AbstractContextManager[Forge]],
        *,
        language: str = "en",
        settings: Settings | None = None,
    ) -> None:
        self.store = store
        self.open_forge = open_forge
        self.language = language
        # The repositories' remotes (decision 0031); None: every branch is local.
        self.settings = settings

    def deliver(self, claim: Claim) -> Mapping[str, Any] | None:
        if claim.message.task_id is None:
            raise DeliveryError("a forge status without a task", permanent=True)
        try:
            task = self.store.get_task(claim.message.task_id)
        except NotFoundError:
            return {"action": "skipped", "why": "the task no longer exists"}
        payload = claim.message.payload
        stage = str(payload.get("stage") or task.stage)
        if payload.get("failed"):
            state = CommitState.FAILURE
        elif stage == DONE:
            state = CommitState.SUCCESS
        else:
            state = CommitState.PENDING
        description = f"{task.work_item}: {stage_label(stage, self.language)}"
        if payload.get("summary"):
            description += f" ({payload['summary']})"
        try:
            # With a remote, the branch as it is there (this host may never have run it).
            repo = (
                open_repo(self.settings, task.repository)
                if self.settings is not None
                else Repo(Path(task.repository))
            )
            sha = repo.current(task.branch)
            with self.open_forge(task) as forge:
                pull = forge.open_pull_request(task)
                forge.set_status(
                    task,
                    sha,
                    state,
                    context=STATUS_CONTEXT,
                    description=description[:MAX_DESCRIPTION_CHARS],
                    target_url=pull.url,
                )
        except (ConfigError, RepositoryError) as exc:
            raise DeliveryError(str(exc), permanent=True) from None
        except IntegrationError as exc:
            raise DeliveryError(str(exc)) from None
        return {"pull_request": pull.number, "state": str(state), "sha": sha}
