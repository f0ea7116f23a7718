"""`orch init` and `orch token create/list/revoke` as real subprocesses on a real SQLite."""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.auth import hash_token

pytestmark = pytest.mark.e2e

ORCH = [sys.executable, "-m", "orchestrator"]


def orch(
    workdir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return subprocess.run(
        [*ORCH, *args],
        cwd=workdir,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def rows(workdir: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(workdir / ".orch" / "orch.db") as conn:
        return conn.execute(query).fetchall()


def test_init_writes_an_operator_token_readable_by_its_owner_only(tmp_path: Path) -> None:
    result = orch(tmp_path, "init")

    assert result.returncode == 0, result.stderr
    token_file = tmp_path / ".orch" / "api-token"
    assert str(token_file.name) in result.stdout
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    secret = token_file.read_text().strip()
    assert secret.startswith("orch_")
    assert secret not in result.stdout  # the file, not the terminal, holds it
    name = f"local-{getpass.getuser()}"
    assert rows(tmp_path, "SELECT name, role, token_hash FROM api_tokens") == [
        (name, "operator", hash_token(secret))
    ]
    # Only the hash is stored: the secret appears nowhere in the database.
    assert secret.encode() not in (tmp_path / ".orch" / "orch.db").read_bytes()

    again = orch(tmp_path, "init", "--force")

    assert again.returncode == 0, again.stderr
    rotated = token_file.read_text().strip()
    assert rotated != secret
    assert rows(tmp_path, "SELECT token_hash FROM api_tokens") == [(hash_token(rotated),)]


def test_token_create_list_and_revoke(tmp_path: Path) -> None:
    created = orch(tmp_path, "token", "create", "alice", "--role", "viewer", "--json")
    assert created.returncode == 0, created.stderr
    shown = json.loads(created.stdout)
    assert shown["name"] == "alice"
    assert shown["role"] == "viewer"

    listed = orch(tmp_path, "token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["name"] == "alice"
    assert entry["role"] == "viewer"
    assert entry["created_by"] == f"cli:{getpass.getuser()}"
    assert "token_hash" not in entry
    assert shown["token"] not in listed.stdout

    twice = orch(tmp_path, "token", "create", "alice", "--role", "admin")
    assert twice.returncode == 1
    assert "already exists" in twice.stderr
    assert "Traceback" not in twice.stderr

    revoked = orch(tmp_path, "token", "revoke", "alice")
    assert revoked.returncode == 0, revoked.stderr
    assert rows(tmp_path, "SELECT count(*) FROM api_tokens") == [(0,)]
    trail = rows(tmp_path, "SELECT kind, actor FROM events ORDER BY id")
    assert trail == [
        ("token.created", f"cli:{getpass.getuser()}"),
        ("token.revoked", f"cli:{getpass.getuser()}"),
    ]

    missing = orch(tmp_path, "token", "revoke", "alice")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no token named 'alice'; orch token list shows them"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("token", "create", "bob", "--role", "root"), "'root' is not one of"),
        (("token", "create", "b b", "--role", "viewer"), "token name 'b b' is not valid"),
    ],
)
def test_bad_token_input_is_one_line(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    result = orch(tmp_path, *args)

    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_inside_an_agent_job_the_cli_steers_nothing(tmp_path: Path) -> None:
    job = {"ORCH_WORK_ITEM": "T-1", "ORCH_STAGE": "analysis"}
    for args in (
        ("token", "create", "sneaky", "--role", "admin"),
        ("task", "approve", "T-1"),
        ("task", "cancel", "T-1"),
        ("task", "create", "--repo", str(tmp_path), "--title", "x"),
    ):
        result = orch(tmp_path, *args, env=job)
        assert result.returncode == 1, args
        assert "inside an orch agent job" in result.stderr
    assert not (tmp_path / ".orch" / "orch.db").exists()
