"""What an inbound webhook delivery means, as a value: pure parsing, no I/O.

Theory of operation
-------------------
A verified delivery (its signature already checked) is turned by
:func:`parse_gitea`, :func:`parse_github` or :func:`parse_plane` into one of the values
below; :mod:`orchestrator.webhooks.intake` then acts on it through the existing paths (the
transition lease and CAS, :class:`~orchestrator.lifecycle.service.TaskService`). The table:

==========  ========================================  ====================================
source      event (header) / payload                  meaning
==========  ========================================  ====================================
gitea       ``pull_request``, action ``closed``,      :class:`PullRequestMerged`
            ``pull_request.merged`` true
gitea       same, ``merged`` false                    :class:`PullRequestClosed`
gitea       ``pull_request_review_rejected``          :class:`ChangesRequested`
            (``X-Gitea-Event: pull_request_rejected``)
gitea       ``push`` to ``refs/heads/<branch>``       :class:`BranchPushed`
github      ``pull_request``, action ``closed``       merged / closed, as for Gitea
github      ``pull_request_review``, ``submitted``,   :class:`ChangesRequested`
            ``review.state`` ``changes_requested``
github      ``push``                                  :class:`BranchPushed`
github      ``issues`` ``labeled`` with the intake    :class:`IssueOpened`
            label (or ``opened`` already carrying it)
github      ``issues`` ``closed`` as ``not_planned``  :class:`IssueCancelled`
github      ``issues`` ``reopened``                   :class:`IssueReopened`
plane       ``issue`` ``created``                     :class:`IssueOpened`
plane       ``issue`` ``updated``, state group        :class:`IssueCancelled`
            ``cancelled``
plane       ``issue`` ``updated``, state group        :class:`IssueReopened`
            ``backlog`` / ``unstarted``
plane       ``issue`` ``deleted``                     :class:`IssueCancelled`
==========  ========================================  ====================================

Any other event is :class:`Ignored` (answered 200, so the sender neither retries it nor
marks the hook as failing): every event the service documents (the ``*_EVENTS`` sets,
each proven by a contract test with a payload of that event), and any other well-formed
event name too, since vendors add events (GitHub's ``sub_issues``, ``repository_ruleset``)
and a new one must not turn our endpoint red. An event name that is not a name at all
raises :class:`UnknownEventError`, and a payload of the wrong shape for an event we act
on :class:`MalformedPayloadError` (both answered 400 with the message).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from orchestrator.errors import UsageError

__all__ = [
    "GITEA_EVENTS",
    "GITHUB_EVENTS",
    "PLANE_EVENTS",
    "BranchPushed",
    "ChangesRequested",
    "Ignored",
    "IssueCancelled",
    "IssueOpened",
    "IssueRef",
    "IssueReopened",
    "MalformedPayloadError",
    "PullRequestClosed",
    "PullRequestMerged",
    "UnknownEventError",
    "WebhookEvent",
    "parse_gitea",
    "parse_github",
    "parse_plane",
]


class UnknownEventError(UsageError):
    """The event name is not one the service documents."""

    http_status = 400


class MalformedPayloadError(UsageError):
    """The payload is JSON but not the documented shape."""

    http_status = 400


@dataclass(frozen=True)
class PullRequestMerged:
    repo: str  # "owner/name" on the forge
    branch: str
    number: int


@dataclass(frozen=True)
class PullRequestClosed:
    repo: str
    branch: str
    number: int


@dataclass(frozen=True)
class ChangesRequested:
    repo: str
    branch: str
    number: int
    reviewer: str
    body: str


@dataclass(frozen=True)
class BranchPushed:
    repo: str
    branch: str
    after: str


@dataclass(frozen=True)
class IssueRef:
    """A work item in a tracker: Plane (project id, sequence, issue id) or GitHub
    ("owner/name", issue number)."""

    tracker: str
    project: str
    number: int
    issue_id: str = ""
    identifier: str = ""  # Plane's project identifier (PROJ), when the payload has it


@dataclass(frozen=True)
class IssueOpened:
    ref: IssueRef
    title: str
    description: str


@dataclass(frozen=True)
class IssueCancelled:
    ref: IssueRef
    reason: str


@dataclass(frozen=True)
class IssueReopened:
    ref: IssueRef
    reason: str
    state: str = ""  # the tracker state it was moved to (Plane's state name)


@dataclass(frozen=True)
class Ignored:
    reason: str


WebhookEvent = (
    PullRequestMerged
    | PullRequestClosed
    | ChangesRequested
    | BranchPushed
    | IssueOpened
    | IssueCancelled
    | IssueReopened
    | Ignored
)

# Gitea's hook event types (X-Gitea-Event-Type) and event names (X-Gitea-Event), as its
# webhook documentation and modules/webhook list them.
GITEA_EVENTS: Final = frozenset(
    {
        "create",
        "delete",
        "fork",
        "push",
        "issues",
        "issue_assign",
        "issue_label",
        "issue_milestone",
        "issue_comment",
        "pull_request",
        "pull_request_assign",
        "pull_request_label",
        "pull_request_milestone",
        "pull_request_comment",
        "pull_request_review_approved",
        "pull_request_review_rejected",
        "pull_request_review_comment",
        "pull_request_approved",
        "pull_request_rejected",
        "pull_request_sync",
        "pull_request_review_request",
        "wiki",
        "repository",
        "release",
        "package",
        "status",
        "workflow_run",
        "workflow_job",
        "schedule",
    }
)
# GitHub's webhook event names (X-GitHub-Event), as "Webhook events and payloads" in
# GitHub's documentation lists them (repository, organization and app webhooks alike: an
# organization's hook can point here too).
GITHUB_EVENTS: Final = frozenset(
    {
        "ping",
        "branch_protection_configuration",
        "branch_protection_rule",
        "check_run",
        "check_suite",
        "code_scanning_alert",
        "commit_comment",
        "create",
        "custom_property",
        "custom_property_values",
        "delete",
        "dependabot_alert",
        "deploy_key",
        "deployment",
        "deployment_protection_rule",
        "deployment_review",
        "deployment_status",
        "discussion",
        "discussion_comment",
        "fork",
        "github_app_authorization",
        "gollum",
        "installation",
        "installation_repositories",
        "installation_target",
        "issue_comment",
        "issue_dependencies",
        "issues",
        "label",
        "marketplace_purchase",
        "member",
        "membership",
        "merge_group",
        "meta",
        "milestone",
        "org_block",
        "organization",
        "package",
        "page_build",
        "personal_access_token_request",
        "project",
        "project_card",
        "project_column",
        "projects_v2",
        "projects_v2_item",
        "projects_v2_status_update",
        "public",
        "pull_request",
        "pull_request_review",
        "pull_request_review_comment",
        "pull_request_review_thread",
        "push",
        "registry_package",
        "release",
        "repository",
        "repository_advisory",
        "repository_dispatch",
        "repository_import",
        "repository_ruleset",
        "repository_vulnerability_alert",
        "secret_scanning_alert",
        "secret_scanning_alert_location",
        "secret_scanning_scan",
        "security_advisory",
        "security_and_analysis",
        "sponsorship",
        "star",
        "status",
        "sub_issues",
        "team",
        "team_add",
        "watch",
        "workflow_dispatch",
        "workflow_job",
        "workflow_run",
    }
)
# Plane's webhook events (payload "event" and X-Plane-Event; v2's dot names are split at
# the dot): project, cycle, module, work item (issue), work item comment, a work item
# added to a cycle or module, intake.
PLANE_EVENTS: Final = frozenset(
    {
        "project",
        "issue",
        "workitem",
        "work_item",
        "cycle",
        "module",
        "cycle_issue",
        "module_issue",
        "issue_comment",
        "workitem_comment",
        "intake",
        "intake_issue",
    }
)
# v1 sends created/updated/deleted (older servers create/update/delete).
_PLANE_ACTIONS: Final = {
    "created": "create",
    "create": "create",
    "updated": "update",
    "update": "update",
    "deleted": "delete",
    "delete": "delete",
}
_REF_HEADS: Final = "refs/heads/"
# What an event name looks like (any vendor): a well-formed name we do not know is
# ignored, anything else is not an event name.
_EVENT_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TAG: Final = re.compile(r"<[^>]*>")
_SPACES: Final = re.compile(r"[ \t]+")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedPayloadError(f"{where} is missing or not an object")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedPayloadError(f"{where} is missing or not a string")
    return value


def _number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise MalformedPayloadError(f"{where} is missing or not a positive number")
    return value


def _repository(payload: Mapping[str, Any]) -> str:
    return _text(_object(payload.get("repository"), "repository").get("full_name"), "full_name")


def _pull_request(payload: Mapping[str, Any]) -> tuple[dict[str, Any], str, int]:
    pull = _object(payload.get("pull_request"), "pull_request")
    head = _object(pull.get("head"), "pull_request.head")
    branch = _text(head.get("ref"), "pull_request.head.ref")
    number = _number(pull.get("number", payload.get("number")), "pull_request.number")
    return pull, branch, number


def _closed_pull_request(payload: Mapping[str, Any]) -> PullRequestMerged | PullRequestClosed:
    pull, branch, number = _pull_request(payload)
    repo = _repository(payload)
    if pull.get("merged") is True:
        return PullRequestMerged(repo, branch, number)
    return PullRequestClosed(repo, branch, number)


def _push(payload: Mapping[str, Any]) -> BranchPushed | Ignored:
    ref = _text(payload.get("ref"), "ref")
    if not ref.startswith(_REF_HEADS):
        return Ignored(f"push to {ref[:100]}, not a branch")
    after = payload.get("after")
    return BranchPushed(
        _repository(payload), ref[len(_REF_HEADS) :], after if isinstance(after, str) else ""
    )


def _unknown(vendor: str, event: str, known: frozenset[str]) -> Ignored | None:
    """``Ignored`` for a well-formed event name ``known`` lacks; None when it is known."""
    if event in known:
        return None
    if not _EVENT_NAME.fullmatch(event):
        shown = event[:60].encode("utf-8", "backslashreplace").decode("utf-8")
        raise UnknownEventError(f"{vendor} event {shown!r} is not an event name")
    return Ignored(f"{vendor.lower()} {event} is not an event orch knows")


def parse_gitea(event: str, payload: Mapping[str, Any]) -> WebhookEvent:
    """The meaning of a Gitea delivery (``event``: X-Gitea-Event-Type, else X-Gitea-Event)."""
    unknown = _unknown("Gitea", event, GITEA_EVENTS)
    if unknown is not None:
        return unknown
    action = payload.get("action")
    if event == "pull_request":
        if action == "closed":
            return _closed_pull_request(payload)
        return Ignored(f"pull_request {str(action)[:40]}")
    if event in ("pull_request_review_rejected", "pull_request_rejected"):
        _, branch, number = _pull_request(payload)
        review = payload.get("review") if isinstance(payload.get("review"), dict) else {}
        sender = payload.get("sender") if isinstance(payload.get("sender"), dict) else {}
        return ChangesRequested(
            _repository(payload),
            branch,
            number,
            str((sender or {}).get("login") or ""),
            str((review or {}).get("content") or ""),
        )
    if event == "push":
        return _push(payload)
    return Ignored(f"gitea {event} is not used")


def parse_github(event: str, payload: Mapping[str, Any], *, intake_label: str) -> WebhookEvent:
    """The meaning of a GitHub delivery (``event``: X-GitHub-Event)."""
    unknown = _unknown("GitHub", event, GITHUB_EVENTS)
    if unknown is not None:
        return unknown
    action = payload.get("action")
    if event == "ping":
        return Ignored("ping")
    if event == "pull_request":
        if action == "closed":
            return _closed_pull_request(payload)
        return Ignored(f"pull_request {str(action)[:40]}")
    if event == "pull_request_review":
        review = _object(payload.get("review"), "review")
        if action != "submitted" or str(review.get("state", "")).lower() != "changes_requested":
            return Ignored(f"review {str(review.get('state'))[:40]}")
        _, branch, number = _pull_request(payload)
        user = review.get("user") if isinstance(review.get("user"), dict) else {}
        return ChangesRequested(
            _repository(payload),
            branch,
            number,
            str((user or {}).get("login") or ""),
            str(review.get("body") or ""),
        )
    if event == "push":
        return _push(payload)
    if event == "issues":
        return _github_issue(action, payload, intake_label)
    return Ignored(f"github {event} is not used")


def _github_issue(action: Any, payload: Mapping[str, Any], intake_label: str) -> WebhookEvent:
    issue = _object(payload.get("issue"), "issue")
    if "pull_request" in issue:
        return Ignored("an issue event of a pull request")
    ref = IssueRef("github", _repository(payload), _number(issue.get("number"), "issue.number"))
    labels = {
        str(label.get("name")) for label in issue.get("labels") or [] if isinstance(label, dict)
    }
    if action == "labeled":
        label = _object(payload.get("label"), "label")
        if label.get("name") != intake_label:
            return Ignored(f"labeled {str(label.get('name'))[:60]}")
        return _github_opened(ref, issue)
    if action == "opened" and intake_label in labels:
        return _github_opened(ref, issue)
    if action == "closed":
        if issue.get("state_reason") == "not_planned":
            return IssueCancelled(ref, f"issue #{ref.number} closed as not planned")
        return Ignored(f"issue #{ref.number} closed ({str(issue.get('state_reason'))[:30]})")
    if action == "reopened":
        return IssueReopened(ref, f"issue #{ref.number} reopened")
    return Ignored(f"issues {str(action)[:40]}")


def _github_opened(ref: IssueRef, issue: Mapping[str, Any]) -> IssueOpened:
    body = issue.get("body")
    return IssueOpened(
        ref, _text(issue.get("title"), "issue.title"), body if isinstance(body, str) else ""
    )


def plane_description(data: Mapping[str, Any]) -> str:
    """A work item's description as text: ``description_stripped``, else the HTML's text."""
    stripped = data.get("description_stripped")
    if isinstance(stripped, str) and stripped.strip():
        return stripped.strip()
    raw = data.get("description_html")
    if isinstance(raw, str):
        # Tags become spaces (so "a<br>b" keeps two words), runs of spaces become one.
        return _SPACES.sub(" ", html.unescape(_TAG.sub(" ", raw))).strip()
    return ""


def parse_plane(payload: Mapping[str, Any]) -> WebhookEvent:
    """The meaning of a Plane delivery (``{"event", "action", "data"}``)."""
    event, action = payload.get("event"), payload.get("action")
    if not isinstance(event, str):
        raise MalformedPayloadError("event is missing or not a string")
    if "." in event:  # v2: "workitem.created"
        event, _, action = event.partition(".")
    unknown = _unknown("Plane", event, PLANE_EVENTS)
    if unknown is not None:
        return unknown
    if event not in ("issue", "workitem", "work_item"):
        return Ignored(f"plane {event} is not used")
    data = _object(payload.get("data"), "data")
    verb = _PLANE_ACTIONS.get(str(action), "")
    if verb == "delete":
        issue_id = _text(data.get("id"), "data.id")
        return IssueCancelled(IssueRef("plane", "", 0, issue_id), "work item deleted in Plane")
    ref = IssueRef(
        "plane",
        _text(data.get("project"), "data.project"),
        _number(data.get("sequence_id"), "data.sequence_id"),
        _text(data.get("id"), "data.id"),
        _identifier(data),
    )
    if verb == "create":
        return IssueOpened(ref, _text(data.get("name"), "data.name"), plane_description(data))
    if verb != "update":
        return Ignored(f"plane issue {str(action)[:40]}")
    state = data.get("state")
    if not isinstance(state, dict):
        return Ignored("plane issue updated (state without its group)")
    group, name = str(state.get("group") or ""), str(state.get("name") or "")
    if group == "cancelled":
        return IssueCancelled(ref, f"work item moved to {name or 'a cancelled state'} in Plane")
    if group in ("backlog", "unstarted"):
        return IssueReopened(ref, f"work item moved back to {name or group} in Plane", name)
    return Ignored(f"plane issue updated (state group {group[:30] or 'unknown'})")


def _identifier(data: Mapping[str, Any]) -> str:
    detail = data.get("project_detail")
    if isinstance(detail, dict) and isinstance(detail.get("identifier"), str):
        return str(detail["identifier"])
    return ""
