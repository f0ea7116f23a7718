"""The test runner (issue 4, TC-01..TC-14): real subprocesses, real pytest, real HTTP.

Each test builds a real git repository with a real pytest suite and starts the runner
as the engine does (``python -m orchestrator.runners tests`` with ``ORCH_*`` and
``ORCH_RUNNER_CONFIG``), then reads the report through the real testing gate. The
hand-off, kill-switch and scope tests drive the real :class:`Engine` (see
``test_test_runner_engine.py``). TC-13 (post-deploy failure: one rollback, one alert)
belongs to the deploy finalizer's tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from runner_helpers import (
    commit,
    gate_verdict,
    http_instance,
    make_repo,
    process_running,
    report,
    run_runner,
    runner_env,
    start_runner,
)

from orchestrator.kernel.gates import _parse_tests_verdict
from orchestrator.runners import TOOL_ERROR_EXIT
from orchestrator.runners.config import RunnerConfig
from orchestrator.runners.coverage_ratchet import baseline_file

PASSING = {
    "calc.py": "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
    "tests/test_calc.py": (
        "from calc import add, sub\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n\n\n"
        "def test_sub():\n    assert sub(5, 3) == 2\n"
    ),
    "pyproject.toml": '[tool.pytest.ini_options]\npythonpath = ["."]\n',
}
FAILING_TEST = (
    "from calc import add\n\n\ndef test_add_is_wrong():\n    assert add(2, 2) == 5, 'two and two'\n"
)


def _fields(text: str) -> tuple[str | None, str | None, int | None]:
    parsed = _parse_tests_verdict(text)
    assert not parsed.problems, parsed.problems
    return parsed.result, parsed.status, parsed.exit_code


def test_tc01_passing_tests_pass_the_gate(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", PASSING)
    done = run_runner(repo)
    assert done.returncode == 0, done.stdout + done.stderr
    text = report(repo)
    assert _fields(text) == ("PASS", "PASS", 0)
    assert "- counts: 2 passed, 0 failed, 0 errors, 0 skipped" in text
    assert "no model decided this" in text
    assert gate_verdict(repo).passed
    result = json.loads(
        next(line for line in done.stdout.splitlines() if line.startswith("ORCH-RESULT "))[12:]
    )
    assert result["tests_status"] == "PASS"


def test_tc02_failing_tests_fail_the_gate_naming_the_test(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {**PASSING, "tests/test_wrong.py": FAILING_TEST})
    done = run_runner(repo)
    assert done.returncode == 0, done.stderr  # a verdict, not a tool error
    text = report(repo)
    assert _fields(text) == ("FAIL", "FAIL", 1)
    assert "- counts: 2 passed, 1 failed" in text
    assert "- failure in `tests/test_wrong.py::test_add_is_wrong` at tests/test_wrong.py:" in text
    assert "  E   AssertionError: two and two" in text
    verdict = gate_verdict(repo)
    assert not verdict.passed
    assert "result FAIL" in verdict.reason


def test_a_suite_run_in_colour_is_reported_without_terminal_escapes(tmp_path: Path) -> None:
    """python-slugify's pyproject says ``addopts = "--color=yes"``: its report's log tail
    (and so the development agent's feedback) was full of ESC[32m."""
    coloured = PASSING["pyproject.toml"] + 'addopts = "--color=yes"\n'
    files = {**PASSING, "pyproject.toml": coloured, "tests/test_wrong.py": FAILING_TEST}
    repo = make_repo(tmp_path / "repo", files)
    done = run_runner(repo)
    assert done.returncode == 0, done.stderr
    text = report(repo)
    assert _fields(text) == ("FAIL", "FAIL", 1)
    assert "\x1b" not in text
    assert "1 failed, 2 passed" in text  # pytest's own summary line, in the log tail


def test_tc03_no_tests_collected_is_a_fail(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"calc.py": PASSING["calc.py"], "tests/helpers.py": ""})
    done = run_runner(repo)
    assert done.returncode == 0, done.stderr
    text = report(repo)
    assert _fields(text) == ("FAIL", "FAIL", 5)
    assert "Verdict: FAIL, no tests collected." in text
    assert not gate_verdict(repo).passed


