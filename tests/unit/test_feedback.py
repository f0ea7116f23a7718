"""The rollback feedback: JUnit test cases to pytest node ids, and the capped feedback text.

Hypothesis builds pytest node ids (packages, nested classes, parameters with dots, colons
and spaces), turns them into JUnit attributes exactly as pytest's ``junitxml`` plugin does
(``mangle_test_address``), and checks that :func:`node_id` gets the node id back; and it
feeds the feedback builder arbitrary and hostile reports to check its caps.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.lifecycle.feedback import (
    MAX_FEEDBACK_CHARS,
    MAX_FEEDBACK_LINES,
    MAX_FEEDBACK_TESTS,
    post_deploy_feedback,
    rollback_feedback,
)
from orchestrator.runners.junit import FailingTest, JUnitCounts, node_id, parse_junit_text
from orchestrator.runners.process import CommandResult
from orchestrator.runners.report import TestRun, render_test_report

_LOWER = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
_CLASS = st.from_regex(r"Test[A-Z0-9a-z_]{0,8}", fullmatch=True)
_PARAMS = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="[]"),
    max_size=12,
)


@st.composite
def _nodes(draw: st.DrawFn) -> tuple[str, str]:
    """A pytest node id and its test file."""
    directories = draw(st.lists(_LOWER, max_size=3))
    module = draw(_LOWER.map(lambda name: f"test_{name}"))
    path = "/".join([*directories, module]) + ".py"
    classes = draw(st.lists(_CLASS, max_size=3))
    name = "test_" + draw(_LOWER)
    params = draw(st.none() | _PARAMS)
    if params is not None:
        name += f"[{params}]"
    return "::".join([path, *classes, name]), path


def _junit_attributes(nodeid: str) -> tuple[str, str]:
    """pytest's ``mangle_test_address`` and ``classname`` / ``name``, verbatim in intent."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


@given(_nodes(), st.booleans())
def test_node_ids_round_trip_through_junit(node: tuple[str, str], with_file: bool) -> None:
    nodeid, path = node
    classname, name = _junit_attributes(nodeid)
    if with_file:  # junit_family=xunit1: the file is named
        assert node_id(classname, name, path) == nodeid
    # xunit2: only the worktree can tell the module from the classes
    assert node_id(classname, name, "", {path}.__contains__) == nodeid


@given(_nodes())
def test_without_file_or_worktree_capitalised_parts_are_classes(node: tuple[str, str]) -> None:
    nodeid, _ = node
    classname, name = _junit_attributes(nodeid)
    assert node_id(classname, name) == nodeid


def test_collection_errors_name_the_module() -> None:
    assert node_id("", "tests.test_x", "tests/test_x.py") == "tests/test_x.py"
    assert node_id("", "tests.test_x", "", {"tests/test_x.py"}.__contains__) == "tests/test_x.py"
    # A module in a directory with a dot: only the file attribute can name it.
    assert node_id("v1.2.test_x", "test_a", "v1.2/test_x.py") == "v1.2/test_x.py::test_a"


@given(st.text(), st.text(), st.text())
def test_node_id_never_raises(classname: str, name: str, file: str) -> None:
    assert isinstance(node_id(classname, name, file, lambda _: True), str)


_XML_PIECES = st.sampled_from(
    [
        "<testsuites>",
        "</testsuites>",
        "<testsuite time='x'>",
        "</testsuite>",
        "<testcase classname='a.b.TestC' name='t[1]'>",
        "<testcase>",
        "</testcase>",
        "<failure message='boom'>",
        "<failure>",
        "</failure>",
        "<error/>",
        "<skipped/>",
        "E   assert 1 == 2\n",
        "tests/x.py:3: AssertionError",
        "&amp;",
        "&bogus;",
        "<!DOCTYPE x>",
        "<?xml version='1.0'?>",
    ]
)


@given(st.lists(_XML_PIECES | st.text(max_size=20), max_size=30))
def test_parse_junit_never_raises_on_malformed_xml(pieces: list[str]) -> None:
    counts = parse_junit_text("".join(pieces), lambda _: False)
    assert counts is None or counts.failures + counts.errors >= len(counts.failing)


def test_parse_junit_reads_messages_and_locations() -> None:
    xml = """<testsuites><testsuite><testcase classname="pkg.tests.test_a.TestOuter.TestIn"
    name="test_p[a.b::c]" file="pkg/tests/test_a.py"><failure
    message="AssertionError: custom&#10;  second line&#10;assert 1 == 2">def test_p():
E       AssertionError: custom

pkg/tests/test_a.py:6: AssertionError</failure></testcase>
<testcase classname="" name="pkg.tests.test_b"><error message="collection failure">
E   ModuleNotFoundError: No module named 'nope'</error></testcase></testsuite></testsuites>"""
    counts = parse_junit_text(xml, {"pkg/tests/test_b.py"}.__contains__)
    assert counts is not None
    assert counts.failing == (
        FailingTest(
            "pkg/tests/test_a.py::TestOuter::TestIn::test_p[a.b::c]",
            "failure",
            "AssertionError: custom\n  second line\nassert 1 == 2",
            "pkg/tests/test_a.py:6",
        ),
        FailingTest("pkg/tests/test_b.py", "error", "collection failure"),
    )


