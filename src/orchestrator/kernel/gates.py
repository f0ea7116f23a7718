"""Quality gates: pure functions from a snapshot of a stage's facts to a verdict.

The engine collects a :class:`StageFacts` (artifact texts read from
``docs/work-items/<WORK-ITEM>/`` in the worktree, the paths the stage's job changed,
whether the branch is merged) and runs the stage's gates from ``QG_CHECKS``. A gate
never raises and never reads the disk: it returns a :class:`Verdict`.

Artifact contract, by stage:

=============== =====================================================================
analysis        ``01-brd.md`` (the business requirements), not empty
architecture    at least one ``06-adr/*.md`` (an architecture decision record)
development     commits on the task branch that change code outside ``docs/work-items``
testing         ``13-test-report.md`` with ``result:``, ``status:`` and ``exit_code:``
                agreeing on PASS (``check_tests_passed``)
deploy-staging  ``14-staging-report.md`` with ``result: PASS`` or ``result: SKIPPED``
deploy          ``15-deploy-report.md`` with ``result: PASS`` (the branch merges cleanly);
                the merge and deploy are then side effects of ``deploy -> done``
=============== =====================================================================
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ARTIFACT_ROOT",
    "COSTLY_FACTS",
    "DEPLOY_REPORT_FILE",
    "GATES",
    "HUMAN_GATE_ARTIFACTS",
    "QG_CHECKS",
    "STAGE_REPORT_FILES",
    "STAGING_REPORT_FILE",
    "TEST_REPORT_FILE",
    "Gate",
    "Outcome",
    "StageFacts",
    "TestsVerdict",
    "Verdict",
    "_parse_tests_verdict",
    "artifact_dir",
    "check_adr_present",
    "check_brd_present",
    "check_code_committed",
    "check_deploy_ready",
    "check_merged",
    "check_staging_passed",
    "check_tests_passed",
    "facts_needed",
    "run_gates",
]

ARTIFACT_ROOT: Final = "docs/work-items"
BRD_FILE: Final = "01-brd.md"
ADR_DIR: Final = "06-adr/"
TEST_REPORT_FILE: Final = "13-test-report.md"
STAGING_REPORT_FILE: Final = "14-staging-report.md"
DEPLOY_REPORT_FILE: Final = "15-deploy-report.md"
# What a person reads at each human gate before approving or rejecting it.
HUMAN_GATE_ARTIFACTS: Final[Mapping[str, str]] = {"brd-approval": BRD_FILE}
# The report each stage that can roll back writes: development's feedback quotes it.
STAGE_REPORT_FILES: Final[Mapping[str, str]] = {
    "testing": TEST_REPORT_FILE,
    "deploy-staging": STAGING_REPORT_FILE,
    "deploy": DEPLOY_REPORT_FILE,
}
# A BRD shorter than this is a placeholder, not requirements.
MIN_BRD_CHARS: Final = 40


def artifact_dir(work_item: str) -> str:
    """Where a work item's documents live, relative to the worktree."""
    return f"{ARTIFACT_ROOT}/{work_item}"


class Outcome(enum.StrEnum):
    """What a gate (or a set of gates) says about a stage."""

    PASS = "pass"
    FAIL = "fail"
    DEFER = "defer"  # cannot decide now (a tool error); ask again later


@dataclass(frozen=True)
class Verdict:
    """A gate's decision, with the reason a human reads."""

    outcome: Outcome
    reason: str
    gate: str = ""

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASS


@dataclass(frozen=True)
class StageFacts:
    """Everything a gate may look at, collected by the engine before asking."""

    work_item: str
    stage: str
    # Path relative to docs/work-items/<WORK-ITEM>/ -> file text.
    artifacts: Mapping[str, str] = field(default_factory=dict)
    # Paths (relative to the worktree) changed by commits the stage's job made.
    changed_paths: tuple[str, ...] = ()
    # Whether the task branch's head is reachable from the default branch.
    merged: bool = False


Gate = Callable[[StageFacts], Verdict]


def _pass(gate: str, reason: str) -> Verdict:
    return Verdict(Outcome.PASS, reason, gate)


