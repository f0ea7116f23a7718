"""The Gitea forge, over Gitea's REST API (``/api/v1``, as in its swagger).

=========================  ==================================================  ========
what                       call                                                answers
=========================  ==================================================  ========
find the pull request      ``GET /repos/{owner}/{repo}/pulls?state=all``       200
open one                   ``POST /repos/{owner}/{repo}/pulls``                201
comment                    ``GET|POST /repos/{owner}/{repo}/issues/{n}/comments``  200/201
commit status              ``POST /repos/{owner}/{repo}/statuses/{sha}``       201
merge                      ``POST /repos/{owner}/{repo}/pulls/{n}/merge``      200
                           (``Do``: merge, squash or rebase; 405 when it is
                           not mergeable or already merged, 409 on conflicts)
is merged                  ``GET /repos/{owner}/{repo}/pulls/{n}/merge``        204/404
=========================  ==================================================  ========

Authentication: ``Authorization: token <forge_token>`` (set on the client by the wiring).
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

__all__ = ["GiteaForge"]

PAGE_LIMIT: Final = 50
MAX_PAGES: Final = 20


def _pull_request(data: dict[str, Any]) -> PullRequest:
    return PullRequest(
        number=int(data.get("number") or 0),
        url=str(data.get("html_url") or ""),
        head=str(as_dict(data.get("head")).get("ref") or ""),
        base=str(as_dict(data.get("base")).get("ref") or ""),
        state=str(data.get("state") or "open"),
        merged=bool(data.get("merged")),
    )


class GiteaForge:
    """Pull requests, comments, statuses and merges on one Gitea repository."""

    name = "gitea"

    def __init__(
        self,
        client: httpx.Client,
        repo: str,
        merge_method: MergeMethod = MergeMethod.MERGE,
        *,
        push: Callable[[Task], None] | None = None,
    ) -> None:
        if "/" not in repo:
            raise IntegrationError(f"gitea: forge_repo {repo!r} is not 'owner/name'")
        self.api = JsonApi("gitea", client)
        self.repo = repo
        self.merge_method = merge_method
        # Puts the task branch on the server before a pull request names it.
        self.push = push

    # --- pull requests -------------------------------------------------------------------
    def find_pull_request(self, task: Task) -> PullRequest | None:
        """The task branch's pull request: an open one first, else a merged one."""
        merged: PullRequest | None = None
        for page in range(1, MAX_PAGES + 1):
            listed = as_list(
                self.api.json(
                    "GET",
                    f"/repos/{self.repo}/pulls",
                    params={"state": "all", "page": page, "limit": PAGE_LIMIT},
                    expect=(200,),
                )
            )
            for item in listed:
                pull = _pull_request(as_dict(item))
                if pull.head != task.branch or pull.base != task.base_branch:
                    continue
                if pull.state == "open":
                    return pull
                if pull.merged and merged is None:
                    merged = pull
            if len(listed) < PAGE_LIMIT:
                break
        return merged

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
                "head": task.branch,
                "base": task.base_branch,
                "title": pull_request_title(task),
                "body": pull_request_body(task),
            },
            expect=(201, 409),
        )
        if response.status_code == 409:  # opened meanwhile by someone else
            found = self.find_pull_request(task)
            if found is None:
                raise IntegrationError(
                    f"gitea: a pull request for {task.branch} exists but is gone"
                )
            return found
        return _pull_request(as_dict(response.json()))

    # --- comments and statuses -----------------------------------------------------------
    def comment(self, task: Task, body: str, *, key: str) -> None:
        number = self.open_pull_request(task).number
        path = f"/repos/{self.repo}/issues/{number}/comments"
        marker = comment_marker(key)
        existing = as_list(self.api.json("GET", path, expect=(200,)))
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
        self.api.call(
            "POST",
            f"/repos/{self.repo}/statuses/{sha}",
            json={
                "state": str(state),
                "context": context,
                "description": description[:140],
                "target_url": target_url,
            },
            expect=(200, 201),
        )

    # --- merging -------------------------------------------------------------------------
    def merge(self, task: Task) -> MergeOutcome:
        pull = self.open_pull_request(task)
        if pull.merged:
            return MergeOutcome(self._merge_sha(pull.number), already_merged=True)
        response = self.api.call(
            "POST",
            f"/repos/{self.repo}/pulls/{pull.number}/merge",
            json={
                "Do": str(self.merge_method),
                "MergeTitleField": f"Merge {task.branch}: {task.work_item} {task.title}",
                "delete_branch_after_merge": False,
            },
            expect=(200, 405, 409),
        )
        if response.status_code != 200:
            if self._pull_merged(pull.number):
                return MergeOutcome(self._merge_sha(pull.number), already_merged=True)
            raise IntegrationError(
                f"gitea: cannot merge pull request #{pull.number} of {task.branch} "
                f"({response.status_code}): {complaint(response)}"
            )
        return MergeOutcome(self._merge_sha(pull.number), already_merged=False)

    def is_merged(self, task: Task) -> bool:
        pull = self.find_pull_request(task)
        return pull is not None and self._pull_merged(pull.number)

    def _pull_merged(self, number: int) -> bool:
        path = f"/repos/{self.repo}/pulls/{number}/merge"
        return self.api.call("GET", path, expect=(204, 404)).status_code == 204

    def _merge_sha(self, number: int) -> str:
        data = as_dict(self.api.json("GET", f"/repos/{self.repo}/pulls/{number}", expect=(200,)))
        return str(data.get("merge_commit_sha") or "")
