"""The real Codex CLI drives the pipeline, against the scripted Responses API server.

Analysis, architecture and development are done by ``codex exec --json`` itself
(installed by ``make agents`` into ``.cache/agents/``), pointed at the model server by a
custom model provider (``-c model_providers...``, wire API ``responses``): the server
only says which commands to run, and Codex's own ``exec_command`` tool runs them in the
worktree under its ``workspace-write`` sandbox. Testing is the deterministic runner,
deploy the real merge. The ``orch`` CLI runs as a subprocess.

The development stage's last answer is cut off mid-stream once: Codex prints
``{"type": "error", "message": "Reconnecting... 1/5 ..."}``, asks again and completes
the turn, and the run must count as a success.

Without the binary the module is skipped with one line, unless ``CI`` is set: then the
run fails, because CI must not pass by skipping.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest

from orchestrator.cli.demo_project import create_demo_repository
from orchestrator.testing import ModelServer, Script, parse_script

pytestmark = pytest.mark.e2e

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
CODEX: Final = Path(
    os.environ.get("ORCH_TEST_CODEX_BIN") or REPO_ROOT / ".cache/agents/node_modules/.bin/codex"
)
ORCH: Final = [sys.executable, "-m", "orchestrator"]
CI_FALSE_VALUES: Final = frozenset({"", "0", "false", "no"})

if not os.access(CODEX, os.X_OK):
    _why = f"Codex tests: {CODEX} not found; run `make agents` (needs npm)"
    if os.environ.get("CI", "").strip().lower() not in CI_FALSE_VALUES:
        pytest.fail(f"{_why}, and CI is set", pytrace=False)
    pytest.skip(_why, allow_module_level=True)

MODEL: Final = "gpt-5.4"
# Dollars per million tokens: input, cached input, output.
PRICES: Final = (1.25, 0.125, 10.0)

BRD: Final = """\
# DEMO-1: slugify

## Problem
Titles need URL-safe slugs.

## Functional requirements
1. `textkit.slugify(text)` returns lowercase ASCII words joined by single hyphens.

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
from textkit.slugify import slugify


def test_slugify() -> None:
    assert slugify("Crème Brûlée, 2 ways!") == "creme-brulee-2-ways"
"""

# Each turn's usage: the cost of a run is exactly these, priced (a dropped answer is
# not billed: Codex never saw its response.completed).
WRITE_USAGE: Final = {"input_tokens": 3000, "cached_input_tokens": 2000, "output_tokens": 400}
DONE_USAGE: Final = {"input_tokens": 3500, "cached_input_tokens": 3000, "output_tokens": 50}


def write(path: str, content: str) -> str:
    """A shell command that writes ``content`` to ``path`` (relative to the worktree)."""
    parent = str(Path(path).parent)
    return f"mkdir -p {shlex.quote(parent)} && printf '%s' {shlex.quote(content)} > {path}"


def session(stage: str, command: str, done: str, drops: int = 0) -> dict[str, Any]:
    return {
        "name": stage,
        "match": f"Stage: {stage}",
        "turns": [
            {
                "text": "On it.",
                "tool": "exec_command",
                "input": {"cmd": command},
                "usage": WRITE_USAGE,
            },
            {"text": done, "usage": DONE_USAGE, "drops": drops},
        ],
    }


def pipeline_script(development_drops: int = 1) -> Script:
    """Codex's exec_command does each stage's work; development's answer drops once."""
    development = " && ".join(
        [
            write("textkit/slugify.py", SLUGIFY),
            write("tests/test_slugify.py", SLUGIFY_TESTS),
        ]
    )
    return parse_script(
        {
            "sessions": [
                session("analysis", write("{artifact_dir}/01-brd.md", BRD), "BRD written."),
                session(
                    "architecture",
                    write("{artifact_dir}/06-adr/ADR-001-slugify-module.md", ADR),
                    "ADR-001 records the decision.",
                ),
                session("development", development, "slugify is implemented.", development_drops),
            ]
        },
        "codex pipeline script",
    )


def write_config(workdir: Path, server: ModelServer, **provider: int) -> None:
    home = workdir / "home"
    env = {**server.env(), "HOME": str(home), "CODEX_HOME": str(home / ".codex")}
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    usd_in, usd_cached, usd_out = PRICES
    (workdir / "orch.toml").write_text(
        f"""\
data_dir = ".orch"
retry_backoff_s = 0
max_attempts = 1

[agents.codex]
adapter = "codex"
command = [{json.dumps(str(CODEX))}]
model = "{MODEL}"
args = {json.dumps(server.codex_args(**provider))}
usd_per_mtok_input = {usd_in}
usd_per_mtok_cached_input = {usd_cached}
usd_per_mtok_output = {usd_out}
env = {{ {", ".join(f"{key} = {json.dumps(value)}" for key, value in env.items())} }}

[stages.analysis]
agent = "codex"
[stages.architecture]
agent = "codex"
[stages.development]
agent = "codex"
"""
    )


