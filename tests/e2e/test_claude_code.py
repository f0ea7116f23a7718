"""The real Claude Code binary drives the pipeline, against the scripted model server.

Analysis, architecture and development are done by ``claude`` itself (installed by
``make agents`` into ``.cache/agents/``): the model server only tells it which tools to
call, and Claude Code's own Write, Read and Edit tools change the worktree. Testing is
the deterministic runner, deploy the real merge. The ``orch`` CLI runs as a subprocess.

Without the binary the module is skipped with one line, unless ``CI`` is set: then the
run fails, because CI must not pass by skipping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from orchestrator.cli.demo_project import create_demo_repository
from orchestrator.testing import ModelServer, Script, parse_script

pytestmark = pytest.mark.e2e

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
CLAUDE: Final = Path(
    os.environ.get("ORCH_TEST_CLAUDE_BIN") or REPO_ROOT / ".cache/agents/node_modules/.bin/claude"
)
ORCH: Final = [sys.executable, "-m", "orchestrator"]
CI_FALSE_VALUES: Final = frozenset({"", "0", "false", "no"})

if not os.access(CLAUDE, os.X_OK):
    _why = f"Claude Code tests: {CLAUDE} not found; run `make agents` (needs npm)"
    if os.environ.get("CI", "").strip().lower() not in CI_FALSE_VALUES:
        pytest.fail(f"{_why}, and CI is set", pytrace=False)
    pytest.skip(_why, allow_module_level=True)

BRD: Final = """\
# DEMO-1: slugify

## Problem
Titles need URL-safe slugs.

## Functional requirements
1. `textkit.slugify(text)` returns lowercase ASCII words joined by single hyphens.
2. Accents are dropped, other symbols removed.

## Acceptance criteria
- `slugify("Crème Brûlée, 2 ways!") == "creme-brulee-2-ways"`
"""
ADR: Final = """\
# ADR-001: slugify in its own module

## Context
textkit groups helpers by concern.

## Decision
Add `textkit/slugify.py`, export `slugify` from the package.

## Consequences
One new module, one new test file.
"""
SLUGIFY: Final = '''\
"""Slugs: URL-safe identifiers made from free text."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["slugify"]

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def slugify(text: str) -> str:
    """Lower-case ASCII words of text joined by single hyphens."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _NON_ALNUM.sub("-", ascii_text.lower()).strip("-")
'''
SLUGIFY_TESTS: Final = """\
from textkit import slugify


def test_slugify() -> None:
    assert slugify("Crème Brûlée, 2 ways!") == "creme-brulee-2-ways"
    assert slugify("  Many   spaces  ") == "many-spaces"
"""


def pipeline_script() -> Script:
    """What the "model" decides at each stage: Claude Code's own tools do the work."""
    usage = {"input_tokens": 2000, "output_tokens": 400}
    return parse_script(
        {
            "sessions": [
                {
                    "name": "analysis",
                    "match": "Stage: analysis",
                    "turns": [
                        {
                            "text": "I will write the requirements.",
                            "tool": "Write",
                            "input": {"file_path": "{artifact_dir}/01-brd.md", "content": BRD},
                            "usage": usage,
                        },
                        {"text": "The BRD is in {artifact_dir}/01-brd.md."},
                    ],
                },
                {
                    "name": "architecture",
                    "match": "Stage: architecture",
                    "turns": [
                        {"tool": "Read", "input": {"file_path": "{artifact_dir}/01-brd.md"}},
                        {
                            "tool": "Write",
                            "input": {
                                "file_path": "{artifact_dir}/06-adr/ADR-001-slugify-module.md",
                                "content": ADR,
                            },
                            "usage": usage,
                        },
                        {"text": "ADR-001 records the decision."},
                    ],
                },
                {
                    "name": "development",
                    "match": "Stage: development",
                    "turns": [
                        {
                            "tool": "Write",
                            "input": {"file_path": "textkit/slugify.py", "content": SLUGIFY},
                        },
                        {"tool": "Read", "input": {"file_path": "textkit/__init__.py"}},
                        {
                            "tool": "Edit",
                            "input": {
                                "file_path": "textkit/__init__.py",
                                "old_string": "from textkit.strings import title_case, truncate\n",
                                "new_string": (
                                    "from textkit.slugify import slugify\n"
                                    "from textkit.strings import title_case, truncate\n"
                                ),
                            },
                        },
                        {
                            "tool": "Write",
                            "input": {
                                "file_path": "tests/test_slugify.py",
                                "content": SLUGIFY_TESTS,
                            },
                            "usage": usage,
                        },
                        {"text": "slugify is implemented and tested."},
                    ],
                },
            ]
        },
        "pipeline script",
    )


