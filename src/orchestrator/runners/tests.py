"""The test runner (``testing``): run the tests, decide by exit code, write the report.

Theory of operation
-------------------
One job, in the task's worktree, in this order:

1. take the repository's **serial gate** if it names one (a file lock; a gate that
   stays shut is a DEFER);
2. run the **setup command** (e.g. create a venv), then the **test command** (default
   ``python -m pytest`` with the worktree's ``.venv`` if it has one), each in its own
   session under one timeout, tree-killed when it runs over. A pytest command is given
   ``--junitxml`` (outside the worktree) for counts and failing tests, and runs under
   coverage.py when the **coverage ratchet** is on;
3. decide with :func:`~orchestrator.runners.verdict.classify_tests` (pytest's exit codes:
   0 PASS, 1 and 5 FAIL, anything else, a timeout or a failure to start DEFER);
4. on PASS, the **smoke** (read-only GETs of a running instance) and the **coverage
   ratchet** may still turn it into a FAIL, naming the failing endpoint or the numbers;
5. write ``13-test-report.md`` and print one ``ORCH-RESULT`` line.

Two-level outcome: PASS and FAIL exit 0 and the testing gate judges the report (a FAIL
rolls the task back to development with the report as feedback). A DEFER exits
:data:`TOOL_ERROR_EXIT`, so the engine retries the stage with backoff; on the hand-off
attempt (``handoff_attempt``, hybrid mode) a DEFER is instead explained by the tester
agent (:mod:`orchestrator.runners.explain`), the report keeps the runner's DEFER, and the
runner exits 0 so that the gate judges that report and fails it. No error of the runner
reaches the engine as anything but a DEFER.

A DEFER whose cause is the environment (the test command cannot start, the setup command
failed, the configuration is unusable, pytest is missing, the hybrid explainer cannot
run) is neither retried nor handed off: the runner reports it with
:func:`~orchestrator.runners.context.defer_for_environment` and the task waits for a
person, never rolling back to development.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Final

from orchestrator.kernel.gates import TEST_REPORT_FILE
from orchestrator.runners.context import (
    ENVIRONMENT_CAUSE,
    TOOL_ERROR_EXIT,
    RunnerContext,
    defer_for_environment,
    emit_result,
)
from orchestrator.runners.coverage_ratchet import (
    CoverageVerdict,
    coverage_argv,
    judge_coverage,
    promote_merged,
    ratchet_state,
    read_line_coverage,
    record_pending,
)
from orchestrator.runners.junit import JUnitCounts, parse_junit, worktree_files
from orchestrator.runners.process import CommandResult, run_command
from orchestrator.runners.report import TestRun, render_test_report
from orchestrator.runners.serial_gate import SerialGateBusyError, serial_gate
from orchestrator.runners.smoke import smoke
from orchestrator.runners.verdict import Status, classify_tests, map_exit_code_to_status

__all__ = ["default_test_command", "is_pytest_command", "map_exit_code_to_status", "run"]

# Seconds kept back from the job's budget for writing the report after a timeout.
REPORT_RESERVE_S: Final = 15.0
COVERAGE_JSON_TIMEOUT_S: Final = 120.0


def default_test_command(worktree: Path) -> list[str]:
    """``python -m pytest``, with the worktree's own virtualenv when it has one."""
    return [_python(worktree), "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def _python(worktree: Path) -> str:
    venv_python = worktree / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def is_pytest_command(argv: tuple[str, ...] | list[str]) -> bool:
    """``<python> -m pytest ...`` or ``pytest ...``."""
    if argv and Path(argv[0]).name in ("pytest", "py.test"):
        return True
    return any(a == "-m" and b == "pytest" for a, b in itertools.pairwise(argv))


def _worktree_env(context: RunnerContext) -> dict[str, str]:
    """The commands' environment: the worktree's venv first on PATH when it has one."""
    env = context.child_env(PYTHONDONTWRITEBYTECODE="1")
    venv = context.worktree / ".venv"
    if (venv / "bin").is_dir():
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return env


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, cap: float) -> float:
        return max(0.0, min(cap, self.end - time.monotonic()))


@contextlib.contextmanager
def _maybe_gate(context: RunnerContext, timeout_s: float) -> Iterator[float]:
    config = context.config
    if not config.serial_gate:
        yield 0.0
        return
    lock_dir = Path(config.lock_dir) if config.lock_dir else context.repository / ".git" / "orch"
    holder = f"{context.work_item} attempt {context.attempt}"
    with serial_gate(lock_dir, config.serial_gate, timeout_s=timeout_s, holder=holder) as waited:
        yield waited


def _setup(context: RunnerContext, scratch: Path, deadline: _Deadline) -> CommandResult | None:
    if not context.config.setup_command:
        return None
    # What it creates (a venv) is never committed: a runner stage commits only its
    # report (orchestrator.workspace.commit_policy).
    return run_command(
        context.config.setup_command,
        cwd=context.worktree,
        env=_worktree_env(context),
        timeout_s=deadline.left(context.config.timeout_s),
        log_path=scratch / "setup.log",
    )