def orch(workdir: Path, *args: str, exit_code: int = 0) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ORCH_", "ANTHROPIC_", "OPENAI_", "CODEX_"))
    }
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


def run_to_the_gate_and_on(workdir: Path, repo: Path) -> dict[str, Any]:
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
    first = orch(workdir, "run")
    assert "waits for approval: orch task approve DEMO-1" in first.stdout
    orch(workdir, "task", "approve", "DEMO-1")
    orch(workdir, "run")
    return show(workdir)


def runs_by_stage(shown: dict[str, Any]) -> dict[str, dict[str, Any]]:
    jobs = {job["id"]: job for job in shown["jobs"]}
    return {jobs[run["job_id"]]["stage"]: run for run in shown["runs"]}


def priced(*usages: dict[str, int]) -> float:
    usd_in, usd_cached, usd_out = PRICES
    return sum(
        (
            (u["input_tokens"] - u["cached_input_tokens"]) * usd_in
            + u["cached_input_tokens"] * usd_cached
            + u["output_tokens"] * usd_out
        )
        / 1_000_000
        for u in usages
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return create_demo_repository(tmp_path / "textkit")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_codex_does_three_stages_to_done_and_a_dropped_stream_it_resumed_is_a_success(
    workdir: Path, repo: Path
) -> None:
    with ModelServer(pipeline_script(development_drops=1)) as server:
        write_config(workdir, server)
        shown = run_to_the_gate_and_on(workdir, repo)
        exchanges = list(server.exchanges)

    assert shown["stage"] == "done", shown["failed_reason"]
    assert not shown["failed"]
    runs = runs_by_stage(shown)
    for stage in ("analysis", "architecture", "development"):
        run = runs[stage]
        assert run["agent"] == "codex"
        assert run["exit_code"] == 0
        assert run["model"] == MODEL
        assert run["input_tokens"] == WRITE_USAGE["input_tokens"] + DONE_USAGE["input_tokens"]
        assert run["output_tokens"] == WRITE_USAGE["output_tokens"] + DONE_USAGE["output_tokens"]
        # Cached input at its own price, not at the input price.
        assert run["cost_usd"] == pytest.approx(priced(WRITE_USAGE, DONE_USAGE))
        log = Path(run["log_path"]).read_text()
        events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert events[0]["type"] == "thread.started"
        assert events[-1]["type"] == "turn.completed"
    assert shown["cost_usd"] == pytest.approx(3 * priced(WRITE_USAGE, DONE_USAGE))

    # The development stream was cut once, Codex said it reconnects, and went on.
    dropped = [e for e in exchanges if e.summary.endswith("(dropped)")]
    assert [(e.session, e.turn) for e in dropped] == [("development", 1)]
    log = Path(runs["development"]["log_path"]).read_text()
    notices = [
        event
        for event in (json.loads(line) for line in log.splitlines() if line.startswith("{"))
        if event["type"] == "error"
    ]
    assert len(notices) == 1
    assert notices[0]["message"].startswith("Reconnecting... 1/")
    exited = [
        e for e in shown["events"] if e["kind"] == "job.exited" and e["data"].get("session_id")
    ]
    assert len(exited) == 3
    assert not any(e["data"].get("is_error") for e in exited)

    # What Codex's commands wrote, merged into main by the deploy stage.
    subprocess.run(["git", "checkout", "-q", "main"], cwd=repo, check=True)
    docs = repo / "docs" / "work-items" / "DEMO-1"
    assert (docs / "01-brd.md").read_text() == BRD
    assert (docs / "06-adr" / "ADR-001-slugify-module.md").read_text() == ADR
    assert (repo / "textkit" / "slugify.py").read_text() == SLUGIFY
    assert "result: PASS" in (docs / "13-test-report.md").read_text()


def test_a_stream_that_stays_down_fails_the_run_with_codexs_reason(
    workdir: Path, repo: Path
) -> None:
    # Analysis's last answer is cut every time; Codex gives up after one reconnect.
    script = parse_script(
        {
            "sessions": [
                session("analysis", write("{artifact_dir}/01-brd.md", BRD), "BRD written.", 99)
            ]
        },
        "dropping script",
    )
    with ModelServer(script) as server:
        write_config(workdir, server, stream_max_retries=1)
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
        orch(workdir, "run", exit_code=1)  # the task failed during this run
    shown = show(workdir)
    assert shown["failed"]
    assert shown["stage"] == "analysis"
    assert "codex failed: stream disconnected before completion" in shown["failed_reason"]
    (run,) = shown["runs"]
    assert run["exit_code"] == 1
