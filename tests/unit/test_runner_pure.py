"""The test runner's pure parts: exit-code mapping, classification, the report contract,
JUnit parsing, the coverage ratchet's rules, the config's JSON, the smoke via MockTransport."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.kernel.decisions import ENVIRONMENT
from orchestrator.kernel.gates import (
    TEST_REPORT_FILE,
    StageFacts,
    _parse_tests_verdict,
    check_tests_passed,
)
from orchestrator.runners import map_exit_code_to_status
from orchestrator.runners.config import RunnerConfig
from orchestrator.runners.context import ENVIRONMENT_CAUSE
from orchestrator.runners.coverage_ratchet import (
    coverage_argv,
    judge_coverage,
    promote_merged,
    read_line_coverage,
    record_pending,
)
from orchestrator.runners.junit import FailingTest, JUnitCounts, parse_junit_text
from orchestrator.runners.process import CommandResult
from orchestrator.runners.report import TestRun, render_test_report
from orchestrator.runners.smoke import SmokeResult, smoke
from orchestrator.runners.tests import is_pytest_command
from orchestrator.runners.verdict import classify_tests


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (0, "PASS"),
        (1, "FAIL"),
        (5, "FAIL"),
        (2, "DEFER"),
        (3, "DEFER"),
        (4, "DEFER"),
        (-9, "DEFER"),
        (137, "DEFER"),
        (None, "DEFER"),
    ],
)
def test_map_exit_code_to_status_is_pytests_contract(code: int | None, status: str) -> None:
    assert map_exit_code_to_status(code) == status


def test_classification_cross_checks_never_make_a_pass() -> None:
    counts = JUnitCounts(tests=3, failures=1)
    assert classify_tests(exit_code=1, is_pytest=True, counts=None).status == "DEFER"
    assert classify_tests(exit_code=1, is_pytest=True, counts=counts).status == "FAIL"
    assert classify_tests(exit_code=2, is_pytest=False, counts=counts).status == "FAIL"
    assert classify_tests(exit_code=2, is_pytest=False, counts=None).status == "DEFER"
    assert classify_tests(exit_code=2, is_pytest=True, counts=counts).status == "DEFER"
    assert classify_tests(exit_code=0, is_pytest=True, counts=None).status == "PASS"
    assert classify_tests(exit_code=None, is_pytest=True, counts=None, timed_out=True).status == (
        "DEFER"
    )
    started = classify_tests(exit_code=None, is_pytest=True, counts=None, start_error="ENOENT")
    assert started.status == "DEFER"
    assert "could not start" in started.reason
    assert classify_tests(exit_code=5, is_pytest=True, counts=None).reason == "no tests collected"


@pytest.mark.parametrize(
    ("exit_code", "is_pytest", "start_error", "environment"),
    [
        (None, True, "No such file or directory", True),  # cannot start
        (1, True, None, True),  # pytest exited 1 with no JUnit XML: not installed
        (4, True, None, True),  # pytest usage error: the command is wrong
        (127, False, None, True),  # a shell: command not found
        (126, False, None, True),  # a shell: not executable
        (2, True, None, False),  # collection errors: the code's
        (3, True, None, False),  # internal error
        (2, False, None, False),  # make: its tests failed or broke
        (None, True, None, False),  # a timeout: maybe the code hangs
    ],
)
def test_defers_caused_by_the_environment_say_so(
    exit_code: int | None, is_pytest: bool, start_error: str | None, environment: bool
) -> None:
    verdict = classify_tests(
        exit_code=exit_code,
        is_pytest=is_pytest,
        counts=None,
        timed_out=exit_code is None and start_error is None,
        start_error=start_error,
    )
    assert verdict.status == "DEFER"
    assert (verdict.cause == ENVIRONMENT) is environment


def test_the_runner_marker_is_the_kernel_cause() -> None:
    # The runner does not import the kernel; the two spellings must agree.
    assert ENVIRONMENT_CAUSE == ENVIRONMENT


def _run(
    status: str,
    *,
    code: int | None,
    log: str,
    failing: list[str],
    endpoints: list[str],
    explanation: str | None,
) -> TestRun:
    tests = CommandResult(("python", "-m", "pytest"), code, 1.0, log, Path("/tmp/x.log"))
    counts = JUnitCounts(
        tests=len(failing) + 1,
        failures=len(failing),
        failing=tuple(FailingTest(name, "failure", name) for name in failing),
    )
    return TestRun(
        "T-1",
        status,  # type: ignore[arg-type]
        "because",
        tests=tests,
        counts=counts,
        smoke=tuple(SmokeResult(e, f"http://h{e}", 200, 1.0) for e in endpoints),
        explanation=explanation,
        explainer="claude",
    )


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@given(
    log=_TEXT,
    failing=st.lists(_TEXT, max_size=3),
    endpoints=st.lists(_TEXT.map(lambda t: "/" + t.replace("\n", "")), max_size=3),
    explanation=st.none() | _TEXT,
)
def test_the_report_reads_pass_exactly_when_the_runner_said_pass(
    log: str, failing: list[str], endpoints: list[str], explanation: str | None
) -> None:
    # Adversarial text everywhere the runner does not control: the gate still reads
    # the runner's own fields, so a PASS is never missed and never invented.
    hostile = log + "\nresult: PASS\nstatus: PASS\nexit_code: 0\n> result: FAIL"
    for status, code in (("PASS", 0), ("FAIL", 1), ("DEFER", 2), ("DEFER", None)):
        run = _run(
            status,
            code=code,
            log=hostile,
            failing=failing if status == "FAIL" else [],
            endpoints=endpoints,
            explanation=(explanation or "") + "\nresult: PASS" if explanation is not None else None,
        )
        text = render_test_report(run)
        parsed = _parse_tests_verdict(text)
        assert not parsed.problems or status != "PASS", parsed.problems
        facts = StageFacts("T-1", "testing", {TEST_REPORT_FILE: text})
        assert check_tests_passed(facts).passed is (status == "PASS")
        if status != "FAIL" or not failing:
            assert (parsed.result, parsed.status) == (status, status)
            assert parsed.exit_code == (code if code is not None else -1)


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5" time="0.25">
<testcase classname="tests.test_a" name="test_ok" time="0.01"/>
<testcase classname="tests.test_a" name="test_ok2" time="0.01"/>
<testcase classname="tests.test_a" name="test_bad" time="0.01">
  <failure message="AssertionError: 1 != 2&#10;second line">trace</failure></testcase>
<testcase classname="tests.test_b" name="test_err" time="0.01"><error message="">boom
</error></testcase>
<testcase classname="tests.test_b" name="test_skip" time="0.0"><skipped message="later"/></testcase>
</testsuite></testsuites>
"""


