"""The README's commands work as written: its command table and its quick start.

Every row of the README's command table is expanded (``a \\| b ID`` is two commands;
``[--opt X]`` is run both without and with the option) and run with the real ``orch`` CLI
as a subprocess, against a scratch configuration, database and git repository, with
the scripted agent. A command that steers a task gets a real task of its own, brought
to the state the command needs by the CLI itself.

A new command goes in the README's table; this test then runs it. Commands it knows
(``EXPECTED``) must exit 0; one it does not know yet must exist, parse its arguments
and fail, if at all, with one clear line (exit 1), never a usage error (exit 2). Give
it a state in ``TASK_STATE`` (and its placeholders in ``_value``) to hold it to exit 0.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx
import pytest

from orchestrator.cli.demo_project import create_demo_repository, write_failing_recipe
from orchestrator.cli.main import cli

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ORCH = [sys.executable, "-m", "orchestrator"]
SCRIPTED_CONFIG = """\
retry_backoff_s = 0
max_rollbacks = 0
test_runner_hybrid = false

[stages.analysis]
agent = "scripted"
[stages.architecture]
agent = "scripted"
[stages.development]
agent = "scripted"
"""
# The state a task must be in for the command that steers it: "gate" (waiting at the
# BRD approval) or "failed" (failed in testing). Unknown commands get "gate".
TASK_STATE = {
    "approve": "gate",
    "cancel": "gate",
    "reject": "gate",
    "rollback": "failed",
    "retry": "failed",
    "show": "gate",
    "logs": "gate",
}
READS = {("task", "show"), ("task", "logs")}  # these share one task; the others get their own
# Commands whose success (exit 0) this test knows how to set up.
EXPECTED = {
    ("init",),
    ("task", "create"),
    ("task", "list"),
    ("run",),
    ("serve",),
    ("demo",),
    ("db", "upgrade"),
    ("config", "show"),
    ("config", "reference"),
    ("gc",),
    ("costs",),
    ("token", "create"),
    ("token", "list"),
    ("token", "revoke"),
    *(("task", name) for name in TASK_STATE),
}
SLOW = {("demo",), ("serve",)}  # run with every option only, not also without


@dataclass(frozen=True)
class Command:
    """One command of the table: its path (``("task", "show")``) and argument tokens."""

    path: tuple[str, ...]
    tokens: tuple[str, ...]  # as written, ``[`` and ``]`` removed
    optional: tuple[bool, ...]  # per token: whether it was inside ``[...]``
    json_too: bool  # the row says the command takes --json

    @property
    def name(self) -> str:
        return " ".join(self.path)


def _table_rows() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    start = text.index("| command | what it does |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        rows.append((cells[0].strip(), cells[1].strip()))
    return rows


def _lookup(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group), f"`orch {' '.join(path)}`: not a group"
        found = command.commands.get(name)
        assert found is not None, f"README names `orch {' '.join(path)}`: No such command"
        command = found
    return command


def _split_optional(words: list[str]) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    tokens: list[str] = []
    optional: list[bool] = []
    depth = 0
    for word in words:
        depth += word.count("[")
        tokens.append(word.replace("[", "").replace("]", ""))
        optional.append(depth > 0)
        depth -= word.count("]")
    return tuple(tokens), tuple(optional)


def expand(cell: str, description: str) -> list[Command]:
    """``orch task approve \\| cancel ID`` -> approve ID, cancel ID (ID is shared by the
    alternatives that need an argument and name none)."""
    spans = re.findall(r"`([^`]+)`", cell)
    assert len(spans) == 1, f"a command cell holds one code span: {cell}"
    segments = [segment.split() for segment in spans[0].replace("\\|", "|").split(" | ")]
    first = segments[0]
    assert first[0] == "orch", cell
    path: list[str] = []
    group: click.Command = cli
    index = 1
    while isinstance(group, click.Group) and index < len(first) and first[index] in group.commands:
        path.append(first[index])
        group = group.commands[first[index]]
        index += 1
    assert path, f"README row `{spans[0]}` names no orch command: No such command"
    parsed = [(tuple(path), first[index:])]
    parsed += [((*path[:-1], segment[0]), segment[1:]) for segment in segments[1:]]
    shared = parsed[-1][1]
    json_too = "`--json`" in description
    commands = []
    for command_path, words in parsed:
        needs_argument = any(
            isinstance(param, click.Argument) and param.required
            for param in _lookup(command_path).params
        )
        tokens, optional = _split_optional(words if words or not needs_argument else shared)
        commands.append(Command(command_path, tokens, optional, json_too))
    return commands


def test_the_table_parses_into_real_commands() -> None:
    """Every row names commands that exist; the parse itself is what the run test uses."""
    commands = [c for cell, about in _table_rows() for c in expand(cell, about)]
    names = {c.name for c in commands}
    assert {"init", "task create", "task list", "task show", "run", "config show"} <= names
    steer = [c for c in commands if c.path in {("task", "approve"), ("task", "retry")}]
    assert [c.tokens for c in steer] == [("ID",), ("ID",)]
    listed = next(c for c in commands if c.path == ("task", "list"))
    assert listed.tokens == ()
    assert listed.json_too


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", **extra}


@dataclass
class World:
    """A scratch install: orch's directory with a scripted orch.toml, and a repository."""

    root: Path
    workdir: Path
    repo: Path
    tasks: dict[str, str] = field(default_factory=dict)  # command name -> its task's id
    fresh: Iterator[int] = field(default_factory=lambda: iter(range(1, 1000)))

    def orch(
        self, *args: str, cwd: Path | None = None, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ORCH, *args],
            cwd=cwd or self.workdir,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def new_dir(self, name: str) -> Path:
        path = self.root / f"{name}-{next(self.fresh)}"
        path.mkdir()
        return path


