"""Webhooks in: signed deliveries from Gitea, GitHub and Plane move tasks, safely.

Theory of operation
-------------------
:meth:`WebhookReceiver.receive` takes one delivery (its source, headers and raw body)
and answers ``(http_status, json_body)``. In order, nothing written before step 5:

1. **Signature.** The source's secret must be set, and its signature header must equal
   the HMAC-SHA256 of the raw body under that secret (``hmac.compare_digest``): Gitea
   ``X-Gitea-Signature: <hex>``, GitHub ``X-Hub-Signature-256: sha256=<hex>``, Plane
   ``X-Plane-Signature: <hex>``. Missing or wrong: 401, and nothing else is looked at.
2. **Delivery id** (``X-Gitea-Delivery``, ``X-GitHub-Delivery``, ``X-Plane-Delivery``):
   missing, 400.
3. **Body.** Not JSON, not an object, nested too deeply, or a lone UTF-16 surrogate
   anywhere in it: 400 (:func:`~orchestrator.text_input.parse_json_object`; NUL
   characters are dropped). Size is capped before: 413.
4. **Meaning.** :mod:`orchestrator.webhooks.events` turns it into a value; an event we
   do not use (any well-formed name) is ``ignored``; a name that is no event name, or a
   payload of the wrong shape for an event we act on: 400.
5. **Replay.** The delivery id is claimed by a unique row in ``webhook_deliveries``
   (source, delivery id); a replay finds it and gets 200 ``{"status": "duplicate"}``
   (with the ``intent`` it recorded, if any) and no change. A claim left undecided for
   ``WEBHOOK_CLAIM_STALE_S`` (its request died mid-way; the sender saw no answer) is
   taken over by the redelivery instead (:mod:`orchestrator.store.deliveries`).
6. **Act or intend.** A cancel, a rollback, or a merged pull request's ``deploy ->
   done`` is never run in the request: it is recorded as an intent in the inbox (one
   per delivery id, with an ``inbox.recorded`` event) and answered 202; the inbox loop
   (:mod:`orchestrator.webhooks.inbox`) applies it through
   :class:`~orchestrator.lifecycle.service.TaskService` or
   :func:`~orchestrator.lifecycle.transitions.enter_transition` once no live transition
   lease is held (decision 0015). A new work item goes through ``TaskService.create_task``,
   only into a repository orch.toml lists (``[repos.<name>] path``) unless
   ``allow_any_repo``: otherwise ``"refused"``, not remembered. The audit trail names
   the sender (``github:<login>``, ``gitea:<login>``, ``plane:<name>``), not just the
   source.

Answers: 202 ``{"status": "accepted", "intent": ..., "action": "cancel" | "rollback" |
"merged", "task": ..., "stage": ..., "reason": ...}`` for an intent; otherwise 200 with
``{"status": ..., "task": ..., "reason": ...}``, status one of ``created``, ``exists``,
``recorded`` (noted in the task's events only), ``ignored`` (also: nothing to cancel or
roll back, the task is already there), ``refused`` (repository not listed),
``rejected`` (the service refused; the reason says why) or ``duplicate``. A refused
delivery is not remembered, so a redelivery retries it. A tracker that cannot be
reached during intake gives 502 (not remembered either).
Input the service refuses (a :class:`~orchestrator.errors.UsageError`: a title it cannot
take) gives 422 with the reason and is not remembered either: nothing was decided about
the work item, so a corrected redelivery is processed, never answered ``duplicate``
(decision 0013).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from orchestrator.auth import check_repo_allowed
from orchestrator.errors import (
    ConflictError,
    ForbiddenError,
    IntegrationError,
    OrchestratorError,
    UsageError,
)
from orchestrator.kernel.events import EventKind
from orchestrator.kernel.origins import issue_key
from orchestrator.kernel.stages import ROLLBACK_TARGET, TERMINAL_STAGES
from orchestrator.lifecycle.service import MAX_DESCRIPTION_CHARS, MAX_TITLE_CHARS, TaskService
from orchestrator.settings import Settings
from orchestrator.store import InboxStore, Store, Task
from orchestrator.store.deliveries import DeliveryStore
from orchestrator.text_input import BadJSONError, check_text, parse_json_object
from orchestrator.webhooks.events import (
    BranchPushed,
    ChangesRequested,
    Ignored,
    IssueCancelled,
    IssueOpened,
    IssueRef,
    IssueReopened,
    MalformedPayloadError,
    PullRequestClosed,
    PullRequestMerged,
    UnknownEventError,
    WebhookEvent,
    parse_gitea,
    parse_github,
    parse_plane,
)
from orchestrator.webhooks.inbox import Action
from orchestrator.wiring import (
    Integrations,
    forge_choice,
    repository_for_forge_repo,
    tracker_state,
)

__all__ = [
    "SOURCES",
    "WEBHOOK_EVENT",
    "WebhookReceiver",
    "WebhookSource",
    "sender_actor",
    "sign",
    "verify_signature",
]

log = logging.getLogger("orchestrator.webhooks.intake")

# The event kind of a delivery noted in a task's trail without moving it.
WEBHOOK_EVENT: Final = EventKind.WEBHOOK
MAX_DELIVERY_ID_CHARS: Final = 200
# A claimed delivery still undecided after this long was abandoned by a request that
# died (the process was killed mid-request): its redelivery is processed, not a duplicate.
# Far above the slowest request (an intake that calls a tracker within its timeout).
WEBHOOK_CLAIM_STALE_S: Final = 300.0
MAX_REVIEW_CHARS: Final = 1000
MAX_SENDER_CHARS: Final = 60


@dataclass(frozen=True)
class WebhookSource:
    """How one service signs and names its deliveries."""

    name: str
    signature_header: str
    signature_prefix: str
    delivery_header: str
    event_headers: tuple[str, ...]  # the first present wins; () = named in the body
    secret_setting: str


SOURCES: Final[Mapping[str, WebhookSource]] = {
    "gitea": WebhookSource(
        "gitea",
        "X-Gitea-Signature",
        "",
        "X-Gitea-Delivery",
        ("X-Gitea-Event-Type", "X-Gitea-Event"),
        "gitea_webhook_secret",
    ),
    "github": WebhookSource(
        "github",
        "X-Hub-Signature-256",
        "sha256=",
        "X-GitHub-Delivery",
        ("X-GitHub-Event",),
        "github_webhook_secret",
    ),
    "plane": WebhookSource(
        "plane", "X-Plane-Signature", "", "X-Plane-Delivery", (), "plane_webhook_secret"
    ),
}


def sign(secret: str, body: bytes, prefix: str = "") -> str:
    """The signature header value a sender computes for ``body``."""
    return prefix + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, sent: str | None, prefix: str = "") -> bool:
    """Constant-time check of a signature header against the body's HMAC-SHA256."""
    if not secret or not sent:
        return False
    expected = sign(secret, body, prefix).encode()
    return hmac.compare_digest(expected, sent.strip().encode("utf-8", "replace"))


