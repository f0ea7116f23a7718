"""Agents' containment, the pure parts: the job environment's allow-list, what counts as
a secret and how `orch config show` masks it, and the config-load refusals
(``{prompt}`` spliced into shell code, an ``agent_env_passthrough`` that would pass
orch's own variables)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.errors import ConfigError
from orchestrator.job_env import job_environment, passes
from orchestrator.redact import MASK, looks_secret, mask_url_password, redact_value
from orchestrator.settings import Settings, describe_settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("ORCH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "orch.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return load_settings(config=path)


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- the allow-list -------------------------------------------------------------------------


def test_only_allowed_names_pass_from_orchs_environment() -> None:
    parent = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LC_ALL": "C.UTF-8",
        "LANG": "C",
        "ORCH_GITHUB_WEBHOOK_SECRET": "s3cret-hook",
        "ORCH_DATABASE_URL": "postgresql://u:pw@h/db",
        "ANTHROPIC_API_KEY": "sk-live",
        "HTTPS_PROXY": "http://proxy:3128",
        "AWS_SECRET_ACCESS_KEY": "aws",
    }
    env = job_environment(parent, passthrough=["*_PROXY"])
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LC_ALL": "C.UTF-8",
        "LANG": "C",
        "HTTPS_PROXY": "http://proxy:3128",
    }


def test_a_value_holding_an_orch_secret_is_dropped_even_when_passed_through() -> None:
    parent = {"PATH": "/bin", "HTTPS_PROXY": "http://me:tok-123456@proxy", "KEEP": "x"}
    env = job_environment(parent, passthrough=["HTTPS_PROXY", "KEEP"], secrets=["tok-123456"])
    assert env == {"PATH": "/bin", "KEEP": "x"}
    # A short secret is only matched as a whole value, not inside other values.
    assert job_environment({"PATH": "/bin:/x"}, secrets=["x"]) == {"PATH": "/bin:/x"}
    assert job_environment({"TERM": "x"}, secrets=["x"]) == {}


def test_layers_win_over_the_parent_in_order() -> None:
    env = job_environment(
        {"PATH": "/bin", "HOME": "/h"},
        secrets=["agent-key-123"],
        layers=({"PATH": "/adapter", "A": "1"}, {"A": "2", "KEY": "agent-key-123"}, {"B": "3"}),
    )
    # The agent's own env is the user's explicit choice: it passes as written.
    assert env == {"PATH": "/adapter", "HOME": "/h", "A": "2", "KEY": "agent-key-123", "B": "3"}


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789", min_size=1, max_size=30))
def test_orch_variables_never_pass_whatever_the_passthrough(suffix: str) -> None:
    assert not passes(f"ORCH_{suffix}", ["*", "ORCH_*", f"ORCH_{suffix}"])


# --- secrets and masking --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("ANTHROPIC_API_KEY", True),
        ("admin_token", True),
        ("github_webhook_secret", True),
        ("DB_PASSWORD", True),
        ("api_key", True),
        ("model", False),
        ("max_turns", False),
        ("PATH", False),
    ],
)
def test_what_looks_like_a_secret(name: str, secret: bool) -> None:
    assert looks_secret(name) is secret


def test_url_passwords_are_masked() -> None:
    assert (
        mask_url_password("postgresql+psycopg://orch:hunter2@db:5432/orch")
        == f"postgresql+psycopg://orch:{MASK}@db:5432/orch"
    )
    assert mask_url_password("postgresql://orch@db/orch") == "postgresql://orch@db/orch"
    assert mask_url_password("sqlite:////var/orch.db") == "sqlite:////var/orch.db"


@given(
    st.text(
        alphabet=st.characters(blacklist_characters="/?#@", blacklist_categories=("Z", "C")),
        min_size=1,
        max_size=20,
    )
)
def test_no_url_password_survives_masking(password: str) -> None:
    url = f"postgresql://user:{password}@host/db"
    masked = mask_url_password(url)
    assert masked == f"postgresql://user:{MASK}@host/db"


def test_redact_value_masks_secret_keys_at_any_depth() -> None:
    value = {
        "claude": {"env": {"ANTHROPIC_API_KEY": "sk-live", "HOME": "/h"}, "model": "m"},
        "other": {"env": {"DB_PASSWORD": "", "URL": "https://u:p@x.example/"}},
    }
    assert redact_value(value, "agents") == {
        "claude": {"env": {"ANTHROPIC_API_KEY": MASK, "HOME": "/h"}, "model": "m"},
        "other": {"env": {"DB_PASSWORD": "", "URL": f"https://u:{MASK}@x.example/"}},
    }


def test_config_show_masks_every_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_DATABASE_URL", "postgresql+psycopg://orch:hunter2@db/orch")
    monkeypatch.setenv("ORCH_GITHUB_WEBHOOK_SECRET", "hook-secret")
    settings = load(
        tmp_path,
        """
        admin_token = "admin-secret"
        telegram_bot_token = "123:bot-secret"
        [agents.claude]
        adapter = "claude-code"
        env = { ANTHROPIC_API_KEY = "sk-ant-secret", ANTHROPIC_BASE_URL = "http://127.0.0.1:1" }
        """,
    )
    described = {
        item.name: item.value for item in describe_settings(settings, tmp_path / "orch.toml")
    }
    shown = repr(described)
    for secret in ("hunter2", "hook-secret", "admin-secret", "bot-secret", "sk-ant-secret"):
        assert secret not in shown
    assert described["database_url"] == f"postgresql+psycopg://orch:{MASK}@db/orch"
    assert described["agents"]["claude"]["env"] == {
        "ANTHROPIC_API_KEY": MASK,
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:1",
    }
    assert described["admin_token"] == MASK
    assert described["forge_token"] == ""  # unset stays visible as unset


def test_the_secret_values_of_orch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_DATABASE_URL", "postgresql+psycopg://orch:hunter2@db/orch")
    settings = load(
        tmp_path,
        """
        forge_token = "forge-secret"
        plane_api_key = "plane-secret"
        [agents.claude]
        env = { ANTHROPIC_API_KEY = "the-agents-own" }
        command = ["claude"]
        """,
    )
    secrets = settings.secret_values
    assert {"forge-secret", "plane-secret", "hunter2"} <= secrets
    assert "postgresql+psycopg://orch:hunter2@db/orch" in secrets
    assert "the-agents-own" not in secrets
    # Shown logs mask the agents' secrets too (an agent may print its environment).
    masked = settings.log_mask_values
    assert "the-agents-own" in masked
    assert secrets <= masked


# --- refusals at config load ------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        '["sh", "-c", "claude -p {prompt}"]',
        '["/bin/bash", "-lc", "my-agent \\"{prompt}\\""]',
        '["env", "FOO=1", "zsh", "-c", "x {prompt}"]',
        r'["python3", "-c", "print(\"{prompt}\")"]',
        '["node", "-e", "console.log(`{prompt}`)"]',
        "\"sh -c 'agent {prompt}'\"",
    ],
)
def test_prompt_inside_shell_code_is_refused(tmp_path: Path, command: str) -> None:
    message = refused(tmp_path, f"[agents.x]\ncommand = {command}\n")
    assert "agents.x.command" in message
    assert "{prompt}" in message
    assert "pass the prompt by file ({prompt_file}, $ORCH_PROMPT_FILE) or on stdin" in message


@pytest.mark.parametrize(
    "command",
    [
        '["my-agent", "--message", "{prompt}"]',
        '["sh", "-c", "agent --file \\"$1\\"", "sh", "{prompt_file}"]',
        '["sh", "run.sh", "{prompt}"]',
        '["python3", "agent.py", "{prompt}"]',
    ],
)
def test_prompt_as_a_plain_argument_is_fine(tmp_path: Path, command: str) -> None:
    load(tmp_path, f'[agents.x]\ncommand = {command}\nprompt_via = "arg"\n')


def test_prompt_in_claude_args_after_a_shell_is_refused(tmp_path: Path) -> None:
    message = refused(
        tmp_path,
        '[agents.x]\nadapter = "claude-code"\nargs = ["--x", "sh", "-c", "{prompt}"]\n',
    )
    assert "agents.x.args" in message


@pytest.mark.parametrize("pattern", ["ORCH_*", "orch_forge_token", "*", "**", "A B", ""])
def test_a_passthrough_that_would_leak_is_refused(tmp_path: Path, pattern: str) -> None:
    message = refused(tmp_path, f'agent_env_passthrough = ["{pattern}"]\n')
    assert "agent_env_passthrough" in message


def test_a_passthrough_of_names_and_patterns_loads(tmp_path: Path) -> None:
    settings = load(tmp_path, 'agent_env_passthrough = ["ANTHROPIC_API_KEY", "*_PROXY"]\n')
    assert settings.agent_env_passthrough == ["ANTHROPIC_API_KEY", "*_PROXY"]
