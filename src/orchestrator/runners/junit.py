"""Counts and failing tests from a JUnit XML file (pytest's ``--junitxml``).

The counts come from the ``<testcase>`` elements themselves, not from the suites'
summary attributes, so a file from any JUnit-style tool reads the same way.

Each failing test is named by the **pytest node id** a developer can paste after
``python -m pytest`` (``tests/test_x.py::TestY::test_z[1-2]``), derived by
:func:`node_id` from the test case's attributes. pytest builds them from the node id
(``mangle_test_address``): the file path with ``/`` turned into ``.`` and ``.py``
dropped, then the enclosing classes, as ``classname``; the function with its
parameters as ``name``; and, with ``junit_family=xunit1`` (which the runner asks for),
the file itself as ``file``. Without ``file`` the split between module and classes is
ambiguous (``tests.test_x.TestY``: is ``TestY`` a class or a module?), so the longest
dotted prefix that is a file in the worktree is the module, and when none is, the
first part that starts with a capital letter begins the classes.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "FailingTest",
    "JUnitCounts",
    "node_id",
    "parse_junit",
    "parse_junit_text",
    "worktree_files",
]

MAX_FAILING_LISTED: Final = 50
MESSAGE_CHARS: Final = 300
MESSAGE_LINES: Final = 8
# The last line of a pytest traceback: ``tests/test_x.py:12: AssertionError``.
_LOCATION: Final = re.compile(r"^(?P<path>[^\s:][^:]*\.py):(?P<line>\d+):")

Exists = Callable[[str], bool]


@dataclass(frozen=True)
class FailingTest:
    """One failed or erroring test: its node id, its message, where it failed."""

    test_id: str
    kind: str  # failure | error
    message: str  # the assertion message or error, up to MESSAGE_LINES lines
    location: str = ""  # file:line of the failing line, when the traceback names it


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


def _never(_: str) -> bool:
    return False


def _module_parts(parts: list[str], file: str, exists: Exists) -> int:
    """How many leading dotted ``parts`` name the test module (the rest are classes)."""
    if file.endswith(".py"):
        dotted = file.removesuffix(".py").replace("/", ".").split(".")
        if parts[: len(dotted)] == dotted:
            return len(dotted)
    for count in range(len(parts), 0, -1):
        if exists("/".join(parts[:count]) + ".py"):
            return count
    for count, part in enumerate(parts):
        if count and part[:1].isupper():
            return count
    return len(parts)


def node_id(classname: str, name: str, file: str = "", exists: Exists = _never) -> str:
    """The pytest node id of a JUnit test case; pure (``exists`` answers whether a
    path relative to the worktree is a file). Never raises."""
    name = name or "?"
    if not classname:
        # A collection error: the name is the dotted module (``tests.test_x``).
        if file.endswith(".py"):
            return file
        if "[" not in name and "::" not in name and name.strip("."):
            parts = name.split(".")
            count = _module_parts(parts, "", exists)
            if count == len(parts) and exists("/".join(parts) + ".py"):
                return "/".join(parts) + ".py"
        return name
    parts = classname.split(".")
    count = _module_parts(parts, file, exists)
    from_file = file.endswith(".py") and file.removesuffix(".py").replace("/", ".") == ".".join(
        parts[:count]
    )
    module = file if from_file else "/".join(parts[:count]) + ".py"
    return "::".join([module, *parts[count:], name])


def worktree_files(root: Path) -> Exists:
    """An ``exists`` for :func:`node_id`: whether ``root/<relative>`` is a file."""

    def exists(relative: str) -> bool:
        try:
            return (root / relative).is_file()
        except (OSError, ValueError):
            return False

    return exists


def _lines(text: str | None) -> list[str]:
    return [line.rstrip()[:MESSAGE_CHARS] for line in (text or "").splitlines() if line.strip()]


def _location(text: str | None) -> str:
    for line in reversed((text or "").splitlines()):
        match = _LOCATION.match(line.strip())
        if match:
            return f"{match['path']}:{match['line']}"
    return ""


def _failing(case: ET.Element, child: ET.Element, exists: Exists) -> FailingTest:
    message = _lines(child.get("message")) or [
        line.strip() for line in _lines(child.text) if line.lstrip().startswith("E ")
    ]
    if not message:
        message = _lines(child.text)[-1:]
    test = node_id(case.get("classname", ""), case.get("name", ""), case.get("file", ""), exists)
    return FailingTest(test, child.tag, "\n".join(message[:MESSAGE_LINES]), _location(child.text))


def parse_junit_text(text: str, exists: Exists = _never) -> JUnitCounts | None:
    """Parse JUnit XML text; None when it is not JUnit XML. Never raises."""
    try:
        root = ET.fromstring(text)  # noqa: S314 - written by the test run we started
    except (ET.ParseError, ValueError):
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
                    failing.append(_failing(case, child, exists))
                break
            if child.tag == "skipped":
                skipped += 1
                break
    return JUnitCounts(tests, failures, errors, skipped, time_s, tuple(failing))


def parse_junit(path: Path, exists: Exists = _never) -> JUnitCounts | None:
    """Parse the JUnit XML file at ``path``; None when it is missing or unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return parse_junit_text(text, exists)
