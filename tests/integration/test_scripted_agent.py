"""The scripted agent as a real subprocess, in a worktree of the real demo repository.

Each test gets a fresh demo repository (``create_demo_repository``) and a worktree on
``orch/<work item>``, as the engine would set up; the agent runs with the ``ORCH_*``
variables the engine sets, and its artifacts are checked with the kernel's own gates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.agents.usage import parse_usage
from orchestrator.cli.demo_project import (
    DEMO_TASK_DESCRIPTION,
    DEMO_TASK_TITLE,
    DEMO_WORK_ITEM,
    create_demo_repository,
    write_failing_recipe,
)
from orchestrator.kernel.gates import (
    StageFacts,
    check_adr_present,
    check_brd_present,
    check_code_committed,
    check_tests_passed,
)

AGENT_TIMEOUT_S = 120
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@localhost",
}


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
        check=True,
    )
    return result.stdout


def commit_all(worktree: Path, message: str) -> list[str]:
    """Commit everything, as the engine does after a job; return the changed paths."""
    git(worktree, "add", "-A")
    git(worktree, "commit", "-q", "-m", message)
    return git(worktree, "diff", "--name-only", "HEAD~1", "HEAD").split()


def changed_paths(worktree: Path) -> list[str]:
    """Paths that differ from HEAD, untracked files included."""
    out = git(worktree, "status", "--porcelain", "--untracked-files=all")
    return sorted(line[3:] for line in out.splitlines())


def artifacts(worktree: Path, work_item: str) -> dict[str, str]:
    root = worktree / "docs" / "work-items" / work_item
    return {
        path.relative_to(root).as_posix(): path.read_text(encoding="utf-8")
        for path in root.rglob("*")
        if path.is_file()
    }


def run_agent(
    worktree: Path,
    stage: str,
    *args: str,
    work_item: str = DEMO_WORK_ITEM,
    attempt: int = 1,
    rollback: int = 0,
    feedback: str = "",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    prompt_file = worktree.parent / f"prompt-{stage}.md"
    prompt_file.write_text(f"Do the {stage} stage of {work_item}.\n", encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    full_env = {
        **base,
        "ORCH_WORK_ITEM": work_item,
        "ORCH_STAGE": stage,
        "ORCH_ATTEMPT": str(attempt),
        "ORCH_ARTIFACT_DIR": f"docs/work-items/{work_item}",
        "ORCH_TASK_TITLE": DEMO_TASK_TITLE,
        "ORCH_TASK_DESCRIPTION": DEMO_TASK_DESCRIPTION,
        "ORCH_PROMPT_FILE": str(prompt_file),
        "ORCH_FEEDBACK": feedback,
        "ORCH_ROLLBACK_COUNT": str(rollback),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.agents.scripted", "--stage", stage, *args],
        cwd=worktree,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=AGENT_TIMEOUT_S,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return create_demo_repository(tmp_path / "demo")


def add_worktree(repo: Path, work_item: str) -> Path:
    worktree = repo.parent / f"{repo.name}-wt-{work_item}"
    git(repo, "worktree", "add", "-q", "-b", f"orch/{work_item}", str(worktree), "main")
    return worktree


@pytest.fixture
def worktree(repo: Path) -> Path:
    return add_worktree(repo, DEMO_WORK_ITEM)


def test_demo_repository_has_history_and_passing_tests(repo: Path) -> None:
    assert len(git(repo, "log", "--oneline").splitlines()) == 3
    assert git(repo, "branch", "--show-current").strip() == "main"
    assert git(repo, "status", "--porcelain") == ""
    assert (repo / "docs/work-items/DEMO-1/recipe.toml").is_file()
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout


def test_analysis_writes_a_brd_the_gate_accepts(worktree: Path) -> None:
    ok(run_agent(worktree, "analysis"))
    brd = (worktree / "docs/work-items/DEMO-1/01-brd.md").read_text(encoding="utf-8")
    assert len(brd.strip()) >= 40
    assert DEMO_TASK_TITLE in brd
    assert "## Acceptance criteria" in brd
    facts = StageFacts(DEMO_WORK_ITEM, "analysis", artifacts(worktree, DEMO_WORK_ITEM))
    assert check_brd_present(facts).passed


def test_analysis_after_feedback_mentions_it(worktree: Path) -> None:
    ok(run_agent(worktree, "analysis", attempt=2, feedback="BRD lacks error cases"))
    brd = (worktree / "docs/work-items/DEMO-1/01-brd.md").read_text(encoding="utf-8")
    assert "> BRD lacks error cases" in brd


def test_architecture_writes_an_adr_the_gate_accepts(worktree: Path) -> None:
    ok(run_agent(worktree, "architecture"))
    adr = worktree / "docs/work-items/DEMO-1/06-adr/ADR-001-add-a-slugify-helper-to-textkit.md"
    text = adr.read_text(encoding="utf-8")
    for heading in ("## Context", "## Decision", "## Consequences"):
        assert heading in text
    assert "`textkit/slugify.py`" in text
    facts = StageFacts(DEMO_WORK_ITEM, "architecture", artifacts(worktree, DEMO_WORK_ITEM))
    assert check_adr_present(facts).passed


def test_development_makes_a_real_change_every_time(worktree: Path) -> None:
    ok(run_agent(worktree, "development"))
    assert changed_paths(worktree) == [
        "README.md",
        "docs/work-items/DEMO-1/10-dev-notes.md",
        "tests/test_slugify.py",
        "textkit/slugify.py",
    ]
    notes = (worktree / "docs/work-items/DEMO-1/10-dev-notes.md").read_text(encoding="utf-8")
    assert "- `textkit/slugify.py`" in notes
    first = commit_all(worktree, "development, attempt 1")
    assert check_code_committed(
        StageFacts(DEMO_WORK_ITEM, "development", changed_paths=tuple(first))
    ).passed

    # A rollback re-runs development on the committed tree: the recipe writes the same
    # content, so the agent must still change code.
    ok(run_agent(worktree, "development", rollback=1, feedback="tests failed"))
    assert "textkit/slugify.py" in changed_paths(worktree)
    slugify = (worktree / "textkit/slugify.py").read_text(encoding="utf-8")
    assert slugify.endswith("# revised after feedback (attempt 1, rollback 1)\n")
    second = commit_all(worktree, "development, after rollback 1")
    facts = StageFacts(DEMO_WORK_ITEM, "development", changed_paths=tuple(second))
    assert check_code_committed(facts).passed

    # The demo's own tests prove slugify works, revision comment and all.
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_slugify.py"],
        cwd=worktree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout
    assert "10 passed" in tests.stdout


def test_testing_reports_pass_for_the_demo_recipe(worktree: Path) -> None:
    ok(run_agent(worktree, "development"))
    commit_all(worktree, "development")
    ok(run_agent(worktree, "testing"))
    report = (worktree / "docs/work-items/DEMO-1/13-test-report.md").read_text(encoding="utf-8")
    assert "result: PASS" in report
    assert "status: PASS" in report
    assert "exit_code: 0" in report
    assert "17 passed" in report
    facts = StageFacts(DEMO_WORK_ITEM, "testing", artifacts(worktree, DEMO_WORK_ITEM))
    assert check_tests_passed(facts).passed
    # Only the report changed: the test run left no caches behind to be committed.
    assert changed_paths(worktree) == ["docs/work-items/DEMO-1/13-test-report.md"]


def test_testing_reports_fail_for_the_failing_recipe(repo: Path) -> None:
    write_failing_recipe(repo, "DEMO-2")
    worktree = add_worktree(repo, "DEMO-2")
    ok(run_agent(worktree, "development", work_item="DEMO-2"))
    assert "textkit/wordcount.py" in changed_paths(worktree)
    commit_all(worktree, "development")
    ok(run_agent(worktree, "testing", work_item="DEMO-2"))
    report = (worktree / "docs/work-items/DEMO-2/13-test-report.md").read_text(encoding="utf-8")
    assert "result: FAIL" in report
    assert "status: FAIL" in report
    assert "exit_code: 1" in report
    assert "2 failed" in report
    facts = StageFacts("DEMO-2", "testing", artifacts(worktree, "DEMO-2"))
    verdict = check_tests_passed(facts)
    assert not verdict.passed
    assert "exit_code 1" in verdict.reason


def test_last_stdout_line_is_a_claude_result(worktree: Path) -> None:
    result = ok(run_agent(worktree, "development"))
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["type"] == "result"
    assert last["subtype"] == "success"
    assert last["is_error"] is False
    assert last["total_cost_usd"] > 0
    assert last["usage"]["output_tokens"] > 0
    assert last["modelUsage"]["scripted-1"]["costUSD"] == last["total_cost_usd"]
    usage = parse_usage(result.stdout)
    assert usage is not None
    assert usage.model == "scripted-1"
    assert usage.cost_usd == last["total_cost_usd"]


def test_output_is_deterministic(repo: Path, tmp_path: Path) -> None:
    other = create_demo_repository(tmp_path / "other")
    outputs = []
    for root in (repo, other):
        worktree = add_worktree(root, DEMO_WORK_ITEM)
        result = ok(run_agent(worktree, "analysis"))
        outputs.append(result.stdout.replace(str(worktree), "<wt>"))
    assert outputs[0] == outputs[1]


def test_default_recipe_without_a_recipe_file(tmp_path: Path) -> None:
    worktree = tmp_path / "bare"
    (worktree / "tests").mkdir(parents=True)
    git(worktree, "init", "-q", "-b", "main")
    ok(run_agent(worktree, "development", work_item="OPS-7"))
    assert changed_paths(worktree) == [
        "docs/work-items/OPS-7/10-dev-notes.md",
        "orch_scripted/ops_7.py",
        "tests/test_orch_scripted_ops_7.py",
    ]
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=worktree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout


def test_default_recipe_without_tests_dir_writes_only_the_module(tmp_path: Path) -> None:
    worktree = tmp_path / "bare"
    worktree.mkdir()
    git(worktree, "init", "-q", "-b", "main")
    ok(run_agent(worktree, "development", work_item="OPS-7"))
    assert changed_paths(worktree) == [
        "docs/work-items/OPS-7/10-dev-notes.md",
        "orch_scripted/ops_7.py",
    ]


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ("[[files]\npath = 'x'\n", "not valid TOML"),
        ("[[files]]\npath = 'x.py'\ncontent = ''\nmode = 'delete'\n", "mode 'delete'"),
        ("[[files]]\npath = '../escape.py'\ncontent = ''\n", "relative path inside"),
        ("[behavior]\nfail_stages = ['analysis']\n", "unknown key(s) behavior"),
        ("[behaviour]\nfail_attempts = 'one'\n", "fail_attempts"),
    ],
)
def test_bad_recipe_exits_2_with_one_line(worktree: Path, recipe: str, expected: str) -> None:
    path = worktree.parent / "bad.toml"
    path.write_text(recipe, encoding="utf-8")
    result = run_agent(worktree, "development", "--recipe", str(path))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (worktree / "docs/work-items/DEMO-1/10-dev-notes.md").exists()


def test_recipe_from_environment_variable(worktree: Path) -> None:
    path = worktree.parent / "env.toml"
    path.write_text("[[files]\n", encoding="utf-8")
    result = run_agent(worktree, "development", env={"ORCH_SCRIPTED_RECIPE": str(path)})
    assert result.returncode == 2
    assert str(path) in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--stage", "brd-approval"], {}, "unknown stage 'brd-approval'"),
        ([], {}, "--stage"),
        (["--stage", "analysis"], {"ORCH_WORK_ITEM": ""}, "ORCH_WORK_ITEM"),
        (["--stage", "analysis"], {"ORCH_ATTEMPT": "first"}, "ORCH_ATTEMPT"),
    ],
)
def test_bad_invocation_exits_2_with_one_line(
    worktree: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    full_env |= {"ORCH_WORK_ITEM": DEMO_WORK_ITEM, **env}
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.agents.scripted", *args],
        cwd=worktree,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=AGENT_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_fail_stages_fail_the_first_attempts_only(worktree: Path) -> None:
    recipe = worktree.parent / "flaky.toml"
    recipe.write_text("[behaviour]\nfail_stages = ['analysis']\nfail_attempts = 1\n")
    brd = worktree / "docs/work-items/DEMO-1/01-brd.md"

    first = run_agent(worktree, "analysis", "--recipe", str(recipe), attempt=1)
    assert first.returncode == 1
    assert "fail_stages" in first.stderr
    assert json.loads(first.stdout.splitlines()[-1])["is_error"] is True
    assert not brd.exists()

    ok(run_agent(worktree, "analysis", "--recipe", str(recipe), attempt=2))
    assert brd.is_file()
    ok(run_agent(worktree, "architecture", "--recipe", str(recipe), attempt=1))


def test_fail_stages_without_fail_attempts_fail_every_attempt(worktree: Path) -> None:
    recipe = worktree.parent / "broken.toml"
    recipe.write_text("[behaviour]\nfail_stages = ['testing']\n")
    result = run_agent(worktree, "testing", "--recipe", str(recipe), attempt=5)
    assert result.returncode == 1
