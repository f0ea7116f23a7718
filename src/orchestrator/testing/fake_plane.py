"""A local fake of Plane's REST API (``/api/v1``) and of its webhooks.

Calls the Plane tracker makes, in the documented shapes (``X-API-Key`` required, else
401 ``{"detail": ...}``):

* ``GET /api/v1/workspaces/{slug}/projects/{project_id}/`` — the project (``identifier``);
* ``GET .../projects/{project_id}/states/`` — ``{"results": [{"id", "name", "group"}]}``;
* ``PATCH .../projects/{project_id}/issues/{issue_id}/`` — the work item, ``state`` set;
* ``POST .../projects/{project_id}/issues/{issue_id}/comments/`` — 201 the comment; a
  second comment with the same ``external_source`` and ``external_id``: 409.

:meth:`FakePlane.webhook` builds a delivery in Plane's real shape (``{"event", "action",
"webhook_id", "workspace_id", "data", "activity"}``; ``data`` carries no
``project_detail``, only the project's id) signed with ``X-Plane-Signature`` (hex
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
# The workspace member every fake delivery names as its actor.
ACTOR_ID: Final = "6bb20d1c-4960-41ca-af4f-cee01de160c4"
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
        """The work item as the REST API answers it (``project`` an id, no details)."""
        return {
            "id": item.id,
            "name": item.name,
            "description_html": item.description_html,
            "sequence_id": item.sequence_id,
            "project": item.project,
            "workspace": self.workspace_id,
            "state": item.state,
        }

    @property
    def workspace_id(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, self.workspace))

    # --- webhooks out ----------------------------------------------------------------------
    def webhook(
        self,
        item: FakeWorkItem,
        action: str,
        secret: str,
        *,
        delivery: str | None = None,
        field: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A signed ``issue`` delivery about ``item`` (``created``, ``updated``, ``deleted``).

        The shape Plane's webhook task sends: ``data`` is the work item as its expand
        serializer writes it (every column, ``state`` expanded to ``{id, name, color,
        group}``, labels and assignees as lists, ``project`` and ``workspace`` as ids,
        no ``project_detail``), or only ``{"id"}`` for a deletion; ``activity`` says which
        ``field`` changed and who did it. The body is signed as Plane signs it, over
        ``json.dumps(payload)``.
        """
        if action.startswith("delete"):
            data: dict[str, Any] = {"id": item.id}
        else:
            state = next(s for s in self.states[item.project] if s["id"] == item.state)
            data = {
                **self.item_json(item),
                "state": {
                    "id": state["id"],
                    "name": state["name"],
                    "color": "#60646C",
                    "group": state["group"],
                },
                "description_stripped": _strip_html(item.description_html) or None,
                "description_binary": None,
                "priority": "none",
                "estimate_point": None,
                "start_date": None,
                "target_date": None,
                "point": None,
                "completed_at": None,
                "archived_at": None,
                "is_draft": False,
                "external_source": None,
                "external_id": None,
                "created_by": ACTOR_ID,
                "updated_by": ACTOR_ID,
                "parent": None,
                "type": None,
                "cycle": None,
                "module": None,
                "labels": [],
                "assignees": [],
                "created_at": "2026-01-05T10:00:00.000000Z",
                "updated_at": "2026-01-05T10:00:00.000000Z",
                "deleted_at": None,
                "sort_order": 65535.0,
            }
        payload = {
            "event": "issue",
            "action": action,
            "webhook_id": str(uuid.uuid4()),
            "workspace_id": self.workspace_id,
            "data": data,
            "activity": {
                "field": field,
                "new_value": None,
                "old_value": None,
                "actor": {
                    "id": ACTOR_ID,
                    "first_name": "Bob",
                    "last_name": "",
                    "avatar": "",
                    "avatar_url": None,
                    "is_bot": False,
                    "display_name": "Bob",
                },
                "old_identifier": None,
                "new_identifier": None,
            },
        }
        body = json.dumps(payload).encode()
        return body, {
            "X-Plane-Delivery": delivery or str(uuid.uuid4()),
            "X-Plane-Event": "issue",
            "X-Plane-Signature": hmac_sha256(secret, body),
        }


def _strip_html(text: str) -> str:
    return " ".join(re.sub(r"<[^>]*>", " ", text).split())
