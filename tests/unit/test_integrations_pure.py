"""The pure parts of the integrations: what a webhook delivery means, and the rule that
only the composition root imports concrete forge and tracker adapters.

Seen failing: the import rule with ``from orchestrator.forges.local import LocalForge``
added to ``outbox.py``; the Plane parser with the v2 dot-name split removed
(``workitem.created`` was an unknown event).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.webhooks.events import (
    BranchPushed,
    ChangesRequested,
    Ignored,
    IssueCancelled,
    IssueOpened,
    IssueReopened,
    MalformedPayloadError,
    PullRequestClosed,
    PullRequestMerged,
    UnknownEventError,
    parse_gitea,
    parse_github,
    parse_plane,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "orchestrator"
ADAPTERS = {
    "orchestrator.forges.local",
    "orchestrator.forges.gitea",
    "orchestrator.forges.github",
    "orchestrator.trackers.local",
    "orchestrator.trackers.plane",
    "orchestrator.trackers.github",
}
# The composition root.
ALLOWED = {SRC / "wiring.py"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_only_the_wiring_imports_concrete_adapters() -> None:
    offenders = {
        str(path.relative_to(SRC)): sorted(_imports(path) & ADAPTERS)
        for path in SRC.rglob("*.py")
        if path not in ALLOWED and _imports(path) & ADAPTERS
    }
    assert offenders == {}


REPOSITORY = {"full_name": "acme/shop"}


def _pull(merged: bool) -> dict[str, object]:
    return {"number": 3, "merged": merged, "head": {"ref": "orch/SHOP-1"}}


def test_gitea_and_github_pull_requests() -> None:
    merged = {"action": "closed", "pull_request": _pull(True), "repository": REPOSITORY}
    closed = {"action": "closed", "pull_request": _pull(False), "repository": REPOSITORY}
    for parse in (parse_gitea, lambda e, p: parse_github(e, p, intake_label="orch")):
        assert parse("pull_request", merged) == PullRequestMerged("acme/shop", "orch/SHOP-1", 3)
        assert parse("pull_request", closed) == PullRequestClosed("acme/shop", "orch/SHOP-1", 3)
        assert isinstance(parse("pull_request", {**merged, "action": "opened"}), Ignored)
        push = {"ref": "refs/heads/orch/SHOP-1", "after": "ab", "repository": REPOSITORY}
        assert parse("push", push) == BranchPushed("acme/shop", "orch/SHOP-1", "ab")
        assert isinstance(parse("push", {**push, "ref": "refs/tags/v1"}), Ignored)


def test_reviews_requesting_changes() -> None:
    github = {
        "action": "submitted",
        "review": {"state": "changes_requested", "body": "tests?", "user": {"login": "eve"}},
        "pull_request": _pull(False),
        "repository": REPOSITORY,
    }
    assert parse_github("pull_request_review", github, intake_label="orch") == ChangesRequested(
        "acme/shop", "orch/SHOP-1", 3, "eve", "tests?"
    )
    approved = {**github, "review": {"state": "approved"}}
    assert isinstance(parse_github("pull_request_review", approved, intake_label="orch"), Ignored)
    gitea = {
        "action": "reviewed",
        "pull_request": _pull(False),
        "review": {"type": "pull_request_review_rejected", "content": "no"},
        "sender": {"login": "bob"},
        "repository": REPOSITORY,
    }
    assert parse_gitea("pull_request_review_rejected", gitea) == ChangesRequested(
        "acme/shop", "orch/SHOP-1", 3, "bob", "no"
    )


def test_github_issues_intake_by_label() -> None:
    issue = {"number": 9, "title": "Fix it", "body": None, "labels": [{"name": "orch"}]}
    labeled = {"action": "labeled", "label": {"name": "orch"}, "issue": issue}
    event = parse_github("issues", {**labeled, "repository": REPOSITORY}, intake_label="orch")
    assert isinstance(event, IssueOpened)
    assert (event.ref.project, event.ref.number, event.title) == ("acme/shop", 9, "Fix it")
    other = {**labeled, "label": {"name": "bug"}, "repository": REPOSITORY}
    assert isinstance(parse_github("issues", other, intake_label="orch"), Ignored)
    not_planned = {
        "action": "closed",
        "issue": {**issue, "state_reason": "not_planned"},
        "repository": REPOSITORY,
    }
    assert isinstance(parse_github("issues", not_planned, intake_label="orch"), IssueCancelled)
    reopened = {"action": "reopened", "issue": issue, "repository": REPOSITORY}
    assert isinstance(parse_github("issues", reopened, intake_label="orch"), IssueReopened)


def test_plane_v1_and_v2_names() -> None:
    data = {
        "id": "i-1",
        "project": "p-1",
        "sequence_id": 4,
        "name": "Add a cart",
        "description_html": "<p>a <b>cart</b></p>",
    }
    for payload in (
        {"event": "issue", "action": "created", "data": data},
        {"event": "workitem.created", "data": data},
    ):
        event = parse_plane(payload)
        assert isinstance(event, IssueOpened)
        assert (event.ref.number, event.title, event.description) == (4, "Add a cart", "a cart")
    cancelled = {**data, "state": {"group": "cancelled", "name": "Won't do"}}
    assert isinstance(
        parse_plane({"event": "issue", "action": "updated", "data": cancelled}), IssueCancelled
    )
    started = {**data, "state": {"group": "started", "name": "In Progress"}}
    assert isinstance(
        parse_plane({"event": "issue", "action": "updated", "data": started}), Ignored
    )
    assert isinstance(parse_plane({"event": "cycle", "action": "created", "data": {}}), Ignored)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: parse_gitea("Non sense", {}), UnknownEventError, "is not an event name"),
        (
            lambda: parse_github("pull_request", {"action": "closed"}, intake_label="orch"),
            MalformedPayloadError,
            "pull_request is missing or not an object",
        ),
        (
            lambda: parse_github(
                "pull_request",
                {"action": "closed", "pull_request": {**_pull(True), "number": True}},
                intake_label="orch",
            ),
            MalformedPayloadError,
            "pull_request.number is missing or not a positive number",
        ),
        (lambda: parse_plane({"data": {}}), MalformedPayloadError, "event is missing"),
        (lambda: parse_plane({"event": "spr\x00int"}), UnknownEventError, "not an event name"),
    ],
)
def test_bad_deliveries_say_what_is_wrong(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call()


def test_the_init_templates_integration_lines_load(tmp_path: Path) -> None:
    """``orch init``'s commented integration keys, uncommented, are valid settings."""
    from orchestrator.cli.main import INIT_TEMPLATE
    from orchestrator.settings import load_settings

    keys = ("telegram_chat_id", "tracker_mode", "forge =", "merge_method", "tracker =")
    lines = [
        line[2:] if line.startswith("# ") and line[2:].startswith(keys) else line
        for line in INIT_TEMPLATE.splitlines()
    ]
    uncommented = sum(
        1 for old, new in zip(INIT_TEMPLATE.splitlines(), lines, strict=True) if old != new
    )
    assert uncommented == len(keys)
    (tmp_path / "orch.toml").write_text("\n".join(lines) + "\n")
    settings = load_settings(tmp_path / "orch.toml")
    assert (settings.telegram_chat_id, settings.tracker_mode) == ("-1001234567890", "edit")
    assert (settings.forge, settings.merge_method, settings.tracker) == ("local", "merge", "local")