def test_tc04_collection_error_is_a_defer_never_a_pass(tmp_path: Path) -> None:
    broken = "import module_that_does_not_exist\n\n\ndef test_x():\n    assert True\n"
    repo = make_repo(tmp_path / "repo", {**PASSING, "tests/test_broken.py": broken})
    done = run_runner(repo)
    assert done.returncode == TOOL_ERROR_EXIT
    assert "DEFER" in done.stderr
    text = report(repo)
    assert _fields(text) == ("DEFER", "DEFER", 2)
    assert "errors during collection" in text
    assert not gate_verdict(repo).passed


def test_tc05_timeout_kills_the_whole_tree(tmp_path: Path) -> None:
    # The test and its grandchild sleep for an hour: had the runner not killed them at
    # its timeout, run_runner's own deadline (or pytest-timeout) fails this test.
    pid_file = tmp_path / "pids"
    slow = (
        "import os, subprocess, time\n\n\n"
        "def test_slow():\n"
        "    child = subprocess.Popen(['sleep', '3600'])\n"
        f"    open({str(pid_file)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "    time.sleep(3600)\n"
    )
    repo = make_repo(tmp_path / "repo", {**PASSING, "tests/test_slow.py": slow})
    done = run_runner(repo, RunnerConfig(timeout_s=3))
    assert done.returncode == TOOL_ERROR_EXIT
    text = report(repo)
    assert _fields(text) == ("DEFER", "DEFER", -1)
    assert "timed out" in text
    pytest_pid, grandchild = (int(pid) for pid in pid_file.read_text().split())
    assert not process_running(pytest_pid), "the test process survived the tree-kill"
    assert not process_running(grandchild), "the grandchild survived the tree-kill"


def test_tc05b_a_daemon_left_by_passing_tests_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    leaves = (
        "import subprocess\n\n\n"
        "def test_leaves_a_daemon():\n"
        "    child = subprocess.Popen(['sleep', '600'], start_new_session=False,\n"
        "                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"    open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
    )
    repo = make_repo(tmp_path / "repo", {**PASSING, "tests/test_daemon.py": leaves})
    done = run_runner(repo)
    assert done.returncode == 0, done.stderr
    assert _fields(report(repo)) == ("PASS", "PASS", 0)
    assert "the tests left processes running; killed" in report(repo)
    assert not process_running(int(pid_file.read_text()))


@pytest.mark.parametrize("how", ["a malformed runner config", "a missing variable"])
def test_tc06_the_runner_crashing_is_a_defer_exit_not_a_traceback(tmp_path: Path, how: str) -> None:
    repo = make_repo(tmp_path / "repo", PASSING)
    env = runner_env(repo, RunnerConfig())
    if how == "a malformed runner config":
        env["ORCH_RUNNER_CONFIG"] = "{not json"
    else:
        del env["ORCH_BRANCH"]
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.runners", "tests"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == TOOL_ERROR_EXIT, (how, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1


def test_tc06b_an_unwritable_report_is_a_defer(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", PASSING)
    # The report's path is taken by a directory: writing it raises inside the runner.
    (repo / "docs" / "work-items" / "T-1" / "13-test-report.md").mkdir(parents=True)
    done = run_runner(repo)
    assert done.returncode == TOOL_ERROR_EXIT
    assert "IsADirectoryError" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("files", "config", "expected"),
    [
        (PASSING, RunnerConfig(), ("PASS", "PASS", 0)),
        ({**PASSING, "tests/test_wrong.py": FAILING_TEST}, RunnerConfig(), ("FAIL", "FAIL", 1)),
        ({"calc.py": ""}, RunnerConfig(), ("FAIL", "FAIL", 5)),
        (PASSING, RunnerConfig(test_command=("no-such-test-tool",)), ("DEFER", "DEFER", -1)),
        (PASSING, RunnerConfig(setup_command=("false",)), ("DEFER", "DEFER", -1)),
        (PASSING, RunnerConfig(test_command=("sh", "-c", "exit 0")), ("PASS", "PASS", 0)),
        (PASSING, RunnerConfig(test_command=("sh", "-c", "exit 2")), ("DEFER", "DEFER", 2)),
        (PASSING, RunnerConfig(config_error="ValueError: unusable"), ("DEFER", "DEFER", -1)),
    ],
    ids=[
        "pass",
        "fail",
        "no-tests",
        "cannot-start",
        "setup-fails",
        "plain-pass",
        "plain-2",
        "bad-config",
    ],
)
def test_tc10_report_round_trips_through_check_tests_passed(
    tmp_path: Path,
    files: dict[str, str],
    config: RunnerConfig,
    expected: tuple[str, str, int],
) -> None:
    repo = make_repo(tmp_path / "repo", files)
    done = run_runner(repo, config)
    assert done.returncode == (0 if expected[0] != "DEFER" else TOOL_ERROR_EXIT), done.stderr
    text = report(repo)
    assert _fields(text) == expected
    verdict = gate_verdict(repo)
    assert verdict.passed is (expected[0] == "PASS"), verdict.reason


