"""What a person (CLI, HTTP API) can do to tasks: create, approve, reject, cancel, roll
back, retry.

Every operation validates first and writes nothing when the input is bad; every stage
change goes through :func:`advance_stage` (a compare-and-swap) in one transaction.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from orchestrator.agents import check_available, resolve_agent
from orchestrator.effects.leases import LeaseManager, Owner
from orchestrator.errors import AgentError, ConflictError, RepositoryError, UsageError
from orchestrator.kernel.actions import Action, refusal
from orchestrator.kernel.gates import HUMAN_GATE_ARTIFACTS
from orchestrator.kernel.stages import (
    CREATED,
    JOB_STAGES,
    REJECT_TARGET,
    ROLLBACK_TARGET,
)
from orchestrator.lifecycle import moves as lifecycle
from orchestrator.lifecycle.transitions import EventKind, artifact_dir, plan_job
from orchestrator.outbox.notifier import Notifier, NullNotifier
from orchestrator.settings import Settings
from orchestrator.store import DuplicateError, Store, Task, Tx
from orchestrator.text_input import check_text
from orchestrator.workspace.git import RemoteMovedError, Repo, git
from orchestrator.workspace.remote import open_repo, start_task_branch
from orchestrator.workspace.worktrees import ensure_worktree

__all__ = [
    "MAX_DESCRIPTION_CHARS",
    "MAX_FEEDBACK_CHARS",
    "MAX_TITLE_CHARS",
    "WORK_ITEM_PATTERN",
    "CreateRequest",
    "TaskService",
    "prepare_create",
    "validate_title",
    "validate_work_item",
]

log = logging.getLogger("orchestrator.lifecycle.service")

MAX_TITLE_CHARS: Final = 200
MAX_DESCRIPTION_CHARS: Final = 20_000
# A rejection's feedback goes into the next prompt and the events trail: a few
# paragraphs, not a document (link to one instead).
MAX_FEEDBACK_CHARS: Final = 4_000
# How much of the feedback the event's one-line reason repeats (all of it is in its data).
FEEDBACK_REASON_CHARS: Final = 200
# Letters, digits, dot, dash, underscore; starts with a letter or digit; no "..".
WORK_ITEM_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_work_item(work_item: str) -> str:
    """A work item id safe as a branch name, a path segment and a shell word."""
    if (
        not WORK_ITEM_PATTERN.match(work_item)
        or ".." in work_item
        or work_item.endswith((".", ".lock"))
    ):
        raise UsageError(
            f"work item {work_item[:80]!r} is not valid: use 1-64 letters, digits, '.', '-' "
            "or '_', starting with a letter or digit (e.g. PROJ-42)"
        )
    return work_item


def validate_title(title: str) -> str:
    cleaned = title.strip()
    if not cleaned:
        raise UsageError("the title is empty; say in a few words what the task is")
    if len(cleaned) > MAX_TITLE_CHARS:
        raise UsageError(
            f"the title is {len(cleaned)} characters; keep it under {MAX_TITLE_CHARS} and put "
            "details in --description"
        )
    check_text(cleaned, "the title")
    # Controls (Cc) and lone surrogates (Cs) are refused; format characters (Cf: the
    # zero-width joiner of an emoji, a right-to-left mark) are text.
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in cleaned):
        raise UsageError("the title contains control characters or newlines; use one line")
    return cleaned


def validate_description(description: str) -> str:
    check_text(description, "the description")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise UsageError(
            f"the description is {len(description)} characters; the limit is "
            f"{MAX_DESCRIPTION_CHARS}: link to a document instead"
        )
    return description


def validate_feedback(feedback: str) -> str:
    """A rejection's feedback: said in words, bounded, no NUL."""
    cleaned = feedback.strip()
    if not cleaned:
        raise UsageError("the feedback is empty; say what the BRD must change (--feedback TEXT)")
    check_text(cleaned, "the feedback")
    if len(cleaned) > MAX_FEEDBACK_CHARS:
        raise UsageError(
            f"the feedback is {len(cleaned)} characters; the limit is {MAX_FEEDBACK_CHARS}: "
            "say what must change and link to a longer document"
        )
    return cleaned


