"""Local fakes of Gitea's and GitHub's pull request APIs, and of their webhooks.

They speak the documented shapes the forge adapters use (Gitea's swagger under
``/api/v1``; GitHub's REST API at the root):

=======================================  ==========================================
Gitea                                    GitHub
=======================================  ==========================================
``GET /repos/{o}/{r}/pulls?state=``      ``GET /repos/{o}/{r}/pulls?head=o:b&state=``
``POST .../pulls`` 201, 409 if one is    ``POST .../pulls`` 201, 422 "A pull request
open for the same head and base          already exists for o:b."
``GET .../pulls/{n}``                    ``GET .../pulls/{n}``
``POST .../pulls/{n}/merge`` (``Do``)    ``PUT .../pulls/{n}/merge`` (``merge_method``)
200 empty; 405 merged / not mergeable;   200 ``{"sha", "merged", "message"}``; 405 not
409 conflict                             mergeable; 409 head moved
``GET .../pulls/{n}/merge`` 204 / 404    ``GET .../pulls/{n}/merge`` 204 / 404
``GET|POST .../issues/{n}/comments``     ``GET|POST .../issues/{n}/comments``
``POST .../statuses/{sha}`` 201          ``POST .../statuses/{sha}`` 201
``Authorization: token T``; else 401     ``Authorization: Bearer T``; else 401
=======================================  ==========================================

Knobs: :attr:`FakeForgeBase.conflicted` (merges answer 409), :meth:`merge_outside`
(someone merged in the web UI). :meth:`webhook` builds and signs a delivery the way the
service does (Gitea: ``X-Gitea-Event``, ``X-Gitea-Delivery``, ``X-Gitea-Signature`` =
hex HMAC-SHA256; GitHub: ``X-GitHub-Event``, ``X-GitHub-Delivery``,
``X-Hub-Signature-256`` = ``sha256=`` + hex).
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from orchestrator.testing.fake_http import FakeService, hmac_sha256

__all__ = ["FakeGitHub", "FakeGitea", "FakeIssue", "FakePull"]

DEFAULT_TOKEN: Final = "forge-token-1"  # noqa: S105 - the fake's own token
REPO: Final = r"/repos/(?P<repo>[^/]+/[^/]+)"


@dataclass
class FakePull:
    number: int
    repo: str
    head: str
    base: str
    title: str
    body: str
    state: str = "open"
    merged: bool = False
    merge_commit_sha: str | None = None
    merge_method: str | None = None
    comments: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FakeIssue:
    number: int
    repo: str
    title: str
    body: str = ""
    labels: list[str] = field(default_factory=list)
    state: str = "open"
    state_reason: str | None = None
    comments: list[dict[str, Any]] = field(default_factory=list)


class FakeForgeBase(FakeService):
    """What Gitea and GitHub share: pull requests, comments, statuses, merges."""

    flavor = ""
    prefix = ""

    def __init__(self, *, token: str = DEFAULT_TOKEN, host: str = "127.0.0.1") -> None:
        super().__init__(host=host)
        self.token = token
        self.pulls: list[FakePull] = []
        self.issues: list[FakeIssue] = []
        self.statuses: dict[str, list[dict[str, Any]]] = {}
        self.merges: list[tuple[int, str]] = []  # (number, method), each merge that happened
        self.conflicted = False
        self._numbers = itertools.count(1)
        self._comment_ids = itertools.count(100)
        self._shas = itertools.count(1)
        p = self.prefix + REPO
        self.route("GET", p + r"/pulls", self._list)
        self.route("POST", p + r"/pulls", self._open)
        self.route("GET", p + r"/pulls/(?P<n>\d+)", self._get)
        self.route("GET", p + r"/pulls/(?P<n>\d+)/merge", self._is_merged)
        self.route("GET", p + r"/issues/(?P<n>\d+)/comments", self._comments)
        self.route("POST", p + r"/issues/(?P<n>\d+)/comments", self._comment)
        self.route("POST", p + r"/statuses/(?P<sha>[0-9a-fA-F]+)", self._status)
        self.route("PATCH", p + r"/issues/(?P<n>\d+)", self._patch_issue)

    @property
    def api_url(self) -> str:
        """The base URL to configure as ``forge_base_url``."""
        return self.url + self.prefix

    # --- knobs ---------------------------------------------------------------------------
    def add_pull(self, repo: str, head: str, base: str = "main", title: str = "t") -> FakePull:
        with self.lock:
            pull = FakePull(next(self._numbers), repo, head, base, title, "")
            self.pulls.append(pull)
            return pull

    def add_issue(
        self, repo: str, title: str, body: str = "", labels: tuple[str, ...] = ()
    ) -> FakeIssue:
        """An issue; issues and pull requests share one numbering, as on both forges."""
        with self.lock:
            issue = FakeIssue(next(self._numbers), repo, title, body, list(labels))
            self.issues.append(issue)
            return issue

    def merge_outside(self, number: int) -> FakePull:
        """Someone merged the pull request on the forge itself."""
        with self.lock:
            pull = self._pull(number)
            assert pull is not None
            self._do_merge(pull, "merge")
            return pull

    # --- shared behaviour ----------------------------------------------------------------
    def authorized(self, headers: Mapping[str, str]) -> bool:
        given = headers.get("authorization", "")
        return given in (f"token {self.token}", f"Bearer {self.token}")

    def _pull(self, number: int | str, repo: str | None = None) -> FakePull | None:
        for pull in self.pulls:
            if pull.number == int(number) and (repo is None or pull.repo == repo):
                return pull
        return None

    def _do_merge(self, pull: FakePull, method: str) -> str:
        pull.merged, pull.state, pull.merge_method = True, "closed", method
        pull.merge_commit_sha = f"{next(self._shas):040x}"
        self.merges.append((pull.number, method))
        return pull.merge_commit_sha

    def pull_json(self, pull: FakePull) -> dict[str, Any]:
        owner, name = pull.repo.split("/")
        repo = {"full_name": pull.repo, "name": name, "owner": {"login": owner}}
        return {
            "id": 1000 + pull.number,
            "number": pull.number,
            "title": pull.title,
            "body": pull.body,
            "state": pull.state,
            "merged": pull.merged,
            "merge_commit_sha": pull.merge_commit_sha,
            "html_url": f"{self.url}/{pull.repo}/pulls/{pull.number}",
            "head": {"ref": pull.head, "label": f"{owner}:{pull.head}", "repo": repo},
            "base": {"ref": pull.base, "label": f"{owner}:{pull.base}", "repo": repo},
        }

    def _matching(self, repo: str, query: dict[str, str]) -> list[FakePull]:
        state = query.get("state", "open")
        found = [p for p in self.pulls if p.repo == repo]
        if state != "all":
            found = [p for p in found if p.state == state]
        return found

    def _list(self, m: re.Match[str], body: Any, query: dict[str, str], h: Any) -> Any:
        return 200, [self.pull_json(p) for p in self._matching(m["repo"], query)]

    def _get(self, m: re.Match[str], body: Any, query: Any, h: Any) -> tuple[int, Any]:
        pull = self._pull(m["n"], m["repo"])
        if pull is None:
            return 404, {"message": "Not Found"}
        return 200, self.pull_json(pull)

    def _is_merged(self, m: re.Match[str], body: Any, query: Any, h: Any) -> tuple[int, Any]:
        pull = self._pull(m["n"], m["repo"])
        if pull is None or not pull.merged:
            return 404, {"message": "Not Found"}
        return 204, None

    def _open_checked(self, repo: str, body: Any) -> FakePull | tuple[int, Any]:
        if not isinstance(body, dict) or not all(body.get(k) for k in ("head", "base", "title")):
            return 422, {"message": "Validation Failed: head, base and title are required"}
        return FakePull(0, repo, str(body["head"]), str(body["base"]), body["title"], "")

    def _open(self, m: re.Match[str], body: Any, query: Any, h: Any) -> tuple[int, Any]:
        checked = self._open_checked(m["repo"], body)
        if isinstance(checked, tuple):
            return checked
        for pull in self.pulls:
            if (pull.repo, pull.head, pull.base, pull.state) == (
                checked.repo,
                checked.head,
                checked.base,
                "open",
            ):
                return self.exists(pull)
        checked.number = next(self._numbers)
        checked.body = str(body.get("body") or "")
        self.pulls.append(checked)
        return 201, self.pull_json(checked)

    def exists(self, pull: FakePull) -> tuple[int, Any]:
        raise NotImplementedError

    def _commentable(self, m: re.Match[str]) -> FakePull | FakeIssue | None:
        """The pull request or issue number ``n`` (comments live on both)."""
        found: FakePull | FakeIssue | None = self._pull(m["n"], m["repo"])
        if found is None:
            found = self._issue(m["n"], m["repo"])
        return found

    def _issue(self, number: int | str, repo: str) -> FakeIssue | None:
        return next((i for i in self.issues if i.number == int(number) and i.repo == repo), None)

    def _comments(self, m: re.Match[str], body: Any, query: Any, h: Any) -> tuple[int, Any]:
        thread = self._commentable(m)
        if thread is None:
            return 404, {"message": "Not Found"}
        return 200, list(thread.comments)

    def _comment(self, m: re.Match[str], body: Any, query: Any, h: Any) -> tuple[int, Any]:
        thread = self._commentable(m)
        if thread is None:
            return 404, {"message": "Not Found"}
        if not isinstance(body, dict) or not isinstance(body.get("body"), str):
            return 422, {"message": "Validation Failed: body is required"}
        comment = {"id": next(self._comment_ids), "body": body["body"], "user": {"login": "orch"}}
        thread.comments.append(comment)
        return 201, comment

    def _patch_issue(self, m: re.Match[str], body: Any, query: Any, h: Any) -> tuple[int, Any]:
        issue = self._issue(m["n"], m["repo"])
        if issue is None:
            return 404, {"message": "Not Found"}
        if not isinstance(body, dict) or body.get("state") not in (None, "open", "closed"):
            return 422, {"message": "Validation Failed: state"}
        reason = body.get("state_reason")
        if reason not in (None, "completed", "not_planned", "reopened"):
            return 422, {"message": "Validation Failed: state_reason"}
        issue.state = body.get("state") or issue.state
        issue.state_reason = reason
        return 200, self.issue_json(issue)

    def issue_json(self, issue: FakeIssue) -> dict[str, Any]:
        return {
            "number": issue.number,
            "title": issue.title,
            "body": issue.body,
            "state": issue.state,
            "state_reason": issue.state_reason,
            "labels": [{"name": label} for label in issue.labels],
        }

    def _status(self, m: re.Match[str], body: Any, query: Any, h: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or body.get("state") not in (
            "pending",
            "success",
            "error",
            "failure",
            "warning",
        ):
            return 422, {"message": "Validation Failed: state"}
        status = {"id": len(self.statuses) + 1, **body}
        self.statuses.setdefault(m["sha"], []).append(status)
        return 201, status

    # --- webhooks out ----------------------------------------------------------------------
    def pull_request_event(self, pull: FakePull, action: str = "closed") -> dict[str, Any]:
        """The ``pull_request`` delivery's payload for ``pull``."""
        owner, name = pull.repo.split("/")
        return {
            "action": action,
            "number": pull.number,
            "pull_request": self.pull_json(pull),
            "repository": {"full_name": pull.repo, "name": name, "owner": {"login": owner}},
            "sender": {"login": "bob"},
        }

    def issues_event(
        self, issue: FakeIssue, action: str, label: str | None = None
    ) -> dict[str, Any]:
        """The ``issues`` delivery's payload for ``issue`` (``label`` for ``labeled``)."""
        owner, name = issue.repo.split("/")
        payload: dict[str, Any] = {
            "action": action,
            "issue": self.issue_json(issue),
            "repository": {"full_name": issue.repo, "name": name, "owner": {"login": owner}},
            "sender": {"login": "bob"},
        }
        if label is not None:
            payload["label"] = {"name": label}
        return payload

    def webhook(
        self, event: str, payload: dict[str, Any], secret: str, delivery: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one delivery, signed as the service signs it."""
        raise NotImplementedError


class FakeGitea(FakeForgeBase):
    """Gitea's API under ``/api/v1``."""

    name = flavor = "gitea"
    prefix = "/api/v1"

    def __init__(self, *, token: str = DEFAULT_TOKEN, host: str = "127.0.0.1") -> None:
        super().__init__(token=token, host=host)
        self.route("POST", self.prefix + REPO + r"/pulls/(?P<n>\d+)/merge", self._merge)

    def exists(self, pull: FakePull) -> tuple[int, Any]:
        return 409, {
            "message": f"pull request already exists for these targets [id: {1000 + pull.number}"
            f", issue_id: {pull.number}, head_branch: {pull.head}, base_branch: {pull.base}]",
            "url": f"{self.url}/api/swagger",
        }

    def _merge(self, m: re.Match[str], body: Any, query: Any, h: Any) -> tuple[int, Any]:
        pull = self._pull(m["n"], m["repo"])
        if pull is None:
            return 404, {"message": "Not Found"}
        do = body.get("Do") if isinstance(body, dict) else None
        if do not in ("merge", "rebase", "rebase-merge", "squash", "fast-forward-only"):
            return 422, {"message": "[Do]: Required"}
        if pull.merged:
            return 405, {"message": "The PR is already merged"}
        if self.conflicted:
            return 409, {"message": "Merge Conflict"}
        self._do_merge(pull, do)
        return 200, None

    def webhook(
        self, event: str, payload: dict[str, Any], secret: str, delivery: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        return body, {
            "X-Gitea-Event": event,
            "X-Gitea-Event-Type": event,
            "X-Gitea-Delivery": delivery or str(uuid.uuid4()),
            "X-Gitea-Signature": hmac_sha256(secret, body),
        }


class FakeGitHub(FakeForgeBase):
    """GitHub's REST API at the root (as ``https://api.github.com``)."""

    name = flavor = "github"

    def __init__(self, *, token: str = DEFAULT_TOKEN, host: str = "127.0.0.1") -> None:
        super().__init__(token=token, host=host)
        self.route("PUT", REPO + r"/pulls/(?P<n>\d+)/merge", self._merge)

    def unauthorized(self) -> tuple[int, Any]:
        return 401, {"message": "Bad credentials", "status": "401"}

    def _matching(self, repo: str, query: dict[str, str]) -> list[FakePull]:
        found = super()._matching(repo, query)
        head = query.get("head")
        if head:  # "owner:branch"
            branch = head.split(":", 1)[-1]
            found = [p for p in found if p.head == branch]
        if query.get("base"):
            found = [p for p in found if p.base == query["base"]]
        return found

    def pull_json(self, pull: FakePull) -> dict[str, Any]:
        data = super().pull_json(pull)
        data["merged_at"] = "2026-01-01T00:00:00Z" if pull.merged else None
        return data

    def exists(self, pull: FakePull) -> tuple[int, Any]:
        owner = pull.repo.split("/")[0]
        return 422, {
            "message": "Validation Failed",
            "errors": [
                {
                    "resource": "PullRequest",
                    "code": "custom",
                    "message": f"A pull request already exists for {owner}:{pull.head}.",
                }
            ],
            "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
        }

    def _merge(self, m: re.Match[str], body: Any, query: Any, h: Any) -> tuple[int, Any]:
        pull = self._pull(m["n"], m["repo"])
        if pull is None:
            return 404, {"message": "Not Found"}
        method = (body or {}).get("merge_method", "merge") if isinstance(body, dict) else "merge"
        if method not in ("merge", "squash", "rebase"):
            return 422, {"message": "Validation Failed: merge_method"}
        if pull.merged or self.conflicted:
            return 405, {"message": "Pull Request is not mergeable"}
        sha = self._do_merge(pull, method)
        return 200, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}

    def webhook(
        self, event: str, payload: dict[str, Any], secret: str, delivery: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        return body, {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-Hub-Signature-256": "sha256=" + hmac_sha256(secret, body),
        }
