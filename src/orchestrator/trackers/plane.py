"""The Plane tracker, over Plane's REST API (``/api/v1``, header ``X-API-Key``).

======================  ===============================================================
what                    call
======================  ===============================================================
comment                 ``POST /api/v1/workspaces/{slug}/projects/{project_id}/issues/
                        {issue_id}/comments/`` with ``comment_html``, ``external_source``
                        and ``external_id`` (the idempotency key: Plane answers 409 to a
                        second comment with the same pair, which counts as done)
state                   ``GET .../projects/{project_id}/states/`` (name → id, cached),
                        then ``PATCH .../projects/{project_id}/issues/{issue_id}/``
                        with ``{"state": id}``
project identifier      ``GET .../projects/{project_id}/`` → ``identifier`` (PROJ of
                        PROJ-42), when ``[plane_projects.<id>] identifier`` is not set
======================  ===============================================================

Origin of a task from Plane: ``{"tracker": "plane", "workspace", "project_id",
"issue_id", "sequence_id"}``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any, Final

import httpx

from orchestrator.apiclient import JsonApi, as_dict, as_list
from orchestrator.errors import IntegrationError
from orchestrator.trackers.base import Origin, state_for

__all__ = ["EXTERNAL_SOURCE", "PLANE_DEFAULT_STATES", "PlaneTracker"]

# Our comments' external_source: with the key as external_id, Plane deduplicates them.
EXTERNAL_SOURCE: Final = "orchestrator"
# Plane's default project states, by our stage.
PLANE_DEFAULT_STATES: Final[Mapping[str, str]] = {
    "analysis": "In Progress",
    "brd-approval": "In Progress",
    "architecture": "In Progress",
    "development": "In Progress",
    "testing": "In Progress",
    "deploy-staging": "In Progress",
    "deploy": "In Progress",
    "done": "Done",
    "cancelled": "Cancelled",
}


def _results(data: Any) -> list[Any]:
    """A Plane list: a bare list, or paginated ``{"results": [...]}``."""
    if isinstance(data, dict):
        return as_list(data.get("results"))
    return as_list(data)


class PlaneTracker:
    """Comments and states on Plane work items of one workspace."""

    name = "plane"

    def __init__(
        self, client: httpx.Client, workspace: str, states: Mapping[str, str] | None = None
    ) -> None:
        self.api = JsonApi("plane", client)
        self.workspace = workspace
        self.states = dict(states or {})
        self._state_ids: dict[tuple[str, str], str] = {}

    def _project(self, project_id: str) -> str:
        return f"/api/v1/workspaces/{self.workspace}/projects/{project_id}"

    def _issue(self, origin: Origin) -> str:
        project_id, issue_id = origin.get("project_id"), origin.get("issue_id")
        if not project_id or not issue_id:
            raise IntegrationError(f"plane: the task's origin names no issue: {dict(origin)}")
        return f"{self._project(str(project_id))}/issues/{issue_id}"

    def comment(self, origin: Origin, body: str, *, key: str) -> None:
        paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in body.splitlines() if line)
        self.api.call(
            "POST",
            f"{self._issue(origin)}/comments/",
            json={
                "comment_html": paragraphs or "<p></p>",
                "external_source": EXTERNAL_SOURCE,
                "external_id": key,
            },
            expect=(200, 201, 409),  # 409: this key was posted before
        )

    def set_state(self, origin: Origin, stage: str) -> None:
        name = state_for(stage, self.states, PLANE_DEFAULT_STATES)
        if name is None:
            return
        state_id = self.state_id(str(origin.get("project_id")), name)
        self.api.call("PATCH", f"{self._issue(origin)}/", json={"state": state_id})

    def state_id(self, project_id: str, name: str) -> str:
        """The id of the project's state called ``name`` (case-insensitive)."""
        cached = self._state_ids.get((project_id, name.lower()))
        if cached is not None:
            return cached
        listed = _results(self.api.json("GET", f"{self._project(project_id)}/states/"))
        for item in listed:  # one listing caches every state of the project
            state = as_dict(item)
            if state.get("name") and state.get("id"):
                self._state_ids[(project_id, str(state["name"]).lower())] = str(state["id"])
        cached = self._state_ids.get((project_id, name.lower()))
        if cached is not None:
            return cached
        known = ", ".join(str(as_dict(item).get("name")) for item in listed) or "none"
        raise IntegrationError(
            f"plane: project {project_id} has no state {name!r} (states: {known}); "
            "fix tracker_states"
        )

    def project_identifier(self, project_id: str) -> str:
        """The project's identifier (PROJ of PROJ-42)."""
        data = as_dict(self.api.json("GET", f"{self._project(project_id)}/"))
        identifier = str(data.get("identifier") or "")
        if not identifier:
            raise IntegrationError(f"plane: project {project_id} has no identifier")
        return identifier