@dataclass(frozen=True)
class CreateRequest:
    """A validated request to create a task; nothing is written yet."""

    repo: Repo
    title: str
    description: str
    work_item: str | None
    base_branch: str
    base_sha: str


# The test runner's agent name; with test_runner_hybrid it may hand a DEFER to an agent.
TEST_RUNNER: Final = "runner:tests"


def check_hybrid_explainer(settings: Settings, repository: Path) -> None:
    """The test runner's hybrid explainer must be an agent that can start here."""
    name = settings.hybrid_agent(repository)
    fix = (
        "install it, name another agent in test_runner_hybrid_agent, "
        "or set test_runner_hybrid = false"
    )
    try:
        spec = resolve_agent(settings, name, repository, "testing")
        if spec.kind != "agent":
            raise AgentError(f"test_runner_hybrid_agent '{name}' is a {spec.kind}, not an agent")
        check_available(spec)
    except AgentError as exc:
        raise AgentError(f"the hybrid test explainer: {exc}; {fix}") from exc


def prepare_create(
    settings: Settings,
    *,
    repo_path: Path,
    title: str,
    work_item: str | None = None,
    description: str = "",
) -> CreateRequest:
    """Check a create request without writing anything: input, repository, agents."""
    title = validate_title(title)
    description = validate_description(description)
    if work_item is not None:
        validate_work_item(work_item)
    repo = Repo.at(repo_path.expanduser())
    pipeline = settings.pipeline_for(repo.path)
    for stage in pipeline.stages():
        if stage in JOB_STAGES:
            plan = plan_job(settings, str(repo.path), stage)
            check_available(resolve_agent(settings, plan.agent))
            if stage == "testing" and plan.agent == TEST_RUNNER and settings.test_runner_hybrid:
                check_hybrid_explainer(settings, repo.path)
    config = settings.repo_config(repo.path)
    repo = replace(repo, remote=config.remote)
    base_branch = repo.default_branch(config.default_branch)
    # With a remote, from its default branch as it is there now.
    return CreateRequest(
        repo, title, description, work_item, base_branch, repo.current(base_branch)
    )


