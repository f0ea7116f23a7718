"""Contract per vendor: a delivery of every event type the vendor documents is answered
2xx (``ignored`` when orch has no use for it), never ``400 unknown event``.

Each payload has the top-level shape the vendor's own documentation gives for that
event ("Webhook events and payloads" for GitHub, Gitea's webhook docs, Plane's webhook
docs and its webhook task), with no task behind it, so each is ignored and nothing is
created or remembered beyond the delivery. Plane's deliveries come in its real shape:
``data`` as Plane's serializer writes the work item, no ``project_detail``.

Seen failing: on the code before this file, ``dependabot_alert``, ``code_scanning_alert``,
``secret_scanning_alert``, ``deploy_key``, ``repository_ruleset``, ``sub_issues`` and
two dozen other documented GitHub events were ``400 unknown GitHub event``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from tests.integration.test_webhooks import GITEA_SECRET, GITHUB_SECRET, PLANE_SECRET, Hub, make_hub

from orchestrator.store import Store
from orchestrator.store.schema import tasks
from orchestrator.testing.fake_http import hmac_sha256
from orchestrator.webhooks.events import GITEA_EVENTS, GITHUB_EVENTS, PLANE_EVENTS

REPOSITORY = {
    "id": 1296269,
    "name": "shop",
    "full_name": "acme/shop",
    "private": False,
    "owner": {"login": "acme", "id": 1, "type": "Organization"},
    "default_branch": "main",
}
SENDER = {"login": "octocat", "id": 583231, "type": "User"}
ORGANIZATION = {"login": "acme", "id": 1}
INSTALLATION = {"id": 42, "node_id": "MDIz"}
ALERT = {"number": 3, "state": "open", "html_url": "https://github.com/acme/shop/security/3"}
ISSUE = {"number": 9, "title": "Crash", "state": "open", "labels": [], "body": None}
PULL = {
    "number": 5,
    "state": "open",
    "merged": False,
    "head": {"ref": "feature/x", "sha": "a" * 40},
    "base": {"ref": "main", "sha": "b" * 40},
}

# event: the documented action (or None) and the event's own objects.
GITHUB_PAYLOADS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "ping": (None, {"zen": "Keep it logically awesome.", "hook_id": 1, "hook": {"id": 1}}),
    "branch_protection_configuration": ("enabled", {}),
    "branch_protection_rule": ("created", {"rule": {"id": 1, "name": "main"}}),
    "check_run": ("completed", {"check_run": {"id": 1, "status": "completed"}}),
    "check_suite": ("completed", {"check_suite": {"id": 1, "head_branch": "main"}}),
    "code_scanning_alert": ("created", {"alert": ALERT, "ref": "refs/heads/main"}),
    "commit_comment": ("created", {"comment": {"id": 1, "body": "nice"}}),
    "create": (None, {"ref": "v1.0", "ref_type": "tag", "master_branch": "main"}),
    "custom_property": ("created", {"definition": {"property_name": "team"}}),
    "custom_property_values": ("updated", {"new_property_values": []}),
    "delete": (None, {"ref": "old", "ref_type": "branch"}),
    "dependabot_alert": ("created", {"alert": ALERT}),
    "deploy_key": ("created", {"key": {"id": 1, "title": "ci", "read_only": True}}),
    "deployment": ("created", {"deployment": {"id": 1, "ref": "main"}}),
    "deployment_protection_rule": ("requested", {"environment": "prod", "event": "push"}),
    "deployment_review": ("approved", {"workflow_run": {"id": 1}}),
    "deployment_status": ("created", {"deployment_status": {"state": "success"}}),
    "discussion": ("created", {"discussion": {"number": 1, "title": "Idea"}}),
    "discussion_comment": ("created", {"comment": {"id": 1}, "discussion": {"number": 1}}),
    "fork": (None, {"forkee": {"full_name": "bob/shop"}}),
    "github_app_authorization": ("revoked", {}),
    "gollum": (None, {"pages": [{"page_name": "Home", "action": "edited"}]}),
    "installation": ("created", {"installation": INSTALLATION, "repositories": []}),
    "installation_repositories": (
        "added",
        {"repositories_added": [], "repository_selection": "selected"},
    ),
    "installation_target": (
        "renamed",
        {"account": {"login": "acme"}, "target_type": "Organization"},
    ),
    "issue_comment": ("created", {"issue": ISSUE, "comment": {"id": 1, "body": "me too"}}),
    "issue_dependencies": ("blocked_by_added", {"issue": ISSUE, "blocking_issue": ISSUE}),
    "issues": ("opened", {"issue": ISSUE}),
    "label": ("created", {"label": {"name": "bug", "color": "f00"}}),
    "marketplace_purchase": ("purchased", {"marketplace_purchase": {"account": {"login": "a"}}}),
    "member": ("added", {"member": {"login": "bob"}}),
    "membership": (
        "added",
        {"member": {"login": "bob"}, "team": {"name": "core"}, "scope": "team"},
    ),
    "merge_group": ("checks_requested", {"merge_group": {"head_ref": "gh-readonly-queue/main"}}),
    "meta": ("deleted", {"hook_id": 1, "hook": {"id": 1}}),
    "milestone": ("created", {"milestone": {"number": 1, "title": "v1"}}),
    "org_block": ("blocked", {"blocked_user": {"login": "spam"}}),
    "organization": ("member_added", {"membership": {"user": {"login": "bob"}}}),
    "package": ("published", {"package": {"name": "shop", "package_type": "npm"}}),
    "page_build": (None, {"id": 1, "build": {"status": "built"}}),
    "personal_access_token_request": ("created", {"personal_access_token_request": {"id": 1}}),
    "project": ("created", {"project": {"id": 1, "name": "Roadmap"}}),
    "project_card": ("created", {"project_card": {"id": 1, "note": "x"}}),
    "project_column": ("created", {"project_column": {"id": 1, "name": "To do"}}),
    "projects_v2": ("created", {"projects_v2": {"id": 1, "title": "Plan"}}),
    "projects_v2_item": ("created", {"projects_v2_item": {"id": 1, "content_type": "Issue"}}),
    "projects_v2_status_update": ("created", {"projects_v2_status_update": {"id": 1}}),
    "public": (None, {}),
    "pull_request": ("opened", {"number": 5, "pull_request": PULL}),
    "pull_request_review": (
        "submitted",
        {"review": {"id": 1, "state": "approved", "body": "LGTM"}, "pull_request": PULL},
    ),
    "pull_request_review_comment": ("created", {"comment": {"id": 1}, "pull_request": PULL}),
    "pull_request_review_thread": ("resolved", {"thread": {"comments": []}, "pull_request": PULL}),
    "push": (None, {"ref": "refs/heads/feature/x", "before": "0" * 40, "after": "c" * 40}),
    "registry_package": ("published", {"registry_package": {"name": "shop"}}),
    "release": ("published", {"release": {"tag_name": "v1.0", "draft": False}}),
    "repository": ("created", {}),
    "repository_advisory": ("published", {"repository_advisory": {"ghsa_id": "GHSA-1"}}),
    "repository_dispatch": ("on-demand-test", {"branch": "main", "client_payload": {}}),
    "repository_import": (None, {"status": "success"}),
    "repository_ruleset": ("created", {"repository_ruleset": {"id": 1, "name": "main"}}),
    "repository_vulnerability_alert": ("create", {"alert": ALERT}),
    "secret_scanning_alert": ("created", {"alert": {**ALERT, "secret_type": "token"}}),
    "secret_scanning_alert_location": ("created", {"alert": ALERT, "location": {"type": "commit"}}),
    "secret_scanning_scan": ("completed", {"type": "backfill", "source": "git"}),
    "security_advisory": ("published", {"security_advisory": {"ghsa_id": "GHSA-1"}}),
    "security_and_analysis": (None, {"changes": {"from": {}}}),
    "sponsorship": ("created", {"sponsorship": {"tier": {"name": "$5"}}}),
    "star": ("created", {"starred_at": "2026-01-05T10:00:00Z"}),
    "status": (None, {"sha": "c" * 40, "state": "success", "branches": []}),
    "sub_issues": ("sub_issue_added", {"sub_issue": ISSUE, "parent_issue": ISSUE}),
    "team": ("created", {"team": {"name": "core", "slug": "core"}}),
    "team_add": (None, {"team": {"name": "core", "slug": "core"}}),
    "watch": ("started", {}),
    "workflow_dispatch": (None, {"ref": "refs/heads/main", "inputs": {}, "workflow": "ci.yml"}),
    "workflow_job": ("queued", {"workflow_job": {"id": 1, "status": "queued"}}),
    "workflow_run": ("completed", {"workflow_run": {"id": 1, "conclusion": "success"}}),
}

GITEA_COMMON = {"repository": {"id": 1, "full_name": "acme/shop"}, "sender": {"login": "bob"}}
GITEA_PULL = {"number": 5, "merged": False, "head": {"ref": "feature/x"}, "base": {"ref": "main"}}
GITEA_ISSUE = {"number": 9, "title": "Crash", "state": "open"}
GITEA_PAYLOADS: dict[str, dict[str, Any]] = {
    "create": {"ref": "v1", "ref_type": "tag", "sha": "c" * 40},
    "delete": {"ref": "old", "ref_type": "branch", "pusher_type": "user"},
    "fork": {"forkee": {"full_name": "bob/shop"}},
    "push": {"ref": "refs/heads/feature/x", "before": "0" * 40, "after": "c" * 40, "commits": []},
    "issues": {"action": "opened", "number": 9, "issue": GITEA_ISSUE},
    "issue_assign": {"action": "assigned", "number": 9, "issue": GITEA_ISSUE},
    "issue_label": {"action": "label_updated", "number": 9, "issue": GITEA_ISSUE},
    "issue_milestone": {"action": "milestoned", "number": 9, "issue": GITEA_ISSUE},
    "issue_comment": {"action": "created", "issue": GITEA_ISSUE, "comment": {"id": 1}},
    "pull_request": {"action": "opened", "number": 5, "pull_request": GITEA_PULL},
    "pull_request_assign": {"action": "assigned", "number": 5, "pull_request": GITEA_PULL},
    "pull_request_label": {"action": "label_updated", "number": 5, "pull_request": GITEA_PULL},
    "pull_request_milestone": {"action": "milestoned", "number": 5, "pull_request": GITEA_PULL},
    "pull_request_comment": {"action": "created", "pull_request": GITEA_PULL, "comment": {}},
    "pull_request_review_approved": {
        "action": "reviewed",
        "number": 5,
        "pull_request": GITEA_PULL,
        "review": {"type": "pull_request_review_approved", "content": "ok"},
    },
    "pull_request_review_rejected": {
        "action": "reviewed",
        "number": 5,
        "pull_request": GITEA_PULL,
        "review": {"type": "pull_request_review_rejected", "content": "no"},
    },
    "pull_request_review_comment": {
        "action": "reviewed",
        "number": 5,
        "pull_request": GITEA_PULL,
        "review": {"type": "pull_request_review_comment", "content": "hm"},
    },
    "pull_request_approved": {"action": "reviewed", "number": 5, "pull_request": GITEA_PULL},
    "pull_request_rejected": {"action": "reviewed", "number": 5, "pull_request": GITEA_PULL},
    "pull_request_sync": {"action": "synchronized", "number": 5, "pull_request": GITEA_PULL},
    "pull_request_review_request": {
        "action": "review_requested",
        "number": 5,
        "pull_request": GITEA_PULL,
    },
    "wiki": {"action": "created", "page": "Home", "comment": ""},
    "repository": {"action": "created"},
    "release": {"action": "published", "release": {"tag_name": "v1"}},
    "package": {"action": "created", "package": {"name": "shop", "type": "npm"}},
    "status": {"sha": "c" * 40, "state": "success", "context": "ci"},
    "workflow_run": {"action": "completed", "workflow_run": {"id": 1}},
    "workflow_job": {"action": "queued", "workflow_job": {"id": 1}},
    "schedule": {"action": "scheduled"},
}

PLANE_ACTOR = {"id": str(uuid.uuid4()), "display_name": "Bob", "is_bot": False}
PLANE_DATA: dict[str, dict[str, Any]] = {
    "project": {"id": str(uuid.uuid4()), "name": "Shop", "identifier": "SHOP", "network": 2},
    "cycle": {"id": str(uuid.uuid4()), "name": "Sprint 1", "project": str(uuid.uuid4())},
    "module": {"id": str(uuid.uuid4()), "name": "Cart", "project": str(uuid.uuid4())},
    "issue_comment": {"id": str(uuid.uuid4()), "comment_html": "<p>hi</p>"},
    "workitem_comment": {"id": str(uuid.uuid4()), "comment_html": "<p>hi</p>"},
    "cycle_issue": {"cycle": {"id": str(uuid.uuid4()), "name": "Sprint 1"}},
    "module_issue": {"module": {"id": str(uuid.uuid4()), "name": "Cart"}},
    "intake": {"id": str(uuid.uuid4()), "status": -2},
    "intake_issue": {"id": str(uuid.uuid4()), "status": -2, "issue": str(uuid.uuid4())},
}


@pytest.fixture
def hub(tmp_path: Path, db_url: str, store: Store) -> Iterator[Hub]:
    yield from make_hub(tmp_path, db_url, store)


def task_count(hub: Hub) -> int:
    with hub.store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar() or 0)


def test_every_documented_event_has_a_contract_payload() -> None:
    assert set(GITHUB_PAYLOADS) == set(GITHUB_EVENTS)
    assert set(GITEA_PAYLOADS) == set(GITEA_EVENTS)
    assert set(PLANE_DATA) | {"issue", "workitem", "work_item"} == set(PLANE_EVENTS)


def test_github_every_documented_event_is_answered_2xx(hub: Hub) -> None:
    for number, (event, (action, fields)) in enumerate(sorted(GITHUB_PAYLOADS.items())):
        payload = {
            **({"action": action} if action else {}),
            **fields,
            "repository": REPOSITORY,
            "organization": ORGANIZATION,
            "sender": SENDER,
            "installation": INSTALLATION,
        }
        body = json.dumps(payload).encode()
        answer = hub.post(
            "github",
            body,
            {
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": f"gh-{number}",
                "X-Hub-Signature-256": "sha256=" + hmac_sha256(GITHUB_SECRET, body),
            },
        )
        assert answer.status_code == 200, (event, answer.text)
        assert answer.json()["status"] == "ignored", (event, answer.text)
    assert task_count(hub) == 0


def test_gitea_every_documented_event_is_answered_2xx(hub: Hub) -> None:
    for number, (event, fields) in enumerate(sorted(GITEA_PAYLOADS.items())):
        body = json.dumps({**fields, **GITEA_COMMON}).encode()
        answer = hub.post(
            "gitea",
            body,
            {
                "X-Gitea-Event": event,
                "X-Gitea-Event-Type": event,
                "X-Gitea-Delivery": f"gt-{number}",
                "X-Gitea-Signature": hmac_sha256(GITEA_SECRET, body),
            },
        )
        assert answer.status_code == 200, (event, answer.text)
        assert answer.json()["status"] == "ignored", (event, answer.text)
    assert task_count(hub) == 0


@pytest.mark.parametrize("style", ["v1", "v2"])
def test_plane_every_documented_event_is_answered_2xx(hub: Hub, style: str) -> None:
    number = 0
    for event, data in sorted(PLANE_DATA.items()):
        for action in ("created", "updated", "deleted"):
            number += 1
            payload = {
                "event": event if style == "v1" else f"{event}.{action}",
                "action": action,
                "webhook_id": str(uuid.uuid4()),
                "workspace_id": str(uuid.uuid4()),
                "data": data if action != "deleted" else {"id": str(uuid.uuid4())},
                "activity": {"field": None, "actor": PLANE_ACTOR},
            }
            body = json.dumps(payload).encode()
            answer = hub.post(
                "plane",
                body,
                {
                    "X-Plane-Event": event,
                    "X-Plane-Delivery": f"pl-{style}-{number}",
                    "X-Plane-Signature": hmac_sha256(PLANE_SECRET, body),
                },
            )
            assert answer.status_code == 200, (event, action, answer.text)
            assert answer.json()["status"] == "ignored", (event, action, answer.text)
    assert task_count(hub) == 0


def test_plane_intake_from_the_real_payload_shape(hub: Hub) -> None:
    item = hub.plane.add_item(hub.project, "👩‍💻 Add a wishlist", "<p>Keep items</p>")
    body, headers = hub.plane.webhook(item, "created", PLANE_SECRET)
    data = json.loads(body)["data"]
    assert "project_detail" not in data  # Plane's serializer sends the project's id only
    assert data["project"] == hub.project
    assert isinstance(data["state"], dict)  # expanded: {id, name, color, group}
    answer = hub.post("plane", body, headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "created", answer.text
    task = hub.store.find_task(answer.json()["task"], None)
    assert task.title == "👩‍💻 Add a wishlist"
    assert task.description == "Keep items"
