"""The test runner: run the tests, map the exit code, write ``13-test-report.md``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Final, Literal

from orchestrator.kernel.gates import TEST_REPORT_FILE
from orchestrator.runners.context import TOOL_ERROR_EXIT, RunnerContext, emit_result

__all__ = ["map_exit_code_to_status", "run"]

Status = Literal["PASS", "FAIL", "DEFER"]
LOG_TAIL_LINES: Final = 40
# pytest: 0 all passed, 1 tests failed, 5 no tests collected (a failure: nothing proved);
# 2 interrupted, 3 internal error, 4 usage error: the tool failed, not the code.
_PYTEST_STATUS: Final[dict[int, Status]] = {0: "PASS", 1: "FAIL", 5: "FAIL"}


def map_exit_code_to_status(exit_code: int | None) -> Status:
    """PASS / FAIL for a verdict of the tests; DEFER when the tool itself failed."""
    if exit_code is None:
        return "DEFER"  # timed out or did not start
    return _PYTEST_STATUS.get(exit_code, "DEFER")


def default_test_command(worktree: Path) -> list[str]:
    """``python -m pytest``, with the worktree's own virtualenv when it has one."""
    venv_python = worktree / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    return [python, "-m", "pytest", "-q"]


def render_report(
    *,
    work_item: str,
    command: list[str],
    exit_code: int,
    status: Status,
    duration_s: float,
    output: str,
) -> str:
    tail = "\n".join(output.rstrip().splitlines()[-LOG_TAIL_LINES:])
    verdict = "PASS" if status == "PASS" else "FAIL"
    return (
        f"# Test report: {work_item}\n\n"
        f"result: {verdict}\n"
        f"status: {verdict}\n"
        f"exit_code: {exit_code}\n\n"
        f"- command: `{' '.join(command)}`\n"
        f"- duration: {duration_s:.1f}s\n"
        f"- produced by: the deterministic test runner (no model decided this)\n\n"
        f"## Log tail\n\n```\n{tail}\n```\n"
    )


def run(context: RunnerContext) -> int:
    command = context.test_command or default_test_command(context.worktree)
    started = time.monotonic()
    try:
        completed = subprocess.run(
            command, cwd=context.worktree, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        print(f"test runner: cannot start {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return TOOL_ERROR_EXIT
    output = completed.stdout + completed.stderr
    print(output, end="")
    status = map_exit_code_to_status(completed.returncode)
    if status == "DEFER":
        print(
            f"test runner: {command[0]} exited {completed.returncode} (a tool error, "
            "not a test verdict); deferring",
            file=sys.stderr,
        )
        return TOOL_ERROR_EXIT
    context.artifact_dir.mkdir(parents=True, exist_ok=True)
    report = render_report(
        work_item=context.work_item,
        command=command,
        exit_code=completed.returncode,
        status=status,
        duration_s=time.monotonic() - started,
        output=output,
    )
    (context.artifact_dir / TEST_REPORT_FILE).write_text(report, encoding="utf-8")
    emit_result(tests_status=status, tests_exit_code=completed.returncode)
    return 0
