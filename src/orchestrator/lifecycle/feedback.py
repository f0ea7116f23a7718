"""The feedback a stage's next run gets after a rollback: pure text, no I/O.

When testing, staging or the deploy fails, the task rolls back to development and the
development agent gets this text twice: in its prompt (``Feedback from the previous
attempt``) and in ``ORCH_FEEDBACK``. It must be enough to act on without hunting:

* what failed and why (the gate's reason);
* where the full report is, as a path inside the agent's worktree;
* the failing tests as pytest node ids, each with its message (the first
  :data:`MAX_FEEDBACK_TESTS`), copied from the report's ``## Failing tests`` section;
* the report's other sections (smoke results, an explanation) and its log tail, last.

Whatever the report holds, the result stays within :data:`MAX_FEEDBACK_LINES` lines of at
most :data:`MAX_LINE_CHARS` characters and :data:`MAX_FEEDBACK_CHARS` in all (it travels
in an environment variable), and building it never raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "MAX_FEEDBACK_CHARS",
    "MAX_FEEDBACK_LINES",
    "MAX_FEEDBACK_TESTS",
    "post_deploy_feedback",
    "rollback_feedback",
]

MAX_FEEDBACK_TESTS: Final = 20
MAX_FEEDBACK_LINES: Final = 200
MAX_LINE_CHARS: Final = 400
MAX_FEEDBACK_CHARS: Final = 32_000
# Lines of the report's opening (verdict, command, counts) kept.
MAX_SUMMARY_LINES: Final = 15
# Lines kept of each section that is neither the failing tests nor the log.
MAX_SECTION_LINES: Final = 30
# Lines kept back for the log tail while the failing tests are added.
LOG_RESERVE_LINES: Final = 40
_VERDICT_FIELDS: Final = ("result:", "status:", "exit_code:")


@dataclass
class _Section:
    heading: str
    lines: list[str] = field(default_factory=list)

    @property
    def is_log(self) -> bool:
        return "log" in self.heading.lower()

    @property
    def is_failing_tests(self) -> bool:
        return self.heading.lower().startswith("## failing tests")


def _sections(report: str) -> tuple[list[str], list[_Section]]:
    """The report's opening lines and its ``## `` sections, in order."""
    opening: list[str] = []
    sections: list[_Section] = []
    for line in report.splitlines():
        if line.startswith("## "):
            sections.append(_Section(line))
        elif sections:
            sections[-1].lines.append(line)
        else:
            opening.append(line)
    return opening, sections


def _summary(opening: list[str]) -> list[str]:
    kept = [
        line
        for line in opening
        if line.strip()
        and not line.startswith("# ")
        and not line.lower().startswith(_VERDICT_FIELDS)
    ]
    return kept[:MAX_SUMMARY_LINES]


def _entries(section: _Section) -> tuple[list[str], list[list[str]]]:
    """A failing-tests section split into its intro and one entry per test."""
    intro: list[str] = []
    entries: list[list[str]] = []
    for line in section.lines:
        if line.startswith("- "):
            entries.append([line])
        elif entries and line.startswith(" "):
            entries[-1].append(line)
        elif not entries and line.strip():
            intro.append(line)
    return intro, entries


def _failing_tests(section: _Section, room: int) -> list[str]:
    intro, entries = _entries(section)
    out = [section.heading, *intro]
    shown = 0
    for entry in entries[:MAX_FEEDBACK_TESTS]:
        if len(out) + len(entry) + 1 > room:
            break
        out += entry
        shown += 1
    if shown < len(entries):
        out.append(f"({len(entries) - shown} more failing test(s) listed in the full report)")
    return out


def _log_tail(section: _Section, room: int) -> list[str]:
    body = [line for line in section.lines if line.strip() and not line.startswith("```")]
    if room < 2 or not body:
        return []
    tail = body[-(room - 1) :]
    return [section.heading, *tail]


def _fit(lines: list[str]) -> str:
    lines = [line[:MAX_LINE_CHARS] for line in lines[:MAX_FEEDBACK_LINES]]
    text = "\n".join(lines).strip("\n") + "\n"
    if len(text) > MAX_FEEDBACK_CHARS:
        text = text[: MAX_FEEDBACK_CHARS - 2].rsplit("\n", 1)[0] + "\n"
    return text


def rollback_feedback(*, stage: str, reason: str, report_path: str, report: str | None) -> str:
    """The development agent's feedback after ``stage``'s gate failed on ``report``.

    ``report_path`` is the report's path relative to the worktree; ``report`` its text
    (None when it is missing). Pure; never raises; capped (see the module docstring).
    """
    lines = [f"{stage} failed: {reason}"]
    if report is None:
        lines.append(f"The report {report_path} is missing from the worktree.")
        return _fit(lines)
    lines += [f"Full report: {report_path} (in your worktree).", ""]
    opening, sections = _sections(report)
    lines += _summary(opening)
    budget = MAX_FEEDBACK_LINES - 1
    logs = [section for section in sections if section.is_log]
    for section in sections:
        if section.is_log:
            continue
        room = budget - len(lines) - (LOG_RESERVE_LINES if logs else 0)
        if room < 3:
            break
        lines.append("")
        if section.is_failing_tests:
            lines += _failing_tests(section, room - 1)
        else:
            body = [line for line in section.lines if line.strip()]
            lines += [section.heading, *body[: min(MAX_SECTION_LINES, room - 2)]]
    for section in logs[-1:]:
        lines.append("")
        lines += _log_tail(section, budget - len(lines))
    return _fit(lines)


def post_deploy_feedback(report: str) -> str:
    """The development agent's feedback after an unhealthy deploy was rolled back."""
    lines = [
        "deploy failed: the post-deploy health check found the service unhealthy; "
        "the deploy was rolled back.",
        "The monitor's report (also in the task's events, `orch task show`):",
        "",
        *report.splitlines()[: MAX_FEEDBACK_LINES - 4],
    ]
    return _fit(lines)