def test_pytest_exit_1_without_junit_is_a_tool_error(tmp_path: Path) -> None:
    # `python -m pytest` on an interpreter without pytest exits 1 before any test runs.
    repo = make_repo(tmp_path / "repo", PASSING)
    command = ("sh", "-c", 'echo "No module named pytest" >&2; exit 1', "-m", "pytest")
    done = run_runner(repo, RunnerConfig(test_command=command))
    assert done.returncode == TOOL_ERROR_EXIT
    assert "wrote no JUnit XML" in report(repo)


def test_tc11_serial_gate_holds_two_concurrent_runs_apart(tmp_path: Path) -> None:
    timeline = tmp_path / "timeline.txt"
    suite = {
        **PASSING,
        "tests/test_shared.py": (
            "import os, time\n\n\n"
            "def test_uses_the_shared_resource():\n"
            "    log = os.environ['TIMELINE']\n"
            "    with open(log, 'a') as f:\n"
            "        f.write(f'start {time.time()}\\n')\n"
            "    time.sleep(1.0)\n"
            "    with open(log, 'a') as f:\n"
            "        f.write(f'end {time.time()}\\n')\n"
        ),
    }
    repos = [make_repo(tmp_path / f"repo{n}", suite) for n in (1, 2)]

    def run_both(gates: tuple[str, str]) -> list[str]:
        timeline.write_text("")
        runners = [
            start_runner(
                repo,
                RunnerConfig(serial_gate=gate, lock_dir=str(tmp_path / "locks")),
                extra_env={"TIMELINE": str(timeline)},
            )
            for repo, gate in zip(repos, gates, strict=True)
        ]
        for runner in runners:
            output, _ = runner.communicate(timeout=120)
            assert runner.returncode == 0, output
        return [line.split()[0] for line in timeline.read_text().splitlines()]

    # The control: different resources run side by side.
    assert run_both(("db-a", "db-b")) == ["start", "start", "end", "end"]
    # One resource: strictly one after the other.
    assert run_both(("db", "db")) == ["start", "end", "start", "end"]
    waits = [
        float(line.split("waited ")[1].rstrip("s"))
        for repo in repos
        for line in report(repo).splitlines()
        if line.startswith("- serial gate:")
    ]
    # The runner that queued behind the other says so (how long is the machine's business).
    assert len(waits) == 2
    assert max(waits) > 0


