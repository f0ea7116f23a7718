"""The pure parts of access control: which role a request needs, role order, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.auth import (
    ROLES,
    UI_OPEN_PATHS,
    Principal,
    authorize,
    hash_token,
    in_job_environment,
    refuse_inside_job,
    required_role,
    validate_role,
    validate_token_name,
)
from orchestrator.cli.main import INIT_TEMPLATE
from orchestrator.errors import ForbiddenError, UsageError
from orchestrator.settings import load_settings


@pytest.mark.parametrize(
    ("method", "path", "public_read", "role"),
    [
        ("GET", "/health", False, None),
        ("GET", "/status", False, "viewer"),
        ("GET", "/status", True, None),
        ("HEAD", "/tasks", False, "viewer"),
        ("GET", "/openapi.json", False, None),
        ("GET", "/docs", False, None),
        ("POST", "/docs", False, "operator"),
        ("POST", "/tasks", False, "operator"),
        ("POST", "/tasks", True, "operator"),
        ("POST", "/tasks/T-1/approve", False, "operator"),
        ("DELETE", "/tasks/T-1", False, "operator"),
        ("PUT", "/anything/new", False, "operator"),
        ("OPTIONS", "/tasks", False, "operator"),
        ("POST", "/transition-lease/release", False, "admin"),
        ("POST", "/webhooks/github", False, None),
        ("POST", "/webhooks/telegram", False, None),
        ("POST", "/health", False, "operator"),
        ("GET", "/metrics", False, "viewer"),
        ("GET", "/metrics", True, None),
        ("GET", "/tokens", False, "admin"),
        ("GET", "/tokens", True, "admin"),
        ("HEAD", "/tokens", True, "admin"),
        ("GET", "/docs/assets/swagger-ui.css", False, None),
        ("POST", "/docs/assets/swagger-ui.css", False, "operator"),
        ("GET", "/redoc", False, "viewer"),
        # The dashboard (decision 0020): pages are reads, form posts need an operator.
        ("GET", "/", False, None),
        ("POST", "/", False, "operator"),
        ("GET", "/ui/", False, "viewer"),
        ("GET", "/ui/", True, None),
        ("GET", "/ui/tasks/1", False, "viewer"),
        ("POST", "/ui/tasks/1/approve", False, "operator"),
        ("POST", "/ui/tasks/1/approve", True, "operator"),
        ("GET", "/ui/static/dashboard.css", False, None),
        ("POST", "/ui/static/dashboard.css", False, "operator"),
        ("GET", "/ui/login", False, None),
        ("POST", "/ui/login", False, None),
        ("POST", "/ui/logout", False, None),
    ],
)
def test_required_role(method: str, path: str, public_read: bool, role: str | None) -> None:
    assert required_role(method, path, public_read=public_read) == role


@given(method=st.text(min_size=1, max_size=8), path=st.text(max_size=40))
def test_every_write_outside_health_and_webhooks_needs_at_least_an_operator(
    method: str, path: str
) -> None:
    role = required_role(method, path, public_read=True)
    if method.upper() in ("GET", "HEAD") or path.startswith("/webhooks/"):
        return
    if path in UI_OPEN_PATHS:  # the login form and logout: no session to need yet
        return
    assert role in ("operator", "admin")


@pytest.mark.parametrize(
    ("have", "need", "allowed"),
    [
        ("viewer", "viewer", True),
        ("viewer", "operator", False),
        ("viewer", "admin", False),
        ("operator", "viewer", True),
        ("operator", "operator", True),
        ("operator", "admin", False),
        ("admin", "operator", True),
        ("admin", "admin", True),
    ],
)
def test_roles_are_ordered(have: str, need: str, allowed: bool) -> None:
    principal = Principal("alice", have)
    if allowed:
        authorize(principal, need)
    else:
        with pytest.raises(ForbiddenError, match=f"role {have}; this needs {need}"):
            authorize(principal, need)


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(UsageError, match="viewer, operator, admin"):
        validate_role("root")
    assert [validate_role(role) for role in ROLES] == list(ROLES)


@given(st.text(max_size=100))
def test_any_text_hashes_to_64_hex_digits(token: str) -> None:
    digest = hash_token(token)
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")


@pytest.mark.parametrize("name", ["", "-x", "a b", "ü", "x" * 65, "a/b", "a\n"])
def test_bad_token_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="token name"):
        validate_token_name(name)


def test_the_job_environment_is_recognised() -> None:
    job = {"ORCH_WORK_ITEM": "T-1", "ORCH_STAGE": "analysis"}
    assert in_job_environment(job)
    assert not in_job_environment({"ORCH_WORK_ITEM": "T-1"})
    assert not in_job_environment({})
    with pytest.raises(ForbiddenError, match="inside an orch agent job"):
        refuse_inside_job(job, "orch task approve")
    refuse_inside_job({}, "orch task approve")


def test_the_init_templates_access_lines_load(tmp_path: Path) -> None:
    """``orch init``'s commented access keys, uncommented, are valid settings."""
    keys = ("public_read", "allowed_hosts", "telegram_allowed_users")
    lines = [
        line[2:] if line.startswith("# ") and line[2:].startswith(keys) else line
        for line in INIT_TEMPLATE.splitlines()
    ]
    changed = sum(
        1 for old, new in zip(INIT_TEMPLATE.splitlines(), lines, strict=True) if old != new
    )
    assert changed == len(keys)
    (tmp_path / "orch.toml").write_text("\n".join(lines) + "\n")
    settings = load_settings(tmp_path / "orch.toml")
    assert settings.public_read is False
    assert settings.allowed_hosts == ["localhost", "127.0.0.1", "::1"]
    assert settings.telegram_allowed_users == ["@alice", "123456789"]
