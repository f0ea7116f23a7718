"""The inbox: what a webhook asked for, applied when the transition lease allows.

Theory of operation
-------------------
**Record.** A verified webhook that asks to cancel a task, roll it back, or cross
``deploy -> done`` for a merged pull request does not act inside the request: it
records an *intent* (task, action, actor, reason, source, delivery id) and its
``inbox.recorded`` event in one transaction, and is answered 202 with the intent's id
(:mod:`orchestrator.webhooks.intake`). The same delivery id is never recorded twice. Nothing
relies on the sender retrying (GitHub never redelivers by itself; Plane retries only on
a connection error, with a new delivery id).

**Apply.** :meth:`InboxApplier.apply_due` (the ``inbox`` loop of ``orch serve``) takes
due intents oldest first and asks :func:`decide_intent` (pure) what to do given the
task as it is now and whether a live transition lease is held on it:

* ``Wait``: a merge, deploy or health window is under way; looked at again shortly
  (waiting never counts as a failed attempt, and the reason is kept in ``outcome``);
* ``Refuse``: the task moved on (already cancelled, not in a stage a rollback applies
  from, no longer in ``deploy``): marked ``refused`` with the reason;
* ``Apply``: claimed with a compare-and-swap ``pending -> applying`` (stamped with this
  process's boot id, bumping ``attempts``) and applied through the same paths as a
  person's command: :meth:`TaskService.cancel`, :meth:`TaskService.rollback`,
  :func:`enter_transition` for ``deploy -> done``. Marked ``applied`` with what
  happened, with an ``inbox.applied`` event, in a transaction fenced by the claim.

A failure that may pass (the database, a forge that does not answer, a race lost to
another move of the task) puts the intent back with exponential backoff from
``INBOX_BACKOFF_S``; after ``INBOX_MAX_ATTEMPTS`` it is marked ``failed`` (and
alerted). A refusal by the service with the task unchanged (a rollback whose worktree
and branch are gone, bad input, a git error) is ``refused`` with its message.

**Exactly once.** A claim whose owner died (``orch serve`` killed mid-apply) is taken
over by the next applier. Before acting again it looks at the task's trail: an event
by the intent's actor with the intent's reason since the intent was recorded means the
dead owner's action committed, and the intent is marked applied without acting. A
cancel and a rollback are one stage compare-and-swap each, so that check is exact; the
crossing is resumed through its lease and effect journal, which never repeat an effect.

::

    pending --claim--> applying --ok--> applied
       ^                  |--refused----> refused
       |                  |--error, retry--> pending (next_attempt_at later)
       |                  |--error, give up--> failed
       +---- (lease held: wait; owner dead: taken over) ----+
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Final

from orchestrator.errors import ConflictError, OrchestratorError, SideEffectsUnderWayError
from orchestrator.kernel.events import EventKind
from orchestrator.kernel.stages import ROLLBACK_TARGET, TERMINAL_STAGES
from orchestrator.lifecycle.service import TaskService
from orchestrator.lifecycle.transitions import Crossing, Runtime, enter_transition
from orchestrator.outbox.notifier import notify_safely
from orchestrator.store import InboxStatus, InboxStore, Intent, Task
from orchestrator.store.records import Event

__all__ = [
    "ACTIONS",
    "INBOX_BACKOFF_S",
    "INBOX_IDLE_INTERVAL_S",
    "INBOX_INTERVAL_S",
    "INBOX_MAX_ATTEMPTS",
    "INBOX_WAIT_S",
    "Action",
    "Apply",
    "InboxApplier",
    "Refuse",
    "Wait",
    "decide_intent",
    "retry_at",
]

log = logging.getLogger("orchestrator.webhooks.inbox")

# How often the inbox loop looks for due intents (a new intent also wakes it).
INBOX_INTERVAL_S: Final = 1.0
# How often once no work has moved for QUIET_AFTER_S (a new intent wakes it at once).
INBOX_IDLE_INTERVAL_S: Final = 30.0
# How soon an intent waiting on a held lease is looked at again.
INBOX_WAIT_S: Final = 1.0
# The first retry after a failure; doubled each time, never beyond INBOX_MAX_BACKOFF_S.
INBOX_BACKOFF_S: Final = 2.0
INBOX_MAX_BACKOFF_S: Final = 300.0
# Failed attempts before an intent is marked failed for good.
INBOX_MAX_ATTEMPTS: Final = 8


class Action:
    CANCEL: Final = "cancel"
    ROLLBACK: Final = "rollback"
    MERGED: Final = "merged"  # a merged pull request: cross deploy -> done


ACTIONS: Final = frozenset({Action.CANCEL, Action.ROLLBACK, Action.MERGED})


# --- the decision (pure) -----------------------------------------------------------------
@dataclass(frozen=True)
class Apply:
    pass


@dataclass(frozen=True)
class Wait:
    reason: str


@dataclass(frozen=True)
class Refuse:
    reason: str


def decide_intent(action: str, task: Task, held_by: str | None) -> Apply | Wait | Refuse:
    """What to do with an intent now; ``held_by`` describes a live transition lease on
    the task (``"deploy->done (engine)"``), None when there is none."""
    if action == Action.CANCEL and task.stage in TERMINAL_STAGES:
        return Refuse(f"task {task.work_item} is already {task.stage}")
    if action == Action.ROLLBACK and task.stage not in ROLLBACK_TARGET:
        allowed = ", ".join(ROLLBACK_TARGET)
        return Refuse(f"task {task.work_item} is in {task.stage}; rollback applies from {allowed}")
    if action == Action.MERGED and (task.stage != "deploy" or task.failed):
        state = "failed" if task.failed else task.stage
        return Refuse(f"task {task.work_item} is {state}: not moved")
    if action not in ACTIONS:
        return Refuse(f"unknown action {action!r}")
    if held_by is not None:
        return Wait(f"waiting: {held_by} is under way")
    return Apply()


def retry_at(attempts: int, now: float, backoff_s: float = INBOX_BACKOFF_S) -> float | None:
    """When to try again after the ``attempts``-th failed attempt; None: give up."""
    if attempts >= INBOX_MAX_ATTEMPTS:
        return None
    delay: float = backoff_s * 2.0 ** max(attempts - 1, 0)
    return now + min(delay, INBOX_MAX_BACKOFF_S)


# --- applying ------------------------------------------------------------------------------
class _WaitError(Exception):
    """The service found a lease after all (taken between the check and the claim)."""


class InboxApplier:
    """Applies due intents through the service and the transition; one per process."""

    def __init__(
        self,
        service: TaskService,
        runtime: Runtime,
        *,
        backoff_s: float = INBOX_BACKOFF_S,
    ) -> None:
        self.service = service
        self.runtime = runtime
        self.store = runtime.store
        self.inbox = InboxStore(runtime.store)
        self.owner = runtime.owner.boot_id
        self._clock = runtime.clock.now  # a FakeClock in tests
        self._backoff_s = backoff_s
        self._wake = threading.Event()

    # --- the loop --------------------------------------------------------------------
    def wake(self) -> None:
        """Look for due intents now (a webhook just recorded one; the supervisor stops)."""
        self._wake.set()
        self.store.activity.touch()

    def run(
        self,
        stop: threading.Event,
        interval_s: float = INBOX_INTERVAL_S,
        idle_interval_s: float = INBOX_IDLE_INTERVAL_S,
    ) -> None:
        """Apply until ``stop`` is set. A failing sweep (the database) propagates, so the
        supervisor can stop the service; one intent's failure never does. Once no work
        has moved for ``QUIET_AFTER_S`` it looks only every ``idle_interval_s``, and at
        once when work moves (an intent recorded anywhere: its event's commit)."""
        activity = self.store.activity
        while not stop.is_set():
            self._wake.clear()
            generation = activity.generation
            self.apply_due()
            activity.rest(
                generation,
                busy_wait=self._wake.wait,
                interval_s=interval_s,
                idle_interval_s=idle_interval_s,
                next_due=self.inbox.next_attempt_at,
                now=self._clock,
            )

    def apply_due(self) -> int:
        """One sweep: every due intent decided and, when it may, applied; returns how
        many intents finished (applied, refused or failed)."""
        now = self._clock()
        due = self.inbox.open_intents(now)
        if not due:
            return 0  # the common case: one indexed query a sweep
        held = {
            info.task_id: f"{info.transition} ({info.actor})"
            for info in self.runtime.leases.held()
            if info.live
        }
        alive: dict[str, bool] = {}
        finished = 0
        for intent in due:
            taken_over = intent.status == InboxStatus.APPLYING
            if taken_over and not self._owner_dead(intent, alive):
                continue
            try:
                task: Task | None = self.store.get_task(intent.task_id)
            except OrchestratorError:
                task = None
            if task is None:  # deleted; the row goes with it (cascade)
                continue
            if taken_over and self._found_applied(intent):
                claim = self.inbox.claim_intent(intent, self.owner, self._clock())
                if claim is not None:
                    finished += self._finish(
                        claim, InboxStatus.APPLIED, "found applied by an earlier owner"
                    )
                continue
            decision = decide_intent(intent.action, task, held.get(task.id))
            if isinstance(decision, Wait) and intent.status == InboxStatus.PENDING:
                if intent.outcome != decision.reason:
                    log.info("inbox: intent %s %s", intent.id, decision.reason)
                self.inbox.note_waiting(intent, decision.reason, now + INBOX_WAIT_S)
                continue
            claim = self.inbox.claim_intent(intent, self.owner, self._clock())
            if claim is None:
                continue  # another applier took it
            if taken_over:
                log.warning("inbox: took over intent %s from %s", intent.id, intent.claimed_by)
            if isinstance(decision, Refuse):
                finished += self._finish(claim, InboxStatus.REFUSED, decision.reason)
            elif isinstance(decision, Wait):
                self.inbox.release_intent(
                    claim,
                    next_attempt_at=now + INBOX_WAIT_S,
                    outcome=decision.reason,
                    count_attempt=False,
                )
            else:
                finished += self._apply(claim, task)
        return finished

    def _owner_dead(self, intent: Intent, alive: dict[str, bool]) -> bool:
        owner = intent.claimed_by
        if owner is None:
            return True
        if owner == self.owner:
            return False  # ours: this sweep applies one intent at a time
        if owner not in alive:
            alive[owner] = self.runtime.leases.instance_alive(owner)
        return not alive[owner]

    def _found_applied(self, intent: Intent) -> bool:
        """Whether a dead owner's action on ``intent`` committed (see the module doc)."""

        def done_by_it(event: Event) -> bool:
            return (
                event.created_at >= intent.created_at
                and event.actor == intent.actor
                and event.reason == intent.reason
                and not event.kind.startswith("inbox.")
            )

        return any(done_by_it(event) for event in self.store.task_events(intent.task_id))

    def _apply(self, claim: Intent, task: Task) -> int:
        try:
            outcome = self._act(claim, task)
        except (_WaitError, SideEffectsUnderWayError) as exc:
            self.inbox.release_intent(
                claim,
                next_attempt_at=self._clock() + INBOX_WAIT_S,
                outcome=f"waiting: {exc}",
                count_attempt=False,
            )
            return 0
        except ConflictError as exc:
            if self._moved_since(task):  # a race with another move: decide again later
                return self._retry(claim, str(exc))
            return self._finish(claim, InboxStatus.REFUSED, str(exc))
        except OrchestratorError as exc:
            if exc.http_status >= 500:  # an integration that did not answer
                return self._retry(claim, str(exc))
            return self._finish(claim, InboxStatus.REFUSED, str(exc))
        except Exception as exc:  # the database, a bug: retried, never stops the loop
            log.exception("inbox: applying intent %s failed", claim.id)
            return self._retry(claim, f"{type(exc).__name__}: {exc}")
        return self._finish(claim, InboxStatus.APPLIED, outcome)

    def _act(self, claim: Intent, task: Task) -> str:
        if claim.action == Action.CANCEL:
            self._refuse_if_leased(task)
            self.service.cancel(task, actor=claim.actor, reason=claim.reason)
            return "cancelled"
        if claim.action == Action.ROLLBACK:
            self._refuse_if_leased(task)
            moved = self.service.rollback(task, actor=claim.actor, reason=claim.reason)
            return f"rolled back to {moved.stage}"
        crossing = enter_transition(
            self.runtime, task, "deploy", "done", actor=claim.actor, reason=claim.reason
        )
        if crossing is Crossing.DEFERRED:
            raise _WaitError("deploy->done is under way elsewhere")
        if crossing is Crossing.LOST:
            raise ConflictError(f"task {task.work_item} moved on before deploy->done")
        current = self.store.get_task(task.id)
        return f"deploy->done {crossing.value}: task is {current.stage}"

    def _moved_since(self, task: Task) -> bool:
        """Whether the task changed after ``task`` was read (a lost race, not a refusal)."""
        try:
            current = self.store.get_task(task.id)
        except OrchestratorError:
            return False
        return (current.stage, current.version) != (task.stage, task.version)

    def _refuse_if_leased(self, task: Task) -> None:
        for info in self.runtime.leases.held():
            if info.task_id == task.id and info.live:
                raise _WaitError(f"{info.transition} ({info.actor}) is under way")

    def _retry(self, claim: Intent, error: str) -> int:
        at = retry_at(claim.attempts, self._clock(), self._backoff_s)
        if at is None:
            reason = f"gave up after {claim.attempts} attempts: {error}"
            finished = self._finish(claim, InboxStatus.FAILED, reason)
            if finished:
                task = self.store.get_task(claim.task_id)
                message = f"{claim.action} from {claim.source} was not applied: {reason}"
                notify_safely(lambda: self.runtime.notifier.alert(task, message))
            return finished
        log.info("inbox: intent %s failed, retry in %.1fs: %s", claim.id, at - self._clock(), error)
        self.inbox.release_intent(claim, next_attempt_at=at, outcome=error, count_attempt=True)
        return 0

    def _finish(self, claim: Intent, status: str, outcome: str) -> int:
        kind = {
            InboxStatus.APPLIED: EventKind.INBOX_APPLIED,
            InboxStatus.REFUSED: EventKind.INBOX_REFUSED,
            InboxStatus.FAILED: EventKind.INBOX_FAILED,
        }[status]
        won = self.inbox.finish_intent(
            claim, status=status, outcome=outcome, event_kind=kind, actor=claim.actor
        )
        if won:
            log.info("inbox: intent %s (%s) %s: %s", claim.id, claim.action, status, outcome)
        else:
            log.warning("inbox: intent %s was taken over before it was marked %s", claim.id, status)
        return int(won)