def _test_argv(context: RunnerContext, scratch: Path) -> tuple[list[str], str | None]:
    """The command to run and, if it cannot be run as configured, why."""
    config = context.config
    argv = list(config.test_command or default_test_command(context.worktree))
    if not is_pytest_command(argv):
        if config.coverage_ratchet:
            return argv, "the coverage ratchet needs a pytest test command"
        return argv, None
    # xunit1 adds each test's file, so that its node id is exact (runners/junit.py).
    argv += ["-o", "junit_family=xunit1", f"--junitxml={scratch / 'junit.xml'}"]
    if config.coverage_ratchet:
        wrapped = coverage_argv(
            argv, _python(context.worktree), scratch / ".coverage", config.coverage_source
        )
        assert wrapped is not None  # is_pytest_command said so
        argv = wrapped
    return argv, None


def _junit(context: RunnerContext, scratch: Path, pytest: bool) -> JUnitCounts | None:
    exists = worktree_files(context.worktree)
    if pytest:
        return parse_junit(scratch / "junit.xml", exists)
    if context.config.junit_xml:
        return parse_junit(context.worktree / context.config.junit_xml, exists)
    return None


def _measure_coverage(
    context: RunnerContext, scratch: Path, argv: list[str]
) -> tuple[float | None, str]:
    json_path = scratch / "coverage.json"
    result = run_command(
        [
            argv[0],
            "-m",
            "coverage",
            "json",
            f"--data-file={scratch / '.coverage'}",
            "-o",
            str(json_path),
            "-q",
        ],
        cwd=context.worktree,
        env=_worktree_env(context),
        timeout_s=COVERAGE_JSON_TIMEOUT_S,
        log_path=scratch / "coverage-json.log",
    )
    if not result.ok:
        return None, f"`coverage json` {result.describe()}: {result.output_tail.strip()[-200:]}"
    try:
        percent = read_line_coverage(json.loads(json_path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        return None, f"cannot read coverage data: {exc}"
    if percent is None:
        return None, "coverage measured no statements (check coverage_source)"
    return percent, ""


def _head(worktree: Path) -> str:
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=worktree, capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def _is_merged(context: RunnerContext) -> Callable[[str], bool]:
    def merged(commit: str) -> bool:
        if not commit:
            return False
        done = subprocess.run(
            ["git", "merge-base", "--is-ancestor", commit, context.base_branch],
            cwd=context.repository,
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    return merged


def _ratchet(context: RunnerContext, percent: float) -> CoverageVerdict:
    path = Path(context.config.coverage_file or context.worktree / ".orch-coverage.json")
    with ratchet_state(path) as data:
        promote_merged(data, _is_merged(context))
        baseline = data.get("baseline")
        verdict = judge_coverage(percent, float(baseline["percent"]) if baseline else None)
        if verdict.ok:
            record_pending(data, context.work_item, percent, _head(context.worktree))
    return verdict


def _decide(context: RunnerContext, scratch: Path, started: float) -> TestRun:
    config = context.config
    deadline = _Deadline(max(1.0, config.budget_s - REPORT_RESERVE_S))
    run = TestRun(context.work_item, "DEFER", "the runner did not finish", context.attempt)
    if config.config_error:
        return replace(
            run,
            reason=f"the runner's configuration is unusable: {config.config_error}",
            cause=ENVIRONMENT_CAUSE,
        )
    try:
        with _maybe_gate(context, deadline.left(config.timeout_s)) as waited:
            run = replace(run, gate=config.serial_gate, gate_waited_s=waited)
            run = _run_tests(context, scratch, deadline, run)
    except SerialGateBusyError as exc:
        run = replace(run, status="DEFER", reason=str(exc), gate=config.serial_gate)
    return replace(run, total_s=time.monotonic() - started)


def _run_tests(context: RunnerContext, scratch: Path, deadline: _Deadline, run: TestRun) -> TestRun:
    config = context.config
    setup = _setup(context, scratch, deadline)
    run = replace(run, setup=setup)
    if setup is not None and not setup.ok:
        return replace(
            run,
            status="DEFER",
            reason=f"the setup command {setup.describe()}",
            cause=ENVIRONMENT_CAUSE,
        )
    argv, impossible = _test_argv(context, scratch)
    run = replace(run, command=tuple(argv))
    if impossible:
        return replace(run, status="DEFER", reason=impossible, cause=ENVIRONMENT_CAUSE)
    pytest = is_pytest_command(argv)
    tests = run_command(
        argv,
        cwd=context.worktree,
        env=_worktree_env(context),
        timeout_s=deadline.left(config.timeout_s),
        log_path=scratch / "tests.log",
    )
    counts = _junit(context, scratch, pytest)
    verdict = classify_tests(
        exit_code=tests.exit_code,
        is_pytest=pytest,
        counts=counts,
        timed_out=tests.timed_out,
        start_error=tests.start_error,
    )
    run = replace(
        run,
        tests=tests,
        counts=counts,
        counts_note="" if counts else "no JUnit XML (configure junit_xml for non-pytest)",
        status=verdict.status,
        reason=verdict.reason,
        cause=verdict.cause,
    )
    if tests.left_running:
        run = replace(run, notes=(*run.notes, "the tests left processes running; killed"))
    if run.status != "PASS":
        if config.smoke_base_url:
            run = replace(run, smoke_note="skipped: the tests did not pass")
        if config.coverage_ratchet:
            run = replace(run, coverage_note="not judged: the tests did not pass")
        return run
    if config.smoke_base_url:
        results = smoke(
            config.smoke_base_url, config.smoke_endpoints, timeout_s=config.smoke_timeout_s
        )
        run = replace(run, smoke=tuple(results))
        failing = [r for r in run.smoke if not r.ok]
        if failing:
            named = "; ".join(r.describe() for r in failing)
            return replace(
                run, status="FAIL", reason=f"the tests passed but the smoke failed: {named}"
            )
    if config.coverage_ratchet:
        percent, problem = _measure_coverage(context, scratch, argv)
        if percent is None:
            return replace(run, status="DEFER", reason=problem, coverage_note=problem)
        coverage = _ratchet(context, percent)
        run = replace(run, coverage=coverage)
        if not coverage.ok:
            return replace(run, status="FAIL", reason=coverage.reason)
    return run


def _write_report(context: RunnerContext, run: TestRun) -> None:
    context.artifact_dir.mkdir(parents=True, exist_ok=True)
    (context.artifact_dir / TEST_REPORT_FILE).write_text(render_test_report(run), encoding="utf-8")


def _echo(run: TestRun) -> None:
    """The commands' output into the job's log (the engine captures stdout)."""
    for label, result in (("setup", run.setup), ("tests", run.tests)):
        if result is not None and result.output_tail:
            print(f"--- {label}: {' '.join(result.argv)}", flush=True)
            print(result.output_tail.rstrip("\n"), flush=True)


def _handoff(context: RunnerContext, run: TestRun, scratch: Path) -> TestRun:
    from orchestrator.runners.explain import explain_defer  # noqa: PLC0415 - hybrid only

    config = context.config
    explanation = explain_defer(
        config=config,
        worktree=context.worktree,
        artifact_dir=context.artifact_dir,
        env=dict(context.env),  # an agent gets the ORCH_* variables, as the engine gives them
        timeout_s=max(1.0, min(config.explainer_timeout_s, config.budget_s - run.total_s - 30)),
        log_path=scratch / "explainer.log",
    )
    print(f"--- hybrid: {config.explainer_name} {explanation.outcome}", flush=True)
    if explanation.unavailable is not None:
        # A missing explainer is a configuration problem: a person fixes it, not development.
        return replace(
            run,
            cause=ENVIRONMENT_CAUSE,
            reason=f"{run.reason}; and the hybrid explainer "
            f"'{config.explainer_name or 'tester'}' cannot run: {explanation.unavailable} "
            "(install it, set test_runner_hybrid_agent, or test_runner_hybrid = false)",
            notes=(*run.notes, f"hybrid hand-off: {explanation.outcome}"),
        )
    # Its result line (cost, model) last but one, so the engine records what it cost.
    for line in reversed(explanation.output_tail.splitlines()):
        if line.startswith("{") and "total_cost_usd" in line:
            print(line, flush=True)
            break
    return replace(
        run,
        explainer=config.explainer_name or "tester",
        explanation=explanation.text,
        notes=(*run.notes, f"hybrid hand-off: the tester agent {explanation.outcome}"),
    )


def run(context: RunnerContext) -> int:
    """Run the tests of ``context.worktree``; 0 = the report is the verdict, 3 = DEFER."""
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="orch-tests-"))
    try:
        result = _decide(context, scratch, started)
        _echo(result)
        status: Status = result.status
        config = context.config
        handoff = (
            status == "DEFER"
            and result.cause != ENVIRONMENT_CAUSE
            and config.handoff_attempt is not None
            and context.attempt >= config.handoff_attempt
        )
        if handoff:
            _write_report(context, result)  # the agent reads the runner's report
            result = _handoff(context, result, scratch)
        _write_report(context, result)
        facts = dict(
            tests_status=status,
            tests_exit_code=result.exit_code,
            tests_reason=result.reason,
            tests_counts=result.counts.summary() if result.counts else None,
            coverage=result.coverage.measured if result.coverage else None,
            smoke_failed=[r.endpoint for r in result.smoke if not r.ok],
            handed_to=result.explainer or None,
            tests_duration_s=round(result.tests.duration_s, 3) if result.tests else None,
            runner_duration_s=round(time.monotonic() - started, 3),
        )
        if status == "DEFER" and result.cause == ENVIRONMENT_CAUSE:
            return defer_for_environment(result.reason, **facts)
        emit_result(**facts)
        if status == "DEFER" and not handoff:
            print(f"test runner: DEFER: {result.reason}", file=sys.stderr, flush=True)
            return TOOL_ERROR_EXIT
        print(f"test runner: {status}: {result.reason}", flush=True)
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