def _task_key(command: Command) -> str:
    return "read" if command.path in READS else command.name


def _state(key: str) -> str:
    return TASK_STATE.get(key.rsplit(maxsplit=1)[-1], "gate")


def _value(world: World, command: Command, placeholder: str) -> str:
    if placeholder == "ID":
        if command.path == ("task", "create"):
            return f"NEW-{next(world.fresh)}"
        return world.tasks[_task_key(command)]
    values = {
        "NAME": "readme-token",  # `token create NAME` then `token revoke NAME`
        "PATH": str(world.repo),
        "TEXT": "a [bracketed] title",
        "DIR": str(world.root / f"keep-{next(world.fresh)}"),
        "HOST": "127.0.0.1",
        "PORT": str(_free_port()),
        "STAGE": "analysis",
        "SINCE": "2026-01-01",  # `orch costs`: a period of a year
        "UNTIL": "2027-01-01",
        "N": "5",
    }
    if placeholder not in values:
        pytest.fail(
            f"README's `orch {command.name}` has placeholder {placeholder}: give it a value "
            "in tests/e2e/test_readme_commands.py::_value"
        )
    return values[placeholder]


def _argv(world: World, command: Command, *, with_optional: bool) -> list[str]:
    argv = list(command.path)
    for written, optional in zip(command.tokens, command.optional, strict=True):
        if optional and not with_optional:
            continue
        token = written.split("|")[0]  # `--role viewer|operator|admin`: one of them
        argv.append(
            _value(world, command, token) if re.fullmatch(r"[A-Z][A-Z_]*", token) else token
        )
    return argv


def _prepare_tasks(world: World, commands: list[Command]) -> None:
    """One real task per steering command, at the state it needs, made with the CLI."""
    for command in commands:
        key = _task_key(command)
        if "ID" in command.tokens and command.path != ("task", "create") and key not in world.tasks:
            work_item = f"RD-{next(world.fresh)}"
            world.tasks[key] = work_item
            if _state(key) == "failed":
                write_failing_recipe(world.repo, work_item)
    for key, work_item in world.tasks.items():
        created = world.orch(
            "task", "create", "--repo", str(world.repo), "--title", f"for {key}",
            "--work-item", work_item,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
    assert world.orch("run").returncode == 0
    failing = [work_item for key, work_item in world.tasks.items() if _state(key) == "failed"]
    for work_item in failing:
        assert world.orch("task", "approve", work_item).returncode == 0
    if failing:
        assert world.orch("run").returncode == 1  # they failed in testing, as wanted
    for key, work_item in world.tasks.items():
        shown = json.loads(world.orch("task", "show", work_item, "--json").stdout)
        if _state(key) == "failed":
            assert (shown["stage"], shown["failed"]) == ("testing", True), shown
        else:
            assert (shown["stage"], shown["failed"]) == ("brd-approval", False), shown


def _run_serve(world: World, argv: list[str]) -> tuple[int, str]:
    cwd = world.new_dir("serve")
    (cwd / "orch.toml").write_text(SCRIPTED_CONFIG)
    port = argv[argv.index("--port") + 1] if "--port" in argv else "8765"
    log = cwd / "serve.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [*ORCH, *argv], cwd=cwd, env=_env(), stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        for _ in range(1200):
            if server.poll() is not None:
                break
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).is_success:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"`orch {' '.join(argv)}` never answered /health:\n{log.read_text()}")
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    return code, log.read_text()