def _fail(gate: str, reason: str) -> Verdict:
    return Verdict(Outcome.FAIL, reason, gate)


def check_brd_present(facts: StageFacts) -> Verdict:
    """Analysis wrote the business requirements document."""
    text = facts.artifacts.get(BRD_FILE)
    if text is None:
        return _fail("brd_present", f"{BRD_FILE} is missing")
    if len(text.strip()) < MIN_BRD_CHARS:
        return _fail("brd_present", f"{BRD_FILE} is too short to be requirements")
    return _pass("brd_present", f"{BRD_FILE} present")


def check_adr_present(facts: StageFacts) -> Verdict:
    """Architecture wrote at least one decision record."""
    adrs = sorted(
        path
        for path, text in facts.artifacts.items()
        if path.startswith(ADR_DIR) and path.endswith(".md") and text.strip()
    )
    if not adrs:
        return _fail("adr_present", f"no ADR in {ADR_DIR} (expected {ADR_DIR}ADR-001-*.md)")
    return _pass("adr_present", f"{len(adrs)} ADR(s): {', '.join(adrs)}")


def check_code_committed(facts: StageFacts) -> Verdict:
    """Development committed a change outside the work item's documents."""
    code = [p for p in facts.changed_paths if not p.startswith(f"{ARTIFACT_ROOT}/")]
    if not code:
        return _fail("code_committed", "the development job committed no code change")
    shown = ", ".join(code[:5]) + (" …" if len(code) > 5 else "")
    return _pass("code_committed", f"{len(code)} file(s) changed: {shown}")


@dataclass(frozen=True)
class TestsVerdict:
    """The three verdict fields of a test report, as parsed."""

    result: str | None = None
    status: str | None = None
    exit_code: int | None = None
    problems: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return (
            not self.problems
            and self.result == "PASS"
            and self.status == "PASS"
            and self.exit_code == 0
        )


_VERDICT_FIELD = re.compile(
    r"""^[\s>*_`|-]*            # list bullets, quotes, emphasis
        (result|status|exit_code)
        [*_`]*\s*:[\s*_`]*      # the colon, maybe inside emphasis
        (\S*)                   # the value: the next word, whole (PASS_X is not PASS)
    """,
    re.IGNORECASE | re.VERBOSE,
)
_EMPHASIS = "*_`"
_EXIT_CODE = re.compile(r"^[+-]?\d{1,6}$")


def _parse_tests_verdict(text: str) -> TestsVerdict:
    """Parse ``result:``, ``status:`` and ``exit_code:`` from a test report; never raises.

    Each field is read from the first line that starts with it (markdown bullets and
    emphasis allowed). A field given twice with different values is a problem, as is a
    missing field or an exit code that is not an integer: a problem never passes.
    """
    values: dict[str, str] = {}
    problems: list[str] = []
    for line in text.splitlines():
        match = _VERDICT_FIELD.match(line)
        if not match:
            continue
        key, value = match.group(1).lower(), match.group(2).strip(_EMPHASIS)
        if key in values and values[key] != value:
            problems.append(f"'{key}:' is given twice ({values[key]!r} and {value!r})")
            continue
        values.setdefault(key, value)
    for key in ("result", "status", "exit_code"):
        if not values.get(key):
            problems.append(f"'{key}:' is missing")
    exit_code: int | None = None
    raw_exit = values.get("exit_code")
    if raw_exit:
        if _EXIT_CODE.match(raw_exit):
            exit_code = int(raw_exit)
        else:
            problems.append(f"'exit_code:' is not an integer ({raw_exit!r})")
    result = values["result"].upper() if values.get("result") else None
    status = values["status"].upper() if values.get("status") else None
    return TestsVerdict(result, status, exit_code, tuple(problems))


def check_tests_passed(facts: StageFacts) -> Verdict:
    """Testing wrote a report whose three verdict fields agree on PASS."""
    text = facts.artifacts.get(TEST_REPORT_FILE)
    if text is None:
        return _fail("tests_passed", f"{TEST_REPORT_FILE} is missing")
    verdict = _parse_tests_verdict(text)
    if verdict.passed:
        return _pass("tests_passed", f"{TEST_REPORT_FILE}: result PASS, exit_code 0")
    if verdict.problems:
        return _fail("tests_passed", f"{TEST_REPORT_FILE}: " + "; ".join(verdict.problems))
    return _fail(
        "tests_passed",
        f"{TEST_REPORT_FILE}: result {verdict.result}, status {verdict.status}, "
        f"exit_code {verdict.exit_code}",
    )