@dataclass
class TaskService:
    store: Store
    settings: Settings
    notifier: Notifier = NullNotifier()  # noqa: RUF009 - a stateless default

    # --- create ------------------------------------------------------------------------
    def create_task(
        self,
        *,
        repo_path: Path,
        title: str,
        work_item: str | None = None,
        description: str = "",
        actor: str = "cli",
        origin: Mapping[str, Any] | None = None,
    ) -> Task:
        """Validate everything, make the worktree, then write the task in one transaction.

        ``origin`` says where the work item came from (a tracker's issue); it is kept in
        the task's ``origin`` column (and on the ``task.created`` event, for the audit
        trail), where write-back and the tracker's later webhooks find it.
        """
        request = prepare_create(
            self.settings,
            repo_path=repo_path,
            title=title,
            work_item=work_item,
            description=description,
        )
        repo, repository = request.repo, str(request.repo.path)
        title, description = request.title, request.description
        base_branch, base_sha = request.base_branch, request.base_sha
        work_item = request.work_item or self._next_work_item(repository)
        if self.store.task_exists(repository, work_item):
            raise ConflictError(f"task {work_item} already exists in {repository}")
        branch = f"orch/{work_item}"
        if repo.has_branch(branch):
            raise ConflictError(
                f"branch {branch} already exists in {repository}; delete it "
                f"(git branch -D {branch}) or choose another --work-item"
            )
        worktree = self._worktree_path(repository, work_item)
        if worktree.exists():
            raise ConflictError(f"{worktree} already exists; remove it or choose another id")
        repo.add_worktree(worktree, branch, base_sha)
        pushed: str | None = None
        try:
            try:
                start_task_branch(repo, branch, base_sha)  # any host may take its first job
                pushed = base_sha if repo.remote else None
            except RemoteMovedError:
                raise ConflictError(
                    f"branch {branch} already exists on {repo.remote}; delete it there or "
                    "choose another --work-item"
                ) from None
            with self.store.transaction() as tx:
                task_id = tx.insert_task(
                    work_item=work_item,
                    repository=repository,
                    title=title,
                    description=description,
                    stage=CREATED,
                    branch=branch,
                    base_branch=base_branch,
                    base_sha=base_sha,
                    worktree=str(worktree),
                    origin=origin,
                )
                tx.add_event(
                    EventKind.TASK_CREATED,
                    actor=actor,
                    task_id=task_id,
                    to_stage=CREATED,
                    reason=f"{title} (from {base_branch} at {base_sha[:10]})",
                    data={"origin": dict(origin)} if origin else None,
                )
                task = tx.get_task(task_id)
                first = self.settings.pipeline_for(repo.path).next_stage(CREATED)
                change = lifecycle.advance(
                    tx,
                    self.settings,
                    task,
                    CREATED,
                    first,
                    actor=actor,
                    reason="task created",
                    summary="created",
                )
        except DuplicateError:
            repo.remove_worktree(worktree)
            git_branch_delete(repo, branch, pushed)
            raise ConflictError(f"task {work_item} already exists in {repository}") from None
        except BaseException:
            # Nothing half-written: the worktree goes with the transaction.
            repo.remove_worktree(worktree)
            git_branch_delete(repo, branch, pushed)
            raise
        if change is None:  # a new task cannot lose its first move
            raise ConflictError(f"task {work_item} changed meanwhile; try again")
        return self._after(change)

    def _next_work_item(self, repository: str) -> str:
        number = self.store.count_tasks(repository) + 1
        while self.store.task_exists(repository, f"TASK-{number}"):
            number += 1
        return f"TASK-{number}"

    def _worktree_path(self, repository: str, work_item: str) -> Path:
        digest = hashlib.sha256(repository.encode()).hexdigest()[:8]
        base = self.settings.data_dir.resolve() / "worktrees"
        return base / f"{Path(repository).name}-{digest}" / work_item

    # --- human actions -----------------------------------------------------------------
    def approve(self, task: Task, *, actor: str = "cli") -> Task:
        """Pass the human gate (BRD approval)."""
        _check(Action.APPROVE, task)
        target = self.settings.pipeline_for(Path(task.repository)).next_stage(task.stage)
        return self._move(
            task,
            target,
            actor=actor,
            reason=f"approved by {actor}",
            event_kind=EventKind.APPROVED,
        )

    def reject(self, task: Task, *, feedback: str, actor: str = "cli") -> Task:
        """Send a human gate back with feedback: the BRD goes back to analysis, whose
        next run gets the feedback in its prompt and ``ORCH_FEEDBACK``."""
        feedback = validate_feedback(feedback)
        target = self.reject_target(task)
        document = f"{artifact_dir(task.work_item)}/{HUMAN_GATE_ARTIFACTS[task.stage]}"
        one_line = " ".join(feedback.split())
        if len(one_line) > FEEDBACK_REASON_CHARS:
            one_line = one_line[: FEEDBACK_REASON_CHARS - 1] + "…"
        with self.store.transaction() as tx:
            change = self._won(
                task,
                lifecycle.reject(
                    tx,
                    self.settings,
                    task,
                    target,
                    actor=actor,
                    reason=f"rejected by {actor}: {one_line}",
                    feedback=f"{document} was rejected by {actor} at {task.stage}; revise it to "
                    f"address this:\n{feedback}",
                    data={"feedback": feedback},
                ),
            )
        return self._after(change)

    def reject_target(self, task: Task) -> str:
        """Where rejecting ``task`` now would send it; ConflictError when it cannot be
        rejected (not at a gate, failed, or its repository skips the target stage)."""
        _check(Action.REJECT, task)
        target = REJECT_TARGET[task.stage]
        if target in self.settings.pipeline_for(Path(task.repository)).skipped:
            raise ConflictError(
                f"task {task.work_item}'s repository skips {target}, so nothing would redo "
                f"the document; approve or cancel it"
            )
        return target

    def _refuse_during_side_effects(self, tx: Tx, task: Task, action: str) -> None:
        """A live transition lease means a merge or deploy is under way: wait for it.
        Checked inside the transaction that moves the task (see ``refuse_if_held``)."""
        LeaseManager(self.store, self.settings, Owner.current()).refuse_if_held(tx, task, action)

    def cancel(self, task: Task, *, actor: str = "cli", reason: str = "") -> Task:
        check_text(reason, "the reason")
        _check(Action.CANCEL, task)
        why = reason or f"cancelled by {actor}"
        with self.store.transaction() as tx:
            self._refuse_during_side_effects(tx, task, "cancel")
            change = self._won(
                task, lifecycle.cancel(tx, self.settings, task, actor=actor, reason=why)
            )
        # The worktree goes (after_commit), unless a job still runs in it: then the
        # engine or the janitor removes it once the job stopped.
        return self._after(change)

    def rollback(self, task: Task, *, actor: str = "cli", reason: str = "") -> Task:
        check_text(reason, "the reason")
        """Send the task back to development from testing, staging or deploy."""
        _check(Action.ROLLBACK, task)
        target = ROLLBACK_TARGET[task.stage]
        with self.store.transaction() as tx:  # first, before looking at the worktree
            self._refuse_during_side_effects(tx, task, "roll back")
        self._check_worktree_restorable(task)
        why = reason or f"rolled back by {actor}"
        with self.store.transaction() as tx:
            self._refuse_during_side_effects(tx, task, "roll back")  # and where it counts
            tx.cancel_waiting_jobs(task.id, why)
            change = self._won(
                task,
                lifecycle.roll_back(
                    tx,
                    self.settings,
                    task,
                    task.stage,
                    target,
                    actor=actor,
                    reason=why,
                    feedback=why,
                    summary=f"rolled back to {target}",
                    clear_failure=True,
                ),
            )
        ensure_worktree(self.store, self.settings, task, actor=actor)
        return self._after(change)

    def retry(self, task: Task, *, actor: str = "cli") -> Task:
        """Resume a failed task at its stage with fresh budgets."""
        _check(Action.RETRY, task)
        self._check_worktree_restorable(task)
        with self.store.transaction() as tx:
            change = self._won(task, lifecycle.resume(tx, self.settings, task, actor=actor))
        # Its worktree may have been removed after worktree_retention_failed_s.
        ensure_worktree(self.store, self.settings, task, actor=actor)
        return self._after(change)

    def _check_worktree_restorable(self, task: Task) -> None:
        """Refuse before writing anything when a removed worktree cannot come back."""
        worktree = Path(task.worktree)
        if worktree.is_dir() and (worktree / ".git").exists():
            return
        repo = open_repo(self.settings, task.repository)
        if repo.remote and repo.fetch(task.branch)[task.branch] is not None:
            return  # the worktree comes back from the remote's branch
        if not repo.has_branch(task.branch):
            raise ConflictError(
                f"task {task.work_item}'s worktree was removed and its branch {task.branch} "
                f"no longer exists in {task.repository}: restore the branch, or cancel the task"
            )

    def _move(self, task: Task, target: str, *, actor: str, reason: str, event_kind: str) -> Task:
        with self.store.transaction() as tx:
            change = self._won(
                task,
                lifecycle.advance(
                    tx,
                    self.settings,
                    task,
                    task.stage,
                    target,
                    actor=actor,
                    reason=reason,
                    summary=reason,
                    event_kind=event_kind,
                ),
            )
        return self._after(change)

    @staticmethod
    def _won(task: Task, change: lifecycle.Change | None) -> lifecycle.Change:
        """Raise inside the transaction when the move lost: a person tries again."""
        if change is None:
            raise ConflictError(f"task {task.work_item} changed meanwhile; try again")
        return change

    def _after(self, change: lifecycle.Change) -> Task:
        """Every listener hears the committed change (lifecycle.after_commit)."""
        return lifecycle.after_commit(self, change)


def git_branch_delete(repo: Repo, branch: str, pushed: str | None = None) -> None:
    """Delete a task branch that was just made; ``pushed``: the tip it was pushed at,
    deleted there too (if it is still that: a compare-and-swap)."""
    git(repo.path, "branch", "-D", branch, check=False)
    if pushed is not None:
        try:
            repo.push(branch, None, pushed)
        except RepositoryError as exc:
            log.warning("could not delete %s from %s: %s", branch, repo.remote, exc)


def _check(action: Action, task: Task) -> None:
    """Refuse an action the kernel's table does not allow in the task's stage now."""
    why = refusal(action, task.stage, task.failed)
    if why is not None:
        raise ConflictError(f"task {task.work_item} {why}")