def write_config(
    workdir: Path, server: ModelServer, analysis: str = "", env: dict[str, str] | None = None
) -> None:
    """orch.toml: claude on the three agent stages; ``analysis``: more lines for that stage."""
    env = {**server.env(), "HOME": str(workdir / "home"), **(env or {})}
    env_toml = ", ".join(f'{key} = "{value}"' for key, value in env.items())
    (workdir / "orch.toml").write_text(
        f"""\
data_dir = ".orch"
retry_backoff_s = 0
max_attempts = 1

[agents.claude]
adapter = "claude-code"
command = ["{CLAUDE}"]
model = "claude-sonnet-4-5"
max_turns = 20
env = {{ {env_toml} }}

[stages.analysis]
agent = "claude"
{analysis}
[stages.architecture]
agent = "claude"
model = "claude-haiku-4-5"
[stages.development]
agent = "claude"
"""
    )


def orch(workdir: Path, *args: str, exit_code: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "ANTHROPIC_"))}
    result = subprocess.run(
        [*ORCH, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if result.returncode != exit_code:
        pytest.fail(f"orch {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def show(workdir: Path) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(orch(workdir, "task", "show", "DEMO-1", "--json").stdout)
    return shown


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return result.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return create_demo_repository(tmp_path / "textkit")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    (path / "home").mkdir(parents=True)
    return path


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer(pipeline_script()) as running:
        yield running


def create(workdir: Path, repo: Path) -> None:
    orch(
        workdir,
        "task",
        "create",
        "--repo",
        str(repo),
        "--title",
        "Add slugify",
        "--work-item",
        "DEMO-1",
    )


def test_claude_code_does_analysis_architecture_and_development_to_done(
    workdir: Path, repo: Path, server: ModelServer
) -> None:
    write_config(workdir, server)
    create(workdir, repo)
    first = orch(workdir, "run")
    assert "waits for approval: orch task approve DEMO-1" in first.stdout
    orch(workdir, "task", "approve", "DEMO-1")
    orch(workdir, "run")
    shown = show(workdir)

    assert shown["stage"] == "done", shown["failed_reason"]
    assert not shown["failed"]
    jobs = {job["id"]: job for job in shown["jobs"]}
    runs = {jobs[run["job_id"]]["stage"]: run for run in shown["runs"]}
    assert set(runs) >= {"analysis", "architecture", "development", "testing", "deploy"}
    models = {"analysis": "claude-sonnet-4-5", "architecture": "claude-haiku-4-5"}
    for stage in ("analysis", "architecture", "development"):
        run = runs[stage]
        assert run["agent"] == "claude"
        assert run["exit_code"] == 0
        assert run["model"] == models.get(stage, "claude-sonnet-4-5")
        assert run["cost_usd"] > 0
        assert run["input_tokens"] > 0
        assert run["output_tokens"] > 0
        assert run["num_turns"] >= 2
        # The live events went into the job's log, one JSON object per line.
        log = Path(run["log_path"]).read_text()
        events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert events[0]["type"] == "system"
        assert events[-1]["type"] == "result"
        assert any(event["type"] == "assistant" for event in events)
    assert shown["cost_usd"] == pytest.approx(sum(run["cost_usd"] for run in shown["runs"]))
    exited = [e for e in shown["events"] if e["kind"] == "job.exited" and e["data"].get("subtype")]
    assert len(exited) == 3
    assert {e["data"]["subtype"] for e in exited} == {"success"}
    assert all(e["data"]["session_id"] for e in exited)

    # What Claude Code wrote with its own tools, merged into main by the deploy stage.
    docs = repo / "docs" / "work-items" / "DEMO-1"
    git(repo, "checkout", "-q", "main")
    assert (docs / "01-brd.md").read_text() == BRD
    assert (docs / "06-adr" / "ADR-001-slugify-module.md").read_text() == ADR
    assert (repo / "textkit" / "slugify.py").read_text() == SLUGIFY
    assert "from textkit.slugify import slugify" in (repo / "textkit" / "__init__.py").read_text()
    report = (docs / "13-test-report.md").read_text()
    assert "result: PASS" in report
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout

    # Every conversation played its script to the end, and nothing else was asked.
    turns: dict[str, int] = {}
    for exchange in server.exchanges:
        assert exchange.status == 200, exchange
        turns[exchange.session] = max(turns.get(exchange.session, 0), exchange.turn + 1)
    assert turns == {"analysis": 2, "architecture": 3, "development": 5}


def test_an_api_error_fails_the_run_with_claudes_own_reason(workdir: Path, repo: Path) -> None:
    script = parse_script(
        {
            "sessions": [
                {
                    "match": "Stage: analysis",
                    "turns": [
                        {
                            "error": {
                                "status": 400,
                                "message": "scripted failure: the model is unavailable",
                            }
                        }
                    ],
                }
            ]
        },
        "error script",
    )
    with ModelServer(script) as server:
        write_config(workdir, server)
        create(workdir, repo)
        orch(workdir, "run", exit_code=1)  # the task failed during this run
    shown = show(workdir)
    assert shown["failed"]
    assert shown["stage"] == "analysis"
    assert "claude: API error: 400" in shown["failed_reason"]
    assert "scripted failure: the model is unavailable" in shown["failed_reason"]
    (run,) = shown["runs"]
    assert run["exit_code"] != 0
    exited = [e for e in shown["events"] if e["kind"] == "job.exited"]
    assert exited[-1]["data"]["is_error"] is True


def test_an_overloaded_api_is_an_api_error_after_the_retries_the_agent_env_allows(
    workdir: Path, repo: Path
) -> None:
    script = parse_script(
        {
            "sessions": [
                {
                    "match": "Stage: analysis",
                    "turns": [
                        {"error": {"status": 529, "type": "overloaded_error", "message": "busy"}}
                    ],
                }
            ]
        },
        "overloaded script",
    )
    # Claude Code's default is 10 retries, about three minutes against this server.
    with ModelServer(script) as server:
        write_config(workdir, server, env={"CLAUDE_CODE_MAX_RETRIES": "1"})
        create(workdir, repo)
        orch(workdir, "run", exit_code=1)  # the task failed during this run
        asked = [e for e in server.exchanges if e.path.startswith("/v1/messages")]
    shown = show(workdir)
    assert shown["failed"]
    reason = shown["failed_reason"]
    assert "claude: API error: 529 busy" in reason, reason
    assert "stopped with success" not in reason
    assert len(asked) == 2  # the first call and the one retry the agent's env allows


def test_a_hung_model_gets_claude_tree_killed_at_the_stage_timeout(
    workdir: Path, repo: Path
) -> None:
    script = parse_script(
        {"sessions": [{"match": "Stage: analysis", "turns": [{"text": "late", "delay_s": 3600}]}]},
        "hang script",
    )
    # The model answers in an hour: only the kill at the stage timeout lets `orch run`
    # return before its own deadline.
    with ModelServer(script) as server:
        write_config(workdir, server, analysis="timeout_s = 3")
        create(workdir, repo)
        orch(workdir, "run", exit_code=1)  # the task failed during this run
    shown = show(workdir)
    assert shown["failed"]
    assert "timed out after 3s" in shown["failed_reason"]
    killed = [e for e in shown["events"] if e["kind"] == "job.killed"]
    assert [e["reason"] for e in killed] == ["timed out after 3s"]
    # Nothing of that claude survives: no process runs from its worktree.
    worktree = Path(shown["worktree"])
    survivors = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(proc / "cwd").resolve() == worktree:
                survivors.append(proc.name)
        except OSError:
            continue
    assert survivors == []