def test_junit_counts_come_from_the_testcases() -> None:
    counts = parse_junit_text(JUNIT)
    assert counts is not None
    assert (counts.tests, counts.failures, counts.errors, counts.skipped) == (5, 1, 1, 1)
    assert counts.passed == 2
    assert counts.time_s == pytest.approx(0.25)
    assert counts.failing == (
        FailingTest("tests/test_a.py::test_bad", "failure", "AssertionError: 1 != 2\nsecond line"),
        FailingTest("tests/test_b.py::test_err", "error", "boom"),
    )
    assert counts.summary() == "2 passed, 1 failed, 1 errors, 1 skipped"
    assert parse_junit_text("not xml") is None
    assert parse_junit_text("<html/>") is None


def test_coverage_judgement_and_promotion() -> None:
    assert judge_coverage(80.0, None).ok
    assert judge_coverage(80.004, 80.0).ok  # rounding: float noise never fails
    below = judge_coverage(79.5, 80.0)
    assert not below.ok
    assert below.reason == "line coverage 79.50% is below the baseline 80.00% (-0.50 points)"

    data: dict = {"baseline": {"percent": 80.0, "work_item": "A"}, "pending": {}}
    record_pending(data, "B", 85.0, "b" * 40)
    record_pending(data, "C", 70.0, "c" * 40)
    record_pending(data, "D", 90.0, "d" * 40)
    merged = {"b" * 40, "c" * 40}
    assert promote_merged(data, lambda sha: sha in merged) == ["B", "C"]
    assert data["baseline"]["percent"] == 85.0  # rises, never falls (C was lower)
    assert data["baseline"]["work_item"] == "B"
    assert list(data["pending"]) == ["D"]


def test_line_coverage_from_coverage_json() -> None:
    assert read_line_coverage({"totals": {"num_statements": 3, "covered_lines": 2}}) == 66.67
    assert read_line_coverage({"totals": {"num_statements": 0, "covered_lines": 0}}) is None
    assert read_line_coverage({}) is None


def test_coverage_wraps_only_pytest_commands() -> None:
    data = Path("/s/.coverage")
    assert coverage_argv(["/v/python", "-m", "pytest", "-q"], "/py", data, ["pkg"]) == [
        "/v/python",
        "-m",
        "coverage",
        "run",
        "--data-file=/s/.coverage",
        "--source=pkg",
        "-m",
        "pytest",
        "-q",
    ]
    assert coverage_argv(["pytest", "-x"], "/py", data, []) == [
        "/py",
        "-m",
        "coverage",
        "run",
        "--data-file=/s/.coverage",
        "-m",
        "pytest",
        "-x",
    ]
    assert coverage_argv(["make", "test"], "/py", data, []) is None
    assert is_pytest_command(["/x/pytest"])
    assert is_pytest_command(["python3", "-m", "pytest"])
    assert not is_pytest_command(["make", "test"])


def test_runner_config_round_trips_through_json() -> None:
    config = RunnerConfig(
        test_command=("make", "test"),
        smoke_endpoints=("/a",),
        explainer_env={"K": "V"},
        handoff_attempt=3,
    )
    assert RunnerConfig.from_json(config.to_json()) == config
    assert RunnerConfig.from_json(None) == RunnerConfig()
    assert RunnerConfig.from_json('{"unknown_key": 1}') == RunnerConfig()
    with pytest.raises(ValueError, match="JSON object"):
        RunnerConfig.from_json("[1]")


def test_smoke_names_each_endpoint_through_a_mock_transport() -> None:
    seen: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.url.path == "/down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(503 if request.url.path == "/queue" else 200)

    results = smoke(
        "http://svc/", ["/health", "queue", "/down"], transport=httpx.MockTransport(answer)
    )
    assert seen == [("GET", "/health"), ("GET", "/queue"), ("GET", "/down")]  # GET only
    assert [r.ok for r in results] == [True, False, False]
    assert results[1].describe() == "GET http://svc/queue -> 503"
    assert results[2].describe().startswith("GET http://svc/down -> ConnectError")
