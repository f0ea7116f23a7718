"""A local fake of Plane's REST API (``/api/v1``) and of its webhooks.

Calls the Plane tracker makes, in the documented shapes (``X-API-Key`` required, else
401 ``{"detail": ...}``):

* ``GET /api/v1/workspaces/{slug}/projects/{project_id}/`` — the project (``identifier``);
* ``GET .../projects/{project_id}/states/`` — ``{"results": [{"id", "name", "group"}]}``;
* ``PATCH .../projects/{project_id}/issues/{issue_id}/`` — the work item, ``state`` set;
* ``POST .../projects/{project_id}/issues/{issue_id}/comments/`` — 201 the comment; a
  second comment with the same ``external_source`` and ``external_id``: 409.

:meth:`FakePlane.webhook` builds a delivery (``{"event", "action", "webhook_id",
"workspace_id", "data", "activity"}``) signed with ``X-Plane-Signature`` (hex
HMAC-SHA256 of the body), ``X-Plane-Delivery`` and ``X-Plane-Event``.
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

__all__ = ["FakePlane", "FakeWorkItem"]

DEFAULT_API_KEY: Final = "plane_api_fake"
PROJECT: Final = r"/api/v1/workspaces/(?P<slug>[^/]+)/projects/(?P<project>[^/]+)"
STATES: Final = (
    ("Backlog", "backlog"),
    ("Todo", "unstarted"),
    ("In Progress", "started"),
    ("Done", "completed"),
    ("Cancelled", "cancelled"),
)


@dataclass
class FakeWorkItem:
    id: str
    project: str
    sequence_id: int
    name: str
    description_html: str = ""
    state: str = ""  # a state id
    comments: list[dict[str, Any]] = field(default_factory=list)


class FakePlane(FakeService):
    """One Plane workspace with projects, states and work items."""

    name = "plane"

    def __init__(self, *, workspace: str = "acme", api_key: str = DEFAULT_API_KEY) -> None:
        super().__init__()
        self.workspace = workspace
        self.api_key = api_key
        self.projects: dict[str, str] = {}  # id -> identifier
        self.states: dict[str, list[dict[str, str]]] = {}  # project id -> states
        self.items: dict[str, FakeWorkItem] = {}
        self._sequence = itertools.count(1)
        self.route("GET", PROJECT, self._project)
        self.route("GET", PROJECT + r"/states", self._states)
        self.route("PATCH", PROJECT + r"/issues/(?P<issue>[^/]+)", self._patch)
        self.route("POST", PROJECT + r"/issues/(?P<issue>[^/]+)/comments", self._comment)

    # --- knobs ---------------------------------------------------------------------------
    def add_project(self, identifier: str) -> str:
        project_id = str(uuid.uuid4())
        with self.lock:
            self.projects[project_id] = identifier
            self.states[project_id] = [
                {"id": str(uuid.uuid4()), "name": name, "group": group} for name, group in STATES
            ]
        return project_id

    def add_item(self, project_id: str, name: str, description: str = "") -> FakeWorkItem:
        with self.lock:
            item = FakeWorkItem(
                str(uuid.uuid4()),
                project_id,
                next(self._sequence),
                name,
                f"<p>{description}</p>" if description else "",
                self.state_id(project_id, "Backlog"),
            )
            self.items[item.id] = item
        return item

    def state_id(self, project_id: str, name: str) -> str:
        return next(s["id"] for s in self.states[project_id] if s["name"] == name)

    def state_name(self, item: FakeWorkItem) -> str:
        return next(s["name"] for s in self.states[item.project] if s["id"] == item.state)

    # --- the API -------------------------------------------------------------------------
    def authorized(self, headers: Mapping[str, str]) -> bool:
        return headers.get("x-api-key") == self.api_key

    def unauthorized(self) -> tuple[int, Any]:
        return 401, {"detail": "Authentication credentials were not provided."}

    def _known(self, m: re.Match[str]) -> bool:
        return m["slug"] == self.workspace and m["project"] in self.projects

    def _project(self, m: re.Match[str], body: Any, q: Any, h: Any) -> tuple[int, Any]:
        if not self._known(m):
            return 404, {"error": "Project not found"}
        project = m["project"]
        return 200, {"id": project, "identifier": self.projects[project], "name": "Shop"}

    def _states(self, m: re.Match[str], body: Any, q: Any, h: Any) -> tuple[int, Any]:
        if not self._known(m):
            return 404, {"error": "Project not found"}
        results = self.states[m["project"]]
        return 200, {"total_count": len(results), "next_cursor": None, "results": results}

    def _item(self, m: re.Match[str]) -> FakeWorkItem | None:
        item = self.items.get(m["issue"])
        return (
            item if item is not None and self._known(m) and item.project == m["project"] else None
        )

    def _patch(self, m: re.Match[str], body: Any, q: Any, h: Any) -> tuple[int, Any]:
        item = self._item(m)
        if item is None:
            return 404, {"error": "Issue not found"}
        if not isinstance(body, dict):
            return 400, {"error": "Invalid payload"}
        state = body.get("state")
        if state is not None:
            if state not in {s["id"] for s in self.states[item.project]}:
                return 400, {"state": ["Invalid pk - object does not exist."]}
            item.state = str(state)
        return 200, self.item_json(item)

    def _comment(self, m: re.Match[str], body: Any, q: Any, h: Any) -> tuple[int, Any]:
        item = self._item(m)
        if item is None:
            return 404, {"error": "Issue not found"}
        if not isinstance(body, dict) or not isinstance(body.get("comment_html"), str):
            return 400, {"comment_html": ["This field is required."]}
        source, external = body.get("external_source"), body.get("external_id")
        for comment in item.comments:
            if (
                source
                and external
                and (comment["external_source"], comment["external_id"])
                == (
                    source,
                    external,
                )
            ):
                return 409, {
                    "error": "Issue Comment with the same external id and external source "
                    "already exists",
                    "id": comment["id"],
                }
        comment = {
            "id": str(uuid.uuid4()),
            "comment_html": body["comment_html"],
            "external_source": source,
            "external_id": external,
            "issue": item.id,
        }
        item.comments.append(comment)
        return 201, comment

    def item_json(self, item: FakeWorkItem) -> dict[str, Any]:
        return {
            "id": item.id,
            "name": item.name,
            "description_html": item.description_html,
            "sequence_id": item.sequence_id,
            "project": item.project,
            "workspace": self.workspace,
            "state": item.state,
            "project_detail": {"id": item.project, "identifier": self.projects[item.project]},
        }

    # --- webhooks out ----------------------------------------------------------------------
    def webhook(
        self,
        item: FakeWorkItem,
        action: str,
        secret: str,
        *,
        delivery: str | None = None,
        with_state_detail: bool = True,
    ) -> tuple[bytes, dict[str, str]]:
        """A signed ``issue`` delivery about ``item`` (``created``, ``updated``, ...)."""
        data = self.item_json(item)
        if with_state_detail:  # Plane expands the state in issue deliveries
            state = next(s for s in self.states[item.project] if s["id"] == item.state)
            data["state"] = dict(state)
        payload = {
            "event": "issue",
            "action": action,
            "webhook_id": str(uuid.uuid4()),
            "workspace_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.workspace)),
            "data": data,
            "activity": {"actor": {"id": str(uuid.uuid4()), "display_name": "Bob"}},
        }
        body = json.dumps(payload).encode()
        return body, {
            "X-Plane-Delivery": delivery or str(uuid.uuid4()),
            "X-Plane-Event": "issue",
            "X-Plane-Signature": hmac_sha256(secret, body),
        }