def _report_result(text: str) -> str | None:
    for line in text.splitlines():
        match = _VERDICT_FIELD.match(line)
        if match and match.group(1).lower() == "result":
            return match.group(2).strip(_EMPHASIS).upper()
    return None


def check_staging_passed(facts: StageFacts) -> Verdict:
    """Staging wrote a report that says PASS (or SKIPPED when nothing is configured)."""
    text = facts.artifacts.get(STAGING_REPORT_FILE)
    if text is None:
        return _fail("staging_passed", f"{STAGING_REPORT_FILE} is missing")
    result = _report_result(text)
    if result in ("PASS", "SKIPPED"):
        return _pass("staging_passed", f"{STAGING_REPORT_FILE}: result {result}")
    return _fail("staging_passed", f"{STAGING_REPORT_FILE}: result {result or 'missing'}")


def check_deploy_ready(facts: StageFacts) -> Verdict:
    """The deploy preflight found the branch mergeable and wrote a passing report."""
    text = facts.artifacts.get(DEPLOY_REPORT_FILE)
    if text is None:
        return _fail("deploy_ready", f"{DEPLOY_REPORT_FILE} is missing")
    result = _report_result(text)
    if result != "PASS":
        return _fail("deploy_ready", f"{DEPLOY_REPORT_FILE}: result {result or 'missing'}")
    return _pass("deploy_ready", "ready to merge and deploy")


def check_merged(facts: StageFacts) -> Verdict:
    """The task branch is merged into the default branch (for custom gate lists)."""
    if not facts.merged:
        return _fail("merged", "the task branch is not merged into the default branch")
    return _pass("merged", "merged into the default branch")


# Gates by name, for repositories that choose their own gates in orch.toml.
GATES: Final[Mapping[str, Gate]] = {
    "brd_present": check_brd_present,
    "adr_present": check_adr_present,
    "code_committed": check_code_committed,
    "tests_passed": check_tests_passed,
    "staging_passed": check_staging_passed,
    "deploy_ready": check_deploy_ready,
    "merged": check_merged,
}

QG_CHECKS: Final[Mapping[str, tuple[Gate, ...]]] = {
    "analysis": (check_brd_present,),
    "architecture": (check_adr_present,),
    "development": (check_code_committed,),
    "testing": (check_tests_passed,),
    "deploy-staging": (check_staging_passed,),
    "deploy": (check_deploy_ready,),
}

# The facts that cost a git process to collect, by the gates that read them: the
# finalizer collects a fact only for a stage one of whose gates needs it. A gate not
# listed here (one a test or a plugin brings) gets them all.
COSTLY_FACTS: Final = frozenset({"changed_paths", "merged"})
_NEEDS: Final[Mapping[Gate, frozenset[str]]] = {
    check_brd_present: frozenset(),
    check_adr_present: frozenset(),
    check_code_committed: frozenset({"changed_paths"}),
    check_tests_passed: frozenset(),
    check_staging_passed: frozenset(),
    check_deploy_ready: frozenset(),
    check_merged: frozenset({"merged"}),
}


def facts_needed(gates: Iterable[Gate]) -> frozenset[str]:
    """Which of :data:`COSTLY_FACTS` ``gates`` read."""
    needed: frozenset[str] = frozenset()
    for gate in gates:
        needed |= _NEEDS.get(gate, COSTLY_FACTS)
    return needed


def run_gates(gates: Iterable[Gate], facts: StageFacts) -> Verdict:
    """Run gates in order; the first that does not pass decides. No gates: pass."""
    reasons: list[str] = []
    for gate in gates:
        verdict = gate(facts)
        if not verdict.passed:
            return verdict
        reasons.append(verdict.reason)
    return Verdict(Outcome.PASS, "; ".join(reasons) or "no gates configured", "all")