@dataclass(frozen=True)
class Outcome:
    status: str
    reason: str = ""
    task: Task | None = None
    remember: bool = True  # False: the delivery may be retried (refused, tracker down)
    extra: Mapping[str, Any] = field(default_factory=dict)
    http_status: int = 200
    recorded: bool = False  # the delivery's outcome was written with the change itself

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status}
        if self.task is not None:
            body["task"] = self.task.work_item
            body["stage"] = self.task.stage
        if self.reason:
            body["reason"] = self.reason[:500]
        return body | dict(self.extra)


@dataclass(frozen=True)
class _Delivery:
    """The verified delivery being acted on: its source, id and sender."""

    source: str
    delivery: str
    actor: str


def _header(headers: Mapping[str, str], name: str) -> str:
    """A header's value; the mapping may or may not fold case."""
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return (value or "").strip()


class WebhookReceiver:
    """Verifies, deduplicates and applies deliveries (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        service: TaskService,
        integrations: Integrations | None = None,
        *,
        on_intent: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.service = service
        self.inbox = InboxStore(store)
        self.deliveries = DeliveryStore(store)
        self.integrations = integrations or Integrations(store, settings)
        self._on_intent = on_intent

    # --- the pipeline of one delivery -----------------------------------------------
    def receive(
        self, source_name: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        source = SOURCES[source_name]
        secret = str(getattr(self.settings, source.secret_setting))
        if not secret:
            return 401, {
                "error": f"{source.name} webhooks are not accepted: set "
                f"{source.secret_setting} (ORCH_{source.secret_setting.upper()})"
            }
        signature = _header(headers, source.signature_header)
        if not verify_signature(secret, body, signature, source.signature_prefix):
            what = "missing" if not signature else "wrong"
            return 401, {"error": f"{what} {source.signature_header} signature"}
        delivery = _header(headers, source.delivery_header)
        if not delivery or len(delivery) > MAX_DELIVERY_ID_CHARS:
            return 400, {"error": f"missing or overlong {source.delivery_header} header"}
        try:
            payload = parse_json_object(body)
        except BadJSONError as exc:
            return 400, {"error": str(exc)}
        try:
            event = self._parse(source, headers, payload)
        except (UnknownEventError, MalformedPayloadError) as exc:
            return 400, {"error": str(exc)}
        if not self._claim(source.name, delivery):
            answer: dict[str, Any] = {"status": "duplicate", "delivery": delivery}
            intent = self.inbox.intent_of_delivery(source.name, delivery)
            if intent is not None:
                answer["intent"] = intent.id
            return 200, answer
        try:
            ctx = _Delivery(source.name, delivery, sender_actor(source.name, payload))
            outcome = self._act(ctx, event)
        except IntegrationError as exc:
            self._release(source.name, delivery)
            return 502, {"error": str(exc)}
        except UsageError as exc:
            # Refused input decides nothing: forget the delivery (decision 0013).
            self._release(source.name, delivery)
            log.info("%s delivery %s refused: %s", source.name, delivery, exc)
            return 422, {"error": str(exc)[:500]}
        except BaseException:
            self._release(source.name, delivery)
            raise
        if not outcome.remember:
            self._release(source.name, delivery)
        elif not outcome.recorded:
            self._record(source.name, delivery, outcome)
        log.info("%s delivery %s: %s %s", source.name, delivery, outcome.status, outcome.reason)
        return outcome.http_status, outcome.body()

    def _parse(
        self, source: WebhookSource, headers: Mapping[str, str], payload: dict[str, Any]
    ) -> WebhookEvent:
        if source.name == "plane":
            return parse_plane(payload)
        event = next((_header(headers, h) for h in source.event_headers if _header(headers, h)), "")
        if not event:
            raise UnknownEventError(f"missing {source.event_headers[-1]} header")
        if source.name == "gitea":
            return parse_gitea(event, payload)
        return parse_github(event, payload, intake_label=self.settings.github_intake_label)

    # --- replay protection -------------------------------------------------------------
    def _claim(self, source: str, delivery: str) -> bool:
        return self.deliveries.claim_delivery(source, delivery, stale_after_s=WEBHOOK_CLAIM_STALE_S)

    def _record(self, source: str, delivery: str, outcome: Outcome) -> None:
        text = f"{outcome.status}: {outcome.reason}" if outcome.reason else outcome.status
        task_id = outcome.task.id if outcome.task is not None else None
        self.deliveries.record_delivery(source, delivery, text, task_id)

    def _release(self, source: str, delivery: str) -> None:
        self.deliveries.release_delivery(source, delivery)

    # --- acting ------------------------------------------------------------------------
    def _act(self, ctx: _Delivery, event: WebhookEvent) -> Outcome:
        source, actor = ctx.source, ctx.actor
        try:
            if isinstance(event, Ignored):
                return Outcome("ignored", event.reason)
            if isinstance(event, PullRequestMerged):
                return self._merged(ctx, event)
            if isinstance(event, PullRequestClosed):
                task = self._task_on_branch(event.repo, event.branch)
                why = f"pull request #{event.number} closed without merging on {source}"
                return self._cancel(ctx, task, why, event.branch)
            if isinstance(event, ChangesRequested):
                task = self._task_on_branch(event.repo, event.branch)
                who = f" by {event.reviewer}" if event.reviewer else ""
                why = f"changes requested{who} on pull request #{event.number}"
                if event.body.strip():
                    why += f": {event.body.strip()[:MAX_REVIEW_CHARS]}"
                return self._rollback(ctx, task, why, event.branch)
            if isinstance(event, BranchPushed):
                task = self._task_on_branch(event.repo, event.branch)
                if task is None:
                    return Outcome("ignored", f"no task works on branch {event.branch}")
                return self._note(actor, task, f"push to {event.branch} ({event.after[:12]})")
            if isinstance(event, IssueOpened):
                return self._intake(actor, event)
            if isinstance(event, IssueCancelled):
                task = self._task_of_issue(event.ref)
                return self._cancel(ctx, task, event.reason, _describe(event.ref))
            if isinstance(event, IssueReopened):
                task = self._task_of_issue(event.ref)
                if task is not None and event.state and self._own_state(task, event.state):
                    return Outcome("ignored", f"{event.state} is the state we set", task)
                return self._rollback(ctx, task, event.reason, _describe(event.ref))
        except (IntegrationError, UsageError):
            raise
        except OrchestratorError as exc:  # the service refused: conflict, bad input, git
            return Outcome("rejected", str(exc))
        raise AssertionError(f"unhandled webhook event {event!r}")

    def _merged(self, ctx: _Delivery, event: PullRequestMerged) -> Outcome:
        task = self._task_on_branch(event.repo, event.branch)
        if task is None:
            return Outcome("ignored", f"no task works on branch {event.branch}")
        reason = f"pull request #{event.number} merged on {ctx.source}"
        if task.stage != "deploy" or task.failed:
            state = "failed" if task.failed else task.stage
            return self._note(ctx.actor, task, f"{reason} (task {state}: not moved)")
        # The crossing (merge check, deploy, health window) never runs in the request.
        return self._intend(ctx, task, Action.MERGED, reason)

    def _cancel(self, ctx: _Delivery, task: Task | None, why: str, what: str) -> Outcome:
        if task is None:
            return Outcome("ignored", f"no task for {what}")
        if task.stage in TERMINAL_STAGES:
            return Outcome("ignored", f"task is already {task.stage}", task)
        return self._intend(ctx, task, Action.CANCEL, why)

    def _rollback(self, ctx: _Delivery, task: Task | None, why: str, what: str) -> Outcome:
        if task is None:
            return Outcome("ignored", f"no task for {what}")
        if task.stage not in ROLLBACK_TARGET:
            allowed = ", ".join(ROLLBACK_TARGET)
            return Outcome("ignored", f"task is in {task.stage}; rollback applies from {allowed}")
        return self._intend(ctx, task, Action.ROLLBACK, why)

    def _intend(self, ctx: _Delivery, task: Task, action: str, reason: str) -> Outcome:
        """Record the intent in the inbox (applied by the inbox loop): 202."""
        check_text(reason, "the reason")  # refused input: 422, nothing recorded
        intent, created = self.inbox.record_intent(
            task_id=task.id,
            action=action,
            actor=ctx.actor,
            reason=reason,
            source=ctx.source,
            delivery_id=ctx.delivery,
            event_kind=EventKind.INBOX_RECORDED,
            event_reason=f"{action} from {ctx.source} recorded: {reason}",
        )
        if self._on_intent is not None:
            self._on_intent()
        return Outcome(
            "accepted",
            reason,
            task,
            http_status=202,
            extra={"intent": intent.id, "action": action},
            recorded=created,
        )

    def _note(self, actor: str, task: Task, reason: str) -> Outcome:
        with self.store.transaction() as tx:
            tx.add_event(EventKind.WEBHOOK, actor=actor, task_id=task.id, reason=reason)
        return Outcome("recorded", reason, task)

    def _own_state(self, task: Task, state: str) -> bool:
        """Whether ``state`` is the one write-back sets for the task's stage (our echo)."""
        ours = tracker_state(self.settings, "plane", task.stage)
        return ours is not None and ours.lower() == state.lower()

    # --- intake ------------------------------------------------------------------------
    def _intake(self, actor: str, event: IssueOpened) -> Outcome:
        ref = event.ref
        origin: dict[str, Any]
        if ref.tracker == "plane":
            project = self.settings.plane_projects.get(ref.project)
            if project is None:
                return Outcome("ignored", f"Plane project {ref.project} is not in plane_projects")
            identifier = (
                project.identifier
                or ref.identifier
                or self.integrations.plane().project_identifier(ref.project)
            )
            repo_path = Path(project.repo).expanduser()
            work_item = f"{identifier}-{ref.number}"
            origin = {
                "tracker": "plane",
                "workspace": self.settings.plane_workspace,
                "project_id": ref.project,
                "issue_id": ref.issue_id,
                "sequence_id": ref.number,
            }
        else:
            found = repository_for_forge_repo(self.settings, ref.project)
            if found is None:
                return Outcome(
                    "ignored",
                    f"no repository is configured for {ref.project} "
                    "([repos.<name>] path and forge_repo)",
                )
            repo_path = found
            work_item = f"{self.settings.github_work_item_prefix}-{ref.number}"
            origin = {"tracker": "github", "repo": ref.project, "number": ref.number}
        try:
            check_repo_allowed(self.settings, repo_path)
        except ForbiddenError as exc:
            # Not remembered: once the repository is listed, a redelivery creates the task.
            return Outcome("refused", str(exc), remember=False)
        title = " ".join(event.title.split())[:MAX_TITLE_CHARS] or work_item
        description = event.description.replace("\x00", "")[:MAX_DESCRIPTION_CHARS]
        try:
            task = self.service.create_task(
                repo_path=repo_path,
                title=title,
                work_item=work_item,
                description=description,
                actor=actor,
                origin=origin,
            )
        except ConflictError as exc:
            return Outcome("exists", str(exc))
        return Outcome("created", f"{_describe(ref)} became task {task.work_item}", task)

    # --- finding the task ------------------------------------------------------------------
    def _task_on_branch(self, repo: str, branch: str) -> Task | None:
        """The task working on ``branch`` in the forge repository ``repo``, if exactly one."""
        matching = [
            task
            for task in self.deliveries.tasks_on_branch(branch)
            if (forge_choice(self.settings, Path(task.repository)).repo or repo).lower()
            == repo.lower()
        ]
        if len(matching) > 1:
            matching = [task for task in matching if task.stage not in TERMINAL_STAGES]
        return matching[0] if len(matching) == 1 else None

    def _task_of_issue(self, ref: IssueRef) -> Task | None:
        """The task created from the tracker issue ``ref`` (by its origin's key)."""
        key = issue_key(ref.tracker, project=ref.project, number=ref.number, issue_id=ref.issue_id)
        return None if key is None else self.deliveries.task_of_origin(key)


