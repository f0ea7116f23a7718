"""``13-test-report.md``: the test runner's verdict and the facts behind it.

The three verdict fields come first, one per line, and always agree with each other
(``result:`` and ``status:`` are the runner's status, ``exit_code:`` the test command's
exit code, ``-1`` when there was none), so the gate's ``_parse_tests_verdict`` reads a
PASS exactly when the runner decided PASS. Everything after them is written so that no
line can be read as a verdict field: each bullet starts with its own label, and text
the runner does not control (the log, the hybrid agent's explanation) is numbered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from orchestrator.runners.context import ENVIRONMENT_CAUSE
from orchestrator.runners.coverage_ratchet import CoverageVerdict
from orchestrator.runners.junit import JUnitCounts
from orchestrator.runners.process import CommandResult
from orchestrator.runners.smoke import SmokeResult
from orchestrator.runners.verdict import Status

__all__ = ["MESSAGE_MARK", "TestRun", "failing_tests_section", "numbered", "render_test_report"]

LOG_TAIL_LINES: Final = 60
EXPLANATION_LINES: Final = 200
NO_EXIT_CODE: Final = -1
# Before each line of a failing test's message (never empty after it: see the docstring).
MESSAGE_MARK: Final = "E   "


@dataclass(frozen=True)
class TestRun:
    """Everything one run of the test runner found out."""

    __test__ = False  # not a pytest test class, despite the name

    work_item: str
    status: Status
    reason: str
    attempt: int = 1
    command: tuple[str, ...] = ()
    setup: CommandResult | None = None
    tests: CommandResult | None = None
    counts: JUnitCounts | None = None
    counts_note: str = ""
    smoke: tuple[SmokeResult, ...] = ()
    smoke_note: str = "not configured"
    coverage: CoverageVerdict | None = None
    coverage_note: str = "off"
    gate: str | None = None
    gate_waited_s: float = 0.0
    total_s: float = 0.0
    explainer: str = ""
    explanation: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    # ENVIRONMENT_CAUSE when a DEFER is for a person to fix (the command, the machine).
    cause: str = ""

    @property
    def exit_code(self) -> int:
        if self.tests is None or self.tests.exit_code is None:
            return NO_EXIT_CODE
        return self.tests.exit_code


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def numbered(text: str, limit: int) -> tuple[list[str], int]:
    """The last ``limit`` lines of ``text``, numbered; and the total line count."""
    lines = text.rstrip("\n").splitlines()
    tail = lines[-limit:]
    first = len(lines) - len(tail) + 1
    return [f"{n:5d}  {line}" for n, line in enumerate(tail, start=first)], len(lines)


def _command_line(label: str, result: CommandResult | None, fallback: str) -> str:
    if result is None:
        return f"- {label}: {fallback}"
    return f"- {label}: {_code(' '.join(result.argv))}, {result.describe()}"


def failing_tests_section(counts: JUnitCounts) -> list[str]:
    """``## Failing tests``: one bullet per test, its pytest node id first, then its
    message, each line behind ``E`` (as pytest prints it) so none reads as a verdict."""
    total = counts.failures + counts.errors
    shown = len(counts.failing)
    lines = [
        f"## Failing tests ({total})",
        "",
        "Each id is a pytest node id: run it in the worktree with `python -m pytest '<id>'`"
        + (f"; the first {shown} are listed." if shown < total else "."),
        "",
    ]
    for test in counts.failing:
        where = f" at {test.location}" if test.location else ""
        test_id = " ".join(test.test_id.splitlines())
        lines.append(f"- {test.kind} in {_code(test_id)}{where}")
        lines += [f"  {MESSAGE_MARK}{line}" for line in test.message.splitlines()]
    lines.append("")
    return lines


def render_test_report(run: TestRun) -> str:
    """The report's markdown; see the module docstring for what makes it safe to parse."""
    lines = [
        f"# Test report: {run.work_item}",
        "",
        f"result: {run.status}",
        f"status: {run.status}",
        f"exit_code: {run.exit_code}",
        "",
        f"Verdict: {run.status}, {run.reason}.",
    ]
    if run.status == "DEFER":
        lines.append(
            "A DEFER is a tool error, not a verdict on the code; the testing gate never passes it."
        )
    if run.status == "DEFER" and run.cause == ENVIRONMENT_CAUSE:
        lines.append(
            "Its cause is the environment or the configuration: the task waits for a person "
            f"to fix it, then `orch task retry {run.work_item}`; no model or developer run "
            "is asked."
        )
    lines += [
        "",
        f"- decided by: the deterministic test runner (`runner:tests`), attempt "
        f"{run.attempt}; no model decided this",
        _command_line("setup", run.setup, "none configured"),
        _command_line("tests", run.tests, "not run"),
    ]
    if run.counts is not None:
        lines.append(f"- counts: {run.counts.summary()} (JUnit XML, {run.counts.time_s:.2f}s)")
    else:
        lines.append(f"- counts: {run.counts_note or 'no JUnit XML'}")
    if run.gate:
        lines.append(f"- serial gate: {_code(run.gate)}, waited {run.gate_waited_s:.1f}s")
    ok = sum(1 for result in run.smoke if result.ok)
    smoke = f"{ok}/{len(run.smoke)} endpoints answered 2xx" if run.smoke else run.smoke_note
    lines.append(f"- smoke: {smoke}")
    lines.append(f"- coverage: {run.coverage.reason if run.coverage else run.coverage_note}")
    lines.append(f"- duration: {run.total_s:.1f}s in all")
    lines += [f"- note: {note}" for note in run.notes]
    lines.append("")
    if run.counts is not None and run.counts.failing:
        lines += failing_tests_section(run.counts)
    if run.smoke:
        lines += ["## Smoke (read-only GETs)", "", "| endpoint | answer | ms |", "|---|---|---|"]
        for result in run.smoke:
            answer = str(result.status_code) if result.error is None else result.error
            lines.append(
                f"| {_code(result.url)} | {answer.replace('|', '/')} | {result.elapsed_ms:.0f} |"
            )
        lines.append("")
    if run.explanation is not None:
        text, count = numbered(run.explanation or "(the agent wrote nothing)", EXPLANATION_LINES)
        lines += [
            f"## Explanation by the tester agent {_code(run.explainer)} (not a verdict)",
            "",
            "The runner's verdict above stands; this text only explains it. It was written",
            "by a model after the runner had decided; its lines are numbered so that none",
            f"can be read as a verdict field ({count} lines).",
            "",
            "```text",
            *text,
            "```",
            "",
        ]
    output = run.tests.output_tail if run.tests is not None else ""
    if not output and run.setup is not None:
        output = run.setup.output_tail
    tail, total = numbered(output, LOG_TAIL_LINES)
    lines += [
        f"## Log tail (last {len(tail)} of {total} lines)",
        "",
        "```text",
        *tail,
        "```",
        "",
    ]
    return "\n".join(lines)


def summarize(runs: Sequence[SmokeResult]) -> str:
    """``3/3 endpoints answered 2xx``."""
    return f"{sum(1 for r in runs if r.ok)}/{len(runs)} endpoints answered 2xx"