def test_tc12_smoke_failure_fails_naming_the_endpoint(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", PASSING)
    with http_instance({"/health": 200, "/status": 200, "/queue": 500}) as base_url:
        done = run_runner(repo, RunnerConfig(smoke_base_url=base_url))
    assert done.returncode == 0, done.stderr
    text = report(repo)
    assert _fields(text) == ("FAIL", "FAIL", 0)
    assert f"the smoke failed: GET {base_url}/queue -> 500" in text
    assert "/health" in text
    assert "- smoke: 2/3 endpoints answered 2xx" in text
    verdict = gate_verdict(repo)
    assert not verdict.passed


def test_tc12b_a_healthy_instance_passes_the_smoke(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", PASSING)
    with http_instance({"/health": 200, "/status": 200, "/queue": 200}) as base_url:
        done = run_runner(repo, RunnerConfig(smoke_base_url=base_url))
    assert done.returncode == 0, done.stderr
    assert _fields(report(repo)) == ("PASS", "PASS", 0)
    assert "- smoke: 3/3 endpoints answered 2xx" in report(repo)


def test_tc14_coverage_below_the_baseline_fails_with_the_numbers(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", PASSING)
    data_dir = tmp_path / "data"
    ratchet = baseline_file(data_dir, repo)
    config = RunnerConfig(
        coverage_ratchet=True, coverage_source=("calc",), coverage_file=str(ratchet)
    )

    first = run_runner(repo, config)
    assert first.returncode == 0, first.stdout + first.stderr
    assert _fields(report(repo)) == ("PASS", "PASS", 0)
    assert "- coverage: 100.00% (no baseline yet)" in report(repo)
    state = json.loads(ratchet.read_text())
    assert state["baseline"] is None
    assert state["pending"]["T-1"]["percent"] == 100.0

    # The tested commit is on main (the runner's base branch): merged. An untested
    # function then lowers the coverage; the next run promotes, then judges.
    commit(repo, {"calc.py": PASSING["calc.py"] + "\n\ndef mul(a, b):\n    return a * b\n"})
    second = run_runner(repo, config)
    assert second.returncode == 0, second.stderr
    text = report(repo)
    assert _fields(text) == ("FAIL", "FAIL", 0)
    assert "line coverage 83.33% is below the baseline 100.00% (-16.67 points)" in text
    assert not gate_verdict(repo).passed
    state = json.loads(ratchet.read_text())
    assert state["baseline"]["percent"] == 100.0
    assert state["pending"] == {}


def test_coverage_ratchet_without_coverage_installed_is_a_defer(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", PASSING)
    config = RunnerConfig(coverage_ratchet=True, test_command=("make", "test"))
    done = run_runner(repo, config)
    assert done.returncode == TOOL_ERROR_EXIT
    assert "the coverage ratchet needs a pytest test command" in report(repo)


def test_setup_command_runs_first_in_the_worktree(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {
            **PASSING,
            ".gitignore": ".venv/\n__pycache__/\n",
            "tests/test_setup.py": (
                "from pathlib import Path\n\n\n"
                "def test_setup_ran():\n    assert Path('.venv/marker').is_file()\n"
            ),
        },
    )
    setup = ("sh", "-c", "mkdir -p .venv && touch .venv/marker")
    done = run_runner(repo, RunnerConfig(setup_command=setup))
    assert done.returncode == 0, done.stdout
    assert _fields(report(repo)) == ("PASS", "PASS", 0)


def test_a_setup_that_leaves_unignored_files_is_no_defer(tmp_path: Path) -> None:
    # Issue 13: a venv the .gitignore does not list made the runner DEFER; the engine's
    # commit policy now keeps what a runner creates out of every commit instead.
    repo = make_repo(tmp_path / "repo", PASSING)
    done = run_runner(repo, RunnerConfig(setup_command=("sh", "-c", "mkdir env && touch env/x")))
    assert done.returncode == 0, done.stdout
    assert _fields(report(repo)) == ("PASS", "PASS", 0)


def _result(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    line = next(line for line in done.stdout.splitlines() if line.startswith("ORCH-RESULT "))
    facts = json.loads(line.removeprefix("ORCH-RESULT "))
    assert isinstance(facts, dict)
    return facts


def test_a_test_command_that_cannot_start_is_for_a_person_even_on_the_hand_off(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", PASSING)
    seen = tmp_path / "explainer-ran"
    config = RunnerConfig(
        test_command=("no-such-test-tool-3f9c",),
        handoff_attempt=1,
        explainer_name="tester",
        explainer_argv=("sh", "-c", f"touch {seen}"),
    )
    done = run_runner(repo, config)
    assert done.returncode == TOOL_ERROR_EXIT
    facts = _result(done)
    assert facts["defer_cause"] == "environment"
    assert "no-such-test-tool-3f9c" in str(facts["defer_reason"])
    assert not seen.exists()  # no model is asked about a missing tool
    text = report(repo)
    assert _fields(text) == ("DEFER", "DEFER", -1)
    assert "Its cause is the environment or the configuration" in text
    assert "`orch task retry T-1`" in text


@pytest.mark.parametrize(
    "explainer",
    [
        {"explainer_name": "claude", "explainer_argv": ("/nonexistent/claude",)},
        {"explainer_name": "ghost", "explainer_error": "unknown agent 'ghost'"},
    ],
    ids=["not-installed", "misconfigured"],
)
def test_a_hand_off_whose_explainer_cannot_run_is_for_a_person(
    tmp_path: Path, explainer: dict[str, object]
) -> None:
    # A collection error is the code's DEFER; the hand-off would explain it, but the
    # explainer itself cannot run: that is configuration, not work for development.
    repo = make_repo(tmp_path / "repo", {**PASSING, "tests/test_broken.py": "import nope\n"})
    config = RunnerConfig(handoff_attempt=1, **explainer)  # type: ignore[arg-type]
    done = run_runner(repo, config)
    assert done.returncode == TOOL_ERROR_EXIT
    facts = _result(done)
    assert facts["defer_cause"] == "environment"
    reason = str(facts["defer_reason"])
    assert f"the hybrid explainer '{explainer['explainer_name']}' cannot run" in reason
    assert "test_runner_hybrid = false" in reason
    assert _fields(report(repo))[0] == "DEFER"