def _run_one(world: World, command: Command, argv: list[str]) -> None:
    if command.path == ("serve",):
        code, output = _run_serve(world, argv)
        stderr = output
    else:
        cwd = world.workdir
        if command.path in {("init",), ("run",)}:
            # init wants an empty directory; run, a configured one with nothing failing.
            cwd = world.new_dir(command.path[0])
            if command.path == ("run",):
                (cwd / "orch.toml").write_text(SCRIPTED_CONFIG)
        elif command.path == ("demo",):
            cwd = world.root
        result = world.orch(*argv, cwd=cwd)
        code, stderr = result.returncode, result.stderr
        if code == 0 and "--json" in argv:
            json.loads(result.stdout)
    shown = f"`orch {shlex.join(argv)}` exited {code}:\n{stderr}"
    assert "No such command" not in stderr, shown
    assert "Traceback" not in stderr, shown
    if command.path in EXPECTED:
        assert code == 0, shown
    else:
        assert code in (0, 1), shown
        if code == 1:
            assert len([line for line in stderr.splitlines() if line.strip()]) == 1, shown


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """One scratch install for every row, with the tasks the table's commands steer."""
    root = tmp_path_factory.mktemp("readme")
    workdir = root / "orch-work"
    workdir.mkdir()
    (workdir / "orch.toml").write_text(SCRIPTED_CONFIG)
    scratch = World(root, workdir, create_demo_repository(root / "myservice"))
    _prepare_tasks(scratch, [c for cell, about in _table_rows() for c in expand(cell, about)])
    return scratch


@pytest.mark.parametrize(
    ("cell", "about"), _table_rows(), ids=[cell.strip("`") for cell, _ in _table_rows()]
)
def test_each_row_of_the_readme_table_runs_as_written(world: World, cell: str, about: str) -> None:
    for command in expand(cell, about):
        has_optional = any(command.optional)
        variants = [True] if command.path in SLOW or not has_optional else [False, True]
        for with_optional in variants:
            argv = _argv(world, command, with_optional=with_optional)
            if command.json_too and "--json" not in argv:
                _run_one(world, command, argv)
                argv = [*argv, "--json"]
            _run_one(world, command, argv)


def test_the_quick_start_for_your_repository_runs_as_written(tmp_path: Path) -> None:
    """The README's "Using it on your repository" block, line by line, in one shell,
    with HOME a scratch directory (so ``~/src/myservice`` is a scratch repository) and
    the checkout's ``.venv`` this test's virtualenv. After ``orch init`` the stages get
    the scripted agent instead of Claude Code (the only change to what the block says)."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.fail(f"run the tests with the virtualenv `make` creates ({venv} has no activate)")
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Using it on your repository") :]
    start = section.index("```sh\n") + len("```sh\n")
    block = section[start : section.index("```", start)]
    assert "orch init" in block, block
    home = tmp_path / "home"
    create_demo_repository(home / "src" / "myservice")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(venv)
    script = []
    for line in block.splitlines():
        if not line.strip():
            continue
        script.append(f"{line} || {{ echo {shlex.quote('FAILED: ' + line)} >&2; exit 1; }}")
        if re.match(r"\s*orch init\b", line):
            script.append(
                """sed -i -e 's/^agent = "claude"/agent = "scripted"/' """
                """-e '1i test_runner_hybrid = false' orch.toml"""
            )
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=checkout,
        env={**_env(HOME=str(home)), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No such command" not in result.stderr
    work = home / "orch-work"
    shown = subprocess.run(
        [*ORCH, "task", "show", "SVC-42", "--json"],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(shown.stdout)["stage"] == "done"
    assert (work / "orch.toml").is_file()
    assert (work / ".orch" / "orch.db").is_file()
    # Nothing of orch's own is left in the repository.
    status = subprocess.run(
        ["git", "status", "--porcelain"],
        cwd=home / "src" / "myservice",
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == ""
