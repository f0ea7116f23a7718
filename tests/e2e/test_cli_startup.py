"""What ``orch --help`` and ``orch task list`` import (docs/architecture.md,
"Command-line start-up"): start-up time is mostly imports, so the heavy libraries must
stay out of the commands that do not use them. No timings here (they belong in
``bench/cli_startup.py``): the modules loaded are the deterministic part of start-up,
and what these tests hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

pytestmark = pytest.mark.e2e

# The console script's own code, then the names of every module loaded, written at exit.
RUNNER: Final = """\
import atexit, json, sys
target = sys.argv.pop(1)
atexit.register(lambda: open(target, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "orch"
from orchestrator.cli.main import main
main()
"""
# Loaded by no command that only reads: the web stack, the dashboard's templates and
# Markdown, the metrics, the migrations and the dev tools' HTTP clients.
SERVER_AND_TOOLS: Final = frozenset(
    {
        "alembic",
        "mako",
        "fastapi",
        "starlette",
        "uvicorn",
        "anyio",
        "httpx",
        "prometheus_client",
        "jinja2",
        "markdown_it",
        "orchestrator.api.server",
        "orchestrator.engine",
        "orchestrator.lifecycle",
        "orchestrator.agents",
        "orchestrator.workspace",
        "orchestrator.testing",
        "orchestrator.integrations",
    }
)
# `orch --help` needs click and nothing that reads settings, the database or prints.
HELP_ALSO_WITHOUT: Final = frozenset(
    {"sqlalchemy", "pydantic", "pydantic_settings", "rich", "orchestrator.settings"}
    | {"orchestrator.store", "asyncio"}
)
CONFIG: Final = "".join(
    f'[stages.{stage}]\nagent = "scripted"\n'
    for stage in ("analysis", "architecture", "development")
)


def loaded_by(workdir: Path, *args: str) -> set[str]:
    """The modules (and their packages) loaded by ``orch ARGS`` run in ``workdir``."""
    modules = workdir / "modules.json"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(modules), *args],
        cwd=workdir,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(modules.read_text()))


def found(loaded: set[str], unwanted: frozenset[str]) -> set[str]:
    """Which of ``unwanted`` (a module or package name) are among ``loaded``."""
    return {name for name in unwanted if any(m == name or m.startswith(f"{name}.") for m in loaded)}


def test_help_loads_click_and_the_command_line_only(tmp_path: Path) -> None:
    loaded = loaded_by(tmp_path, "--help")

    assert {"click", "orchestrator.cli.main"} <= loaded
    assert found(loaded, SERVER_AND_TOOLS | HELP_ALSO_WITHOUT) == set()


def test_the_dev_tools_load_when_one_is_asked_for(tmp_path: Path) -> None:
    # `orch dev` is defined elsewhere (its module imports the model server): its help
    # still lists its commands, and their options keep their defaults.
    group = loaded_by(tmp_path, "dev", "--help")
    command = loaded_by(tmp_path, "dev", "model-server", "--help")

    assert "orchestrator.testing.model_server" in group
    assert "orchestrator.testing.model_server" in command
    listing = subprocess.run(
        [sys.executable, "-m", "orchestrator", "dev", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "model-server" in listing
    assert "fake-telegram" in listing
    options = subprocess.run(
        [sys.executable, "-m", "orchestrator", "dev", "model-server", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "[default: 8787]" in options


def test_read_commands_load_neither_the_server_the_migrations_nor_the_lifecycle(
    tmp_path: Path,
) -> None:
    (tmp_path / "orch.toml").write_text(CONFIG)
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    # The first command makes and migrates the database: Alembic is needed then.
    assert "alembic" in loaded_by(tmp_path, "task", "create", "--repo", "repo", "--title", "x")

    loaded = loaded_by(tmp_path, "task", "list")

    assert {"sqlalchemy", "orchestrator.store", "rich.table"} <= loaded
    assert found(loaded, SERVER_AND_TOOLS) == set()
    assert found(loaded_by(tmp_path, "task", "list", "--json"), SERVER_AND_TOOLS) == set()
    # `task show` reads the next steps (lifecycle/next_steps.py), not the moves.
    shown = loaded_by(tmp_path, "task", "show", "TASK-1")
    assert "orchestrator.lifecycle.next_steps" in shown
    assert found(shown, SERVER_AND_TOOLS - {"orchestrator.lifecycle"}) == set()
    assert (
        found(shown, frozenset({"orchestrator.lifecycle.moves", "orchestrator.effects"})) == set()
    )
