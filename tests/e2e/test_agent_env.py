"""A job's environment holds no secret of orch's: the real `orch run`, real jobs.

Every secret setting of orch is set to a sentinel (from ``ORCH_*`` variables and from
``orch.toml``), orch's own environment holds more secrets (``ANTHROPIC_API_KEY``, a proxy
URL carrying one of orch's tokens), and a ``command`` agent and the repository's test
command (run by the test runner) each dump the environment they got. No sentinel may
appear in either dump; what the allow-list promises (PATH, HOME, the task variables, the
agent's own ``env``, a passthrough name) must.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
from tests.integration.support import make_repo

from orchestrator.redact import looks_secret
from orchestrator.settings import SECRET_SETTINGS, Settings

pytestmark = pytest.mark.e2e

ORCH: Final = [sys.executable, "-m", "orchestrator"]
DUMP: Final = """\
import json, os, sys
from pathlib import Path
Path(sys.argv[1]).write_text(json.dumps(dict(os.environ)))
if len(sys.argv) > 2:
    Path(sys.argv[2]).write_text("changed by the agent\\n")
"""


def _secret_fields() -> list[str]:
    """Every plain-text setting whose name says it is a secret (new ones included)."""
    return [
        name
        for name, field in Settings.model_fields.items()
        if looks_secret(name) and field.annotation is str
    ]


def test_no_secret_of_orch_reaches_an_agent_or_a_runners_command(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    work = tmp_path / "work"
    work.mkdir()
    dump = tmp_path / "dump.py"
    dump.write_text(DUMP)
    agent_dump, tests_dump = tmp_path / "agent-env.json", tmp_path / "tests-env.json"

    secret_fields = _secret_fields()
    assert set(SECRET_SETTINGS) <= set(secret_fields)  # the rule covers the known list
    sentinels = {name: f"SENTINEL-{name}-7f3a" for name in secret_fields}
    # Half from the environment, half from orch.toml: both ways in are covered.
    from_env = secret_fields[::2]
    from_toml = [name for name in secret_fields if name not in from_env]
    database = tmp_path / "SENTINEL-database-7f3a" / "orch.db"
    database.parent.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "ANTHROPIC_"))}
    env.update({f"ORCH_{name.upper()}": sentinels[name] for name in from_env})
    env["ORCH_DATABASE_URL"] = f"sqlite:///{database}"
    env["ANTHROPIC_API_KEY"] = "SENTINEL-anthropic-7f3a"  # not passed through
    env["MY_PROXY"] = f"http://user:{sentinels[from_env[0]]}@proxy.invalid:3128"
    env["PASSED_THROUGH"] = "hello"

    toml = [
        'data_dir = ".orch"',
        "retry_backoff_s = 0",
        "max_attempts = 1",
        'skip = ["analysis", "brd-approval", "architecture", "deploy-staging", "deploy"]',
        'agent_env_passthrough = ["PASSED_*", "MY_PROXY"]',
        *(f"{name} = {json.dumps(sentinels[name])}" for name in from_toml),
        "[agents.dumper]",
        f"command = {json.dumps([sys.executable, str(dump), str(agent_dump), 'change.txt'])}",
        'env = { AGENT_OWN = "mine" }',
        "[stages.development]",
        'agent = "dumper"',
        "[repos.repo]",
        f"test_command = {json.dumps([sys.executable, str(dump), str(tests_dump)])}",
    ]
    (work / "orch.toml").write_text("\n".join(toml) + "\n")

    def orch(*args: str) -> str:
        result = subprocess.run(
            [*ORCH, *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    orch("task", "create", "--repo", str(repo), "--title", "Dump", "--work-item", "ENV-1")
    orch("run")
    shown = json.loads(orch("task", "show", "ENV-1", "--json"))
    assert shown["stage"] == "done", shown["failed_reason"]

    agent_env = json.loads(agent_dump.read_text())
    tests_env = json.loads(tests_dump.read_text())
    secrets = [*sentinels.values(), "SENTINEL-anthropic-7f3a", "SENTINEL-database-7f3a"]
    for name, dumped in (("agent", agent_env), ("test command", tests_env)):
        leaked = {key for key, value in dumped.items() for s in secrets if s in key + value}
        assert not leaked, f"the {name} saw orch's secrets in {sorted(leaked)}"
        assert not [key for key in dumped if key.startswith("ORCH_") and key not in AGENT_VARS]
        assert dumped["PATH"] == env["PATH"]
        assert dumped["HOME"] == env["HOME"]
        assert dumped["PASSED_THROUGH"] == "hello"
        assert "MY_PROXY" not in dumped  # passed through by name, but it holds a secret
        assert dumped["AGENT_OWN"] == "mine" if name == "agent" else "AGENT_OWN" not in dumped
    assert agent_env["ORCH_WORK_ITEM"] == "ENV-1"
    assert agent_env["ORCH_STAGE"] == "development"
    assert not [key for key in tests_env if key.startswith("ORCH_")]


# The task variables the engine sets for a job; nothing else named ORCH_* reaches it.
AGENT_VARS: Final = frozenset(
    {
        "ORCH_WORK_ITEM",
        "ORCH_STAGE",
        "ORCH_ATTEMPT",
        "ORCH_ROLLBACK_COUNT",
        "ORCH_ARTIFACT_DIR",
        "ORCH_TASK_TITLE",
        "ORCH_TASK_DESCRIPTION",
        "ORCH_PROMPT_FILE",
        "ORCH_FEEDBACK",
        "ORCH_REPOSITORY",
        "ORCH_BRANCH",
        "ORCH_BASE_BRANCH",
        "ORCH_TEST_COMMAND",
        "ORCH_RESULT_FILE",
    }
)


def test_config_show_masks_secrets_in_the_table_and_in_json(tmp_path: Path) -> None:
    (tmp_path / "orch.toml").write_text(
        'admin_token = "admin-sentinel-1"\n'
        "[agents.claude]\n"
        'adapter = "claude-code"\n'
        'env = { ANTHROPIC_API_KEY = "sk-sentinel-2", MY_PASSWORD = "pw-sentinel-3" }\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["ORCH_DATABASE_URL"] = "postgresql+psycopg://orch:db-sentinel-4@127.0.0.1:1/orch"
    env["ORCH_PLANE_WEBHOOK_SECRET"] = "hook-sentinel-5"
    env["COLUMNS"] = "400"  # the table must not be cut: every value is checked
    for extra in ([], ["--json"]):
        result = subprocess.run(
            [*ORCH, "config", "show", *extra],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "sentinel" not in result.stdout, result.stdout
        assert "ANTHROPIC_API_KEY" in result.stdout  # the key is shown, its value is not
        assert "postgresql+psycopg://orch:***@127.0.0.1:1/orch" in result.stdout
