"""The GitHub forge, over GitHub's REST API (``api.github.com`` or Enterprise ``/api/v3``).

=========================  =========================================================  =======
what                       call                                                       answers
=========================  =========================================================  =======
find the pull request      ``GET /repos/{owner}/{repo}/pulls?head=owner:branch&state=all``  200
open one                   ``POST /repos/{owner}/{repo}/pulls``                       201
                           (422 when one exists already)
comment                    ``GET|POST /repos/{owner}/{repo}/issues/{n}/comments``     200/201
commit status              ``POST /repos/{owner}/{repo}/statuses/{sha}``              201
merge                      ``PUT /repos/{owner}/{repo}/pulls/{n}/merge``              200
                           (``merge_method``: merge, squash or rebase; 405 when not
                           mergeable, 409 when the head moved)
is merged                  ``GET /repos/{owner}/{repo}/pulls/{n}/merge``              204/404
=========================  =========================================================  =======

Authentication: ``Authorization: Bearer <forge_token>``, with ``Accept:
application/vnd.github+json`` and ``X-GitHub-Api-Version: 2022-11-28`` (set by the
wiring).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import httpx

from orchestrator.apiclient import JsonApi, as_dict, as_list, complaint
from orchestrator.errors import IntegrationError
from orchestrator.forges.base import (
    CommitState,
    MergeMethod,
    MergeOutcome,
    PullRequest,
    comment_marker,
    pull_request_body,
    pull_request_title,
)
from orchestrator.store import Task

__all__ = ["GITHUB_API_VERSION", "GITHUB_HEADERS", "GitHubForge"]

GITHUB_API_VERSION: Final = "2022-11-28"
GITHUB_HEADERS: Final = {
    "Accept": "application/vnd.github+json",
    "X-GitHub-Api-Version": GITHUB_API_VERSION,
}
PER_PAGE: Final = 100


def _pull_request(data: dict[str, Any]) -> PullRequest:
    return PullRequest(
        number=int(data.get("number") or 0),
        url=str(data.get("html_url") or ""),
        head=str(as_dict(data.get("head")).get("ref") or ""),
        base=str(as_dict(data.get("base")).get("ref") or ""),
        state=str(data.get("state") or "open"),
        merged=bool(data.get("merged") or data.get("merged_at")),
    )


class GitHubForge:
    """Pull requests, comments, statuses and merges on one GitHub repository."""

    name = "github"

    def __init__(
        self,
        client: httpx.Client,
        repo: str,
        merge_method: MergeMethod = MergeMethod.MERGE,
        *,
        push: Callable[[Task], None] | None = None,
    ) -> None:
        if "/" not in repo:
            raise IntegrationError(f"github: forge_repo {repo!r} is not 'owner/name'")
        self.api = JsonApi("github", client)
        self.repo = repo
        self.owner = repo.split("/", 1)[0]
        self.merge_method = merge_method
        self.push = push

    # --- pull requests -------------------------------------------------------------------
    def find_pull_request(self, task: Task) -> PullRequest | None:
        """The task branch's pull request: an open one first, else a merged one."""
        listed = as_list(
            self.api.json(
                "GET",
                f"/repos/{self.repo}/pulls",
                params={
                    "head": f"{self.owner}:{task.branch}",
                    "base": task.base_branch,
                    "state": "all",
                    "per_page": PER_PAGE,
                },
                expect=(200,),
            )
        )
        pulls = [_pull_request(as_dict(item)) for item in listed]
        pulls = [p for p in pulls if p.head == task.branch and p.base == task.base_branch]
        for pull in pulls:
            if pull.state == "open":
                return pull
        return next((pull for pull in pulls if pull.merged), None)

    def open_pull_request(self, task: Task) -> PullRequest:
        found = self.find_pull_request(task)
        if found is not None:
            return found
        if self.push is not None:
            self.push(task)
        response = self.api.call(
            "POST",
            f"/repos/{self.repo}/pulls",
            json={
                "title": pull_request_title(task),
                "head": task.branch,
                "base": task.base_branch,
                "body": pull_request_body(task),
            },
            expect=(201, 422),
        )
        if response.status_code == 422:
            found = self.find_pull_request(task)  # "A pull request already exists"
            if found is None:
                raise IntegrationError(
                    f"github: cannot open a pull request for {task.branch}: {complaint(response)}"
                )
            return found
        return _pull_request(as_dict(response.json()))

    # --- comments and statuses -----------------------------------------------------------
    def comment(self, task: Task, body: str, *, key: str) -> None:
        number = self.open_pull_request(task).number
        path = f"/repos/{self.repo}/issues/{number}/comments"
        marker = comment_marker(key)
        existing = as_list(self.api.json("GET", path, params={"per_page": PER_PAGE}))
        if any(marker in str(as_dict(item).get("body", "")) for item in existing):
            return
        self.api.call("POST", path, json={"body": f"{body}\n\n{marker}"}, expect=(201,))

    def set_status(
        self,
        task: Task,
        sha: str,
        state: CommitState,
        *,
        context: str,
        description: str,
        target_url: str = "",
    ) -> None:
        payload: dict[str, str] = {
            "state": str(state),
            "context": context,
            "description": description[:140],
        }
        if target_url:
            payload["target_url"] = target_url
        self.api.call("POST", f"/repos/{self.repo}/statuses/{sha}", json=payload, expect=(201,))

    # --- merging -------------------------------------------------------------------------
    def merge(self, task: Task) -> MergeOutcome:
        pull = self.open_pull_request(task)
        if pull.merged:
            return MergeOutcome(self._merge_sha(pull.number), already_merged=True)
        response = self.api.call(
            "PUT",
            f"/repos/{self.repo}/pulls/{pull.number}/merge",
            json={
                "commit_title": f"Merge {task.branch}: {task.work_item} {task.title}",
                "merge_method": str(self.merge_method),
            },
            expect=(200, 405, 409),
        )
        if response.status_code == 200:
            return MergeOutcome(str(as_dict(response.json()).get("sha") or ""), False)
        if self._pull_merged(pull.number):
            return MergeOutcome(self._merge_sha(pull.number), already_merged=True)
        raise IntegrationError(
            f"github: cannot merge pull request #{pull.number} of {task.branch} "
            f"({response.status_code}): {complaint(response)}"
        )

    def is_merged(self, task: Task) -> bool:
        pull = self.find_pull_request(task)
        return pull is not None and self._pull_merged(pull.number)

    def _pull_merged(self, number: int) -> bool:
        path = f"/repos/{self.repo}/pulls/{number}/merge"
        return self.api.call("GET", path, expect=(204, 404)).status_code == 204

    def _merge_sha(self, number: int) -> str:
        data = as_dict(self.api.json("GET", f"/repos/{self.repo}/pulls/{number}", expect=(200,)))
        return str(data.get("merge_commit_sha") or "")