def _report(failing: int, log: str) -> str:
    tests = CommandResult(("python", "-m", "pytest"), 1, 1.0, log, Path("/tmp/x.log"))
    counts = JUnitCounts(
        tests=failing + 3,
        failures=failing,
        failing=tuple(
            FailingTest(
                f"tests/test_m.py::TestK::test_{n}[{n}-x]",
                "failure",
                f"AssertionError: value {n} is wrong\nassert {n} == -1",
                f"tests/test_m.py:{n + 1}",
            )
            for n in range(failing)
        ),
    )
    run = TestRun("T-1", "FAIL", "tests failed", tests=tests, counts=counts)
    return render_test_report(run)


@given(st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=400))
def test_feedback_names_the_report_and_the_first_tests_within_its_caps(
    failing: int, log_lines: int
) -> None:
    log = "\n".join(f"log line {n}" for n in range(log_lines))
    text = rollback_feedback(
        stage="testing",
        reason="13-test-report.md: result FAIL",
        report_path="docs/work-items/T-1/13-test-report.md",
        report=_report(failing, log),
    )
    lines = text.splitlines()
    assert len(lines) <= MAX_FEEDBACK_LINES
    assert len(text) <= MAX_FEEDBACK_CHARS
    assert lines[0] == "testing failed: 13-test-report.md: result FAIL"
    assert "Full report: docs/work-items/T-1/13-test-report.md (in your worktree)." in lines
    listed = re.findall(r"`(tests/test_m\.py::TestK::test_\d+\[\d+-x\])`", text)
    assert listed == [f"tests/test_m.py::TestK::test_{n}[{n}-x]" for n in range(len(listed))]
    assert len(listed) == min(failing, MAX_FEEDBACK_TESTS)
    assert "AssertionError: value 0 is wrong" in text
    if failing > MAX_FEEDBACK_TESTS:
        assert f"({failing - len(listed)} more failing test(s)" in text
    if log_lines:
        assert f"log line {log_lines - 1}" in text  # the tail, not the head


@given(st.text(), st.text(max_size=300), st.none() | st.text(max_size=200_000))
def test_feedback_never_raises_and_holds_its_caps(
    stage: str, reason: str, report: str | None
) -> None:
    text = rollback_feedback(stage=stage, reason=reason, report_path="r.md", report=report)
    assert len(text.splitlines()) <= MAX_FEEDBACK_LINES
    assert len(text) <= MAX_FEEDBACK_CHARS
    deploy = post_deploy_feedback(report or "")
    assert len(deploy.splitlines()) <= MAX_FEEDBACK_LINES
    assert len(deploy) <= MAX_FEEDBACK_CHARS


def test_huge_report_lines_are_capped() -> None:
    report = "## Failing tests (1)\n\n- failure in `t.py::x`\n  E   " + "x" * 100_000 + "\n"
    report += "## Log tail\n\n```text\n" + ("y" * 5_000 + "\n") * 1_000 + "```\n"
    text = rollback_feedback(stage="testing", reason="r", report_path="r.md", report=report)
    assert len(text) <= MAX_FEEDBACK_CHARS
    assert "`t.py::x`" in text


def test_a_staging_fail_sends_the_verdict_the_smoke_and_the_service_log_tail() -> None:
    from orchestrator.runners.context import RunnerContext
    from orchestrator.runners.smoke import SmokeResult
    from orchestrator.runners.staging import _render, _Staging

    context = RunnerContext(
        "T-1", "deploy-staging", Path("/w"), Path("/w/docs"), Path("/r"), "orch/T-1", "main"
    )
    staging = _Staging(
        result="FAIL",
        reason="the smoke failed: /queue answered 500",
        argv=("svc", "--port", "8000"),
        port=8000,
        smoke=[
            SmokeResult("/health", "http://127.0.0.1:8000/health", 200, 1.0),
            SmokeResult("/queue", "http://127.0.0.1:8000/queue", 500, 2.0),
        ],
        log="\n".join(f"service line {n}" for n in range(300)),
    )
    text = rollback_feedback(
        stage="deploy-staging",
        reason="14-staging-report.md: result FAIL",
        report_path="docs/work-items/T-1/14-staging-report.md",
        report=_render(context, staging),
    )
    assert text.startswith("deploy-staging failed: 14-staging-report.md: result FAIL\n")
    assert "Full report: docs/work-items/T-1/14-staging-report.md (in your worktree)." in text
    assert "Verdict: FAIL, the smoke failed: /queue answered 500." in text
    assert "| `http://127.0.0.1:8000/queue` | 500 |" in text
    assert "service line 299" in text
    assert len(text.splitlines()) <= MAX_FEEDBACK_LINES


def test_a_post_deploy_rollback_sends_the_monitors_report() -> None:
    text = post_deploy_feedback("# Post-deploy monitor report\n\nresult: UNHEALTHY\n")
    assert text.startswith("deploy failed: the post-deploy health check")
    assert "result: UNHEALTHY" in text
