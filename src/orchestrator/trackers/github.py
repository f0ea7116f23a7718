"""GitHub issues as the tracker, over GitHub's REST API.

======================  ===============================================================
what                    call
======================  ===============================================================
comment                 ``GET|POST /repos/{owner}/{repo}/issues/{number}/comments``; the
                        body carries an invisible ``<!-- orch-key: ... -->`` marker, and a
                        comment already carrying the key is not posted again
state                   ``PATCH /repos/{owner}/{repo}/issues/{number}`` with ``state``
                        (``open`` / ``closed``) and, for ``closed:not_planned`` or
                        ``closed:completed``, ``state_reason``
======================  ===============================================================

Origin of a task from GitHub: ``{"tracker": "github", "repo": "owner/name", "number"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import httpx

from orchestrator.apiclient import JsonApi, as_dict, as_list
from orchestrator.errors import IntegrationError
from orchestrator.forges.base import comment_marker
from orchestrator.trackers.base import Origin, state_for

__all__ = ["GITHUB_DEFAULT_STATES", "GitHubIssuesTracker"]

GITHUB_DEFAULT_STATES: Final[Mapping[str, str]] = {
    "done": "closed:completed",
    "cancelled": "closed:not_planned",
}
STATE_REASONS: Final = frozenset({"completed", "not_planned", "reopened"})


class GitHubIssuesTracker:
    """Comments and open/closed states on GitHub issues."""

    name = "github"

    def __init__(self, client: httpx.Client, states: Mapping[str, str] | None = None) -> None:
        self.api = JsonApi("github", client)
        self.states = dict(states or {})

    @staticmethod
    def _issue(origin: Origin) -> str:
        repo, number = origin.get("repo"), origin.get("number")
        if not repo or not number:
            raise IntegrationError(f"github: the task's origin names no issue: {dict(origin)}")
        return f"/repos/{repo}/issues/{number}"

    def comment(self, origin: Origin, body: str, *, key: str) -> None:
        path = f"{self._issue(origin)}/comments"
        marker = comment_marker(key)
        existing = as_list(self.api.json("GET", path, params={"per_page": 100}))
        if any(marker in str(as_dict(item).get("body", "")) for item in existing):
            return
        self.api.call("POST", path, json={"body": f"{body}\n\n{marker}"}, expect=(201,))

    def set_state(self, origin: Origin, stage: str) -> None:
        wanted = state_for(stage, self.states, GITHUB_DEFAULT_STATES)
        if wanted is None:
            return
        state, _, reason = wanted.partition(":")
        if state not in ("open", "closed") or (reason and reason not in STATE_REASONS):
            raise IntegrationError(
                f"github: tracker state {wanted!r} for {stage} is not open, closed, "
                "closed:completed or closed:not_planned; fix tracker_states"
            )
        payload = {"state": state} | ({"state_reason": reason} if reason else {})
        self.api.call("PATCH", self._issue(origin), json=payload, expect=(200,))
