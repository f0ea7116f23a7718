"""Counts and failing tests from a JUnit XML file (pytest's ``--junitxml``).

The counts come from the ``<testcase>`` elements themselves, not from the suites'
summary attributes, so a file from any JUnit-style tool reads the same way.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["FailingTest", "JUnitCounts", "parse_junit", "parse_junit_text"]

MAX_FAILING_LISTED: Final = 50
MESSAGE_CHARS: Final = 300


@dataclass(frozen=True)
class FailingTest:
    """One failed or erroring test: its id and the first line of its message."""

    test_id: str
    kind: str  # failure | error
    message: str


@dataclass(frozen=True)
class JUnitCounts:
    """What a JUnit XML file says about a test run."""

    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    time_s: float = 0.0
    failing: tuple[FailingTest, ...] = ()

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped

    def summary(self) -> str:
        """``12 passed, 1 failed, 0 errors, 2 skipped`` (the closing line of pytest)."""
        return (
            f"{self.passed} passed, {self.failures} failed, {self.errors} errors, "
            f"{self.skipped} skipped"
        )


def _test_id(case: ET.Element) -> str:
    # pytest writes the dotted module (and class) as the classname: tests.test_x::test_y.
    classname = case.get("classname", "")
    name = case.get("name", "?")
    return f"{classname}::{name}" if classname else name


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:MESSAGE_CHARS]
    return ""


def parse_junit_text(text: str) -> JUnitCounts | None:
    """Parse JUnit XML text; None when it is not JUnit XML."""
    try:
        root = ET.fromstring(text)  # noqa: S314 - written by the test run we started
    except ET.ParseError:
        return None
    if root.tag not in ("testsuites", "testsuite"):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    time_s = 0.0
    for suite in suites:
        try:
            time_s += float(suite.get("time", "0") or 0)
        except ValueError:
            continue
    tests = failures = errors = skipped = 0
    failing: list[FailingTest] = []
    for case in root.iter("testcase"):
        tests += 1
        for child in case:
            if child.tag in ("failure", "error"):
                if child.tag == "failure":
                    failures += 1
                else:
                    errors += 1
                if len(failing) < MAX_FAILING_LISTED:
                    message = child.get("message") or _first_line(child.text)
                    failing.append(FailingTest(_test_id(case), child.tag, _first_line(message)))
                break
            if child.tag == "skipped":
                skipped += 1
                break
    return JUnitCounts(tests, failures, errors, skipped, time_s, tuple(failing))


def parse_junit(path: Path) -> JUnitCounts | None:
    """Parse the JUnit XML file at ``path``; None when it is missing or unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return parse_junit_text(text)