def sender_actor(source: str, payload: Mapping[str, Any]) -> str:
    """Who sent a delivery, for the audit trail: ``github:<login>``, ``plane:<name>``;
    ``webhook:<source>`` when the payload does not say."""
    who: Any = None
    sender = payload.get("sender")
    if isinstance(sender, dict):  # GitHub and Gitea
        who = sender.get("login") or sender.get("username")
    activity = payload.get("activity")
    if who is None and isinstance(activity, dict) and isinstance(activity.get("actor"), dict):
        actor = activity["actor"]  # Plane
        who = actor.get("display_name") or actor.get("email") or actor.get("id")
    if not isinstance(who, str | int) or isinstance(who, bool) or not str(who).strip():
        return f"webhook:{source}"
    # Printable, bounded, and storable whatever the sender put there (lone surrogates).
    text = str(who).encode("utf-8", "replace").decode("utf-8")
    text = "".join(ch for ch in text if ch.isprintable() and not ch.isspace())
    return f"{source}:{text[:MAX_SENDER_CHARS] or '?'}"


def _describe(ref: IssueRef) -> str:
    if ref.tracker == "plane":
        if not ref.number:
            return f"Plane work item {ref.issue_id}"
        return f"Plane work item {ref.identifier or ref.project}-{ref.number}"
    return f"GitHub issue {ref.project}#{ref.number}"
