"""The coverage ratchet: a repository's line coverage may not fall; merged gains stick.

Theory of operation
-------------------
When ``coverage_ratchet`` is on for a repository, the test runner runs a pytest command
under coverage.py (``python -m coverage run -m pytest ...``) and reads the total line
coverage. The repository's state lives in one JSON file,
``<data_dir>/coverage/<repo>-<hash>.json``::

    {"baseline": {"percent": 81.25, "work_item": "SVC-3", "commit": "…", "at": 1.7e9},
     "pending":  {"SVC-7": {"percent": 83.0, "commit": "…", "at": 1.7e9}}}

* a run below the baseline is a FAIL, with both numbers in the report;
* a passing run is recorded as *pending* for its work item, with the commit it tested;
* a pending entry whose commit has reached the default branch (the task merged) raises
  the baseline to ``max(baseline, percent)`` and is removed. This promotion happens
  whenever the ratchet is consulted (every test run of the repository), or when the
  deploy finalizer calls :func:`promote_merged_coverage` after its merge.

Reads and writes of the file hold an ``flock`` on ``<file>.lock``. The numbers are
rounded to two decimals before comparing, so float noise never fails a run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "CoverageVerdict",
    "baseline_file",
    "coverage_argv",
    "judge_coverage",
    "promote_merged",
    "promote_merged_coverage",
    "ratchet_state",
    "read_line_coverage",
    "record_pending",
]

PRECISION: Final = 2
_SLUG: Final = re.compile(r"[^A-Za-z0-9._-]+")


def baseline_file(data_dir: Path, repository: Path) -> Path:
    """Where a repository's ratchet lives: its name plus a hash of its path."""
    resolved = repository.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    name = _SLUG.sub("_", resolved.name).strip("._") or "repo"
    return data_dir / "coverage" / f"{name}-{digest}.json"


def _pytest_tail(argv: Sequence[str]) -> list[str] | None:
    """The arguments after ``pytest`` if ``argv`` runs pytest, else None."""
    for index, part in enumerate(argv):
        if part == "-m" and index + 1 < len(argv) and argv[index + 1] == "pytest":
            return list(argv[index + 2 :])
    if argv and Path(argv[0]).name in ("pytest", "py.test"):
        return list(argv[1:])
    return None


def coverage_argv(
    argv: Sequence[str], python: str, data_file: Path, sources: Sequence[str]
) -> list[str] | None:
    """``argv`` (a pytest command) run under coverage.py; None if it is not pytest."""
    tail = _pytest_tail(argv)
    if tail is None:
        return None
    interpreter = python
    if len(argv) > 2 and argv[1] == "-m":
        interpreter = argv[0]  # `<python> -m pytest`: that python has the project
    wrapped = [interpreter, "-m", "coverage", "run", f"--data-file={data_file}"]
    if sources:
        wrapped.append(f"--source={','.join(sources)}")
    return [*wrapped, "-m", "pytest", *tail]


def read_line_coverage(report: Mapping[str, Any]) -> float | None:
    """Line coverage in percent from ``coverage json`` output; None if nothing measured."""
    totals = report.get("totals")
    if not isinstance(totals, dict):
        return None
    statements = totals.get("num_statements")
    covered = totals.get("covered_lines")
    if not isinstance(statements, int) or not isinstance(covered, int) or statements <= 0:
        return None
    return round(100.0 * covered / statements, PRECISION)


@dataclass(frozen=True)
class CoverageVerdict:
    """Whether measured coverage holds the line, and the sentence that says so."""

    ok: bool
    measured: float
    baseline: float | None
    reason: str


def judge_coverage(measured: float, baseline: float | None) -> CoverageVerdict:
    """Pure: FAIL when ``measured`` is below ``baseline`` (both rounded)."""
    measured = round(measured, PRECISION)
    if baseline is None:
        return CoverageVerdict(True, measured, None, f"{measured:.2f}% (no baseline yet)")
    baseline = round(baseline, PRECISION)
    if measured < baseline:
        return CoverageVerdict(
            False,
            measured,
            baseline,
            f"line coverage {measured:.2f}% is below the baseline {baseline:.2f}% "
            f"(-{baseline - measured:.2f} points)",
        )
    return CoverageVerdict(True, measured, baseline, f"{measured:.2f}% (baseline {baseline:.2f}%)")


def _empty() -> dict[str, Any]:
    return {"baseline": None, "pending": {}}


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _empty()
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a coverage ratchet file (expected a JSON object)")
    data.setdefault("baseline", None)
    data.setdefault("pending", {})
    return data


@contextmanager
def ratchet_state(path: Path) -> Iterator[dict[str, Any]]:
    """The ratchet file's content under its lock; written back when the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = _load(path)
        before = json.dumps(data, sort_keys=True)
        yield data
        after = json.dumps(data, sort_keys=True, indent=1)
        if json.dumps(data, sort_keys=True) != before:
            scratch = path.with_suffix(".tmp")
            scratch.write_text(after + "\n", encoding="utf-8")
            scratch.replace(path)
    finally:
        os.close(fd)  # closing drops the flock


def promote_merged(data: dict[str, Any], is_merged: Callable[[str], bool]) -> list[str]:
    """Raise the baseline by every pending entry whose commit is merged; pure but for
    ``is_merged``. Returns the work items promoted."""
    promoted = []
    pending: dict[str, Any] = data.get("pending") or {}
    for work_item, entry in sorted(pending.items()):
        if not is_merged(str(entry.get("commit", ""))):
            continue
        promoted.append(work_item)
        baseline = data.get("baseline")
        if baseline is None or float(entry["percent"]) > float(baseline["percent"]):
            data["baseline"] = {**entry, "work_item": work_item}
    for work_item in promoted:
        del pending[work_item]
    data["pending"] = pending
    return promoted


def record_pending(data: dict[str, Any], work_item: str, percent: float, commit: str) -> None:
    """Remember a passing run's coverage until its commit is merged."""
    data.setdefault("pending", {})[work_item] = {
        "percent": round(percent, PRECISION),
        "commit": commit,
        "at": time.time(),
    }


def promote_merged_coverage(coverage_file: Path, is_merged: Callable[[str], bool]) -> list[str]:
    """Apply :func:`promote_merged` to a ratchet file (e.g. right after a merge)."""
    if not coverage_file.exists():
        return []
    with ratchet_state(coverage_file) as data:
        return promote_merged(data, is_merged)
