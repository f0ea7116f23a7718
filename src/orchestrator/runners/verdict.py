"""The test runner's verdict: pure functions from how the tests ended to PASS / FAIL / DEFER.

``map_exit_code_to_status`` is pytest's exit-code contract:

=========  =========  ============================================================
exit code  status     meaning
=========  =========  ============================================================
0          PASS       every collected test passed
1          FAIL       tests ran and some failed
5          FAIL       no tests were collected: nothing was proved
2, 3, 4    DEFER      interrupted (collection errors), internal error, usage error:
                      the tool failed, not the code
other      DEFER      a signal, a crash
None       DEFER      timed out, or the command could not start
=========  =========  ============================================================

:func:`classify_tests` applies it to one run and adds two cross-checks, each of which
can only move a verdict *away* from PASS or turn a suspicious FAIL into DEFER, never
turn anything into PASS:

* pytest exited 1 but wrote no JUnit XML: pytest never ran tests (``No module named
  pytest``, a coverage.py error), so it is a tool error (DEFER), not a test failure;
* a command that is not pytest (``make test`` exits 2 when its tests fail) exited with
  a DEFER code while its JUnit XML lists failing tests: that is a FAIL.

A DEFER whose cause is the **environment** (the command could not start, a shell said
126 / 127, pytest is not installed, pytest was called wrongly) says so in ``cause``:
the runner then hands it to a person instead of retrying it or asking a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from orchestrator.runners.context import ENVIRONMENT_CAUSE
from orchestrator.runners.junit import JUnitCounts

__all__ = ["Status", "TestsClassification", "classify_tests", "map_exit_code_to_status"]

Status = Literal["PASS", "FAIL", "DEFER"]

# Exit codes that mean the command, not the code, is wrong: pytest's usage error, and a
# shell's "not executable" / "command not found".
_PYTEST_ENVIRONMENT_CODES: Final = frozenset({4, 126, 127})
_COMMAND_ENVIRONMENT_CODES: Final = frozenset({126, 127})
_PYTEST_STATUS: Final[dict[int, Status]] = {0: "PASS", 1: "FAIL", 5: "FAIL"}
_PYTEST_MEANING: Final[dict[int, str]] = {
    0: "all tests passed",
    1: "tests failed",
    2: "pytest was interrupted (e.g. errors during collection)",
    3: "pytest hit an internal error",
    4: "pytest was called wrongly (usage error)",
    5: "no tests collected",
}


def map_exit_code_to_status(exit_code: int | None) -> Status:
    """PASS / FAIL for a verdict of the tests; DEFER when the tool itself failed."""
    if exit_code is None:
        return "DEFER"  # timed out or did not start
    return _PYTEST_STATUS.get(exit_code, "DEFER")


@dataclass(frozen=True)
class TestsClassification:
    """The verdict of one test command and the sentence that explains it."""

    __test__ = False  # not a pytest test class, despite the name

    status: Status
    reason: str
    cause: str = ""  # ENVIRONMENT_CAUSE when a person must fix the command or machine


def classify_tests(
    *,
    exit_code: int | None,
    is_pytest: bool,
    counts: JUnitCounts | None,
    timed_out: bool = False,
    start_error: str | None = None,
) -> TestsClassification:
    """Classify how a test command ended; pure."""
    if start_error is not None:
        return TestsClassification(
            "DEFER", f"the test command could not start: {start_error}", ENVIRONMENT_CAUSE
        )
    if timed_out or exit_code is None:
        return TestsClassification("DEFER", "the test command timed out (its group was killed)")
    status = map_exit_code_to_status(exit_code)
    meaning = _PYTEST_MEANING.get(exit_code, f"exit code {exit_code}")
    if not is_pytest:
        meaning = f"the test command exited {exit_code}"
    if is_pytest and status == "FAIL" and exit_code == 1 and counts is None:
        return TestsClassification(
            "DEFER",
            "pytest exited 1 but wrote no JUnit XML, so no test ran: a tool error "
            "(is pytest installed for this interpreter?)",
            ENVIRONMENT_CAUSE,
        )
    if (
        not is_pytest
        and status == "DEFER"
        and counts is not None
        and (counts.failures or counts.errors)
    ):
        return TestsClassification(
            "FAIL",
            f"{meaning} and its JUnit XML lists {counts.failures + counts.errors} failing test(s)",
        )
    if status == "DEFER":
        codes = _PYTEST_ENVIRONMENT_CODES if is_pytest else _COMMAND_ENVIRONMENT_CODES
        if exit_code in codes:
            return TestsClassification(
                "DEFER",
                f"{meaning}: the test command is wrong or missing here, not the code",
                ENVIRONMENT_CAUSE,
            )
        return TestsClassification("DEFER", f"{meaning}: a tool error, not a test verdict")
    return TestsClassification(status, meaning)
